"""genfast.ops.ddim_step / ddpm_step: one fused DDIM or DDPM update per call.

API NOTES FOR THE SCHEDULER / SAMPLER CODE (read this block)
-------------------------------------------------------------
* Math = diffusers' DDIMScheduler.step / DDPMScheduler.step (0.42) with the config folded into keywords:
  `clip_sample_range=r` <=> config.clip_sample=True, clip_sample_range=r (None = no clipping);
  `thresholding=(ratio, max_value)` <=> config.thresholding=True, dynamic_thresholding_ratio=ratio,
  sample_max_value=max_value (takes precedence over clipping, as in diffusers).
* alpha_prod_t / alpha_prod_t_prev: Python floats, 0-dim tensors or per-sample [B] tensors on the
  sample's device (a 0-dim CPU tensor is also accepted for CUDA data: it is read on the host, which does
  not sync the GPU). Pass diffusers' `final_alpha_cumprod` (DDIM) or `one` (DDPM) for the last step.
  Tensor alphas are NOT range-checked (that would need a host sync); floats must lie in (0, 1].
* DDPM noise at the last step: diffusers adds noise iff `t > 0`. The op takes `add_noise`:
  True (always), False (never; no noise is drawn), None (default: per sample, noise only where
  alpha_prod_t_prev < 1, i.e. not at diffusers' final "one"). To reproduce diffusers exactly pass
  `add_noise=bool(t > 0)` (with leading spacing + steps_offset the last t is 1, where diffusers
  still adds noise, with variance clamped to 1e-20 for fixed_small, sqrt(beta_t) for fixed_large).
* DDIM adds noise iff eta > 0 (as diffusers); `noise` is ignored when eta == 0.
* Noise: `noise=` a tensor shaped like `sample` (any float dtype, used as given: pass diffusers'
  `variance_noise` or randn_tensor(...) drawn from a torch.Generator for bit-compatibility), else
  genfast's stream: noise element i == genfast.ops.randn(sample.shape, seed=seed, offset=offset)[i]
  (drawn in fp32 and used in fp32, also for fp16/bf16 data). seed None -> drawn from torch's default
  generator; seed/offset may be int64 one-element device tensors (CUDA-graph replay).
* Guidance: `model_output=(uncond, cond)` plus `guidance_scale=w` -> uncond + w * (cond - uncond),
  fused. With learned / learned_range (2C channels) guidance applies to the first C channels and the
  predicted variance is taken from `cond` (as DeepFloyd-IF / GLIDE pipelines do).
* DDPM variance types as diffusers, except `fixed_large_log`: diffusers computes
  sqrt(log(beta_t)) = NaN there (a diffusers bug); genfast uses the intended log-variance log(beta_t),
  i.e. std = sqrt(beta_t) (same as fixed_large). Do not compare that one option against diffusers.
* Returns prev_sample, or (prev_sample, pred_original_sample) with return_pred_original=True
  (pred_original_sample after clipping/thresholding, like diffusers' output).
* dtypes: fp32/fp16/bf16 (fp32 arithmetic inside, output in the input dtype); float64 always runs on
  the reference backend. No host sync anywhere (thresholding included).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch

from genfast import _backend, _ext
from genfast.ops import _checks
from genfast.ops._dispatch import COMPILED, Kernel, custom_op, eager_ok, pick_backend
from genfast.ops._stream import Stream, resolve_stream
from genfast.ops.random import reference_normal

PREDICTION_TYPES = {"epsilon": 0, "sample": 1, "v_prediction": 2}
VARIANCE_TYPES = {"fixed_small": 0, "fixed_small_log": 1, "fixed_large": 2, "fixed_large_log": 3, "learned": 4,
                  "learned_range": 5}
KIND_DDIM, KIND_DDPM = 0, 1
# add_noise modes inside the op: never, always, only where alpha_prod_t_prev < 1
NOISE_NEVER, NOISE_ALWAYS, NOISE_AUTO = 0, 1, 2
# noise sources inside the op
SRC_NONE, SRC_TENSOR, SRC_STREAM = 0, 1, 2

_COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Reference: diffusers' formulas in plain PyTorch (fp32 for fp16/bf16 inputs, fp64 for fp64).
# ---------------------------------------------------------------------------------------------
def _alpha_ref(value: float, tensor: Optional[torch.Tensor], ndim: int, dtype, device) -> torch.Tensor:
    if tensor is None:
        return torch.tensor(value, dtype=dtype, device=device)
    t = tensor.to(device=device, dtype=dtype)
    if t.dim() == 1:
        t = t.reshape((-1,) + (1,) * (ndim - 1))
    return t


def _reference_step(a: "StepArgs"):
    kind, sample, model, cond = a.kind, a.sample, a.model_output, a.cond_output
    guidance_scale, prediction_type, variance_type = a.guidance_scale, a.prediction_type, a.variance_type
    threshold_ratio, threshold_max, clip_range, eta = a.threshold_ratio, a.threshold_max, a.clip_range, a.eta
    noise_mode, noise_src, noise, stream = a.noise_mode, a.noise_src, a.noise, a.stream
    out_dtype = sample.dtype
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32
    device = sample.device
    x = sample.to(cdt)
    m = model.to(cdt)
    C = sample.shape[1] if sample.dim() > 1 else 0
    learned = kind == KIND_DDPM and variance_type in (4, 5)
    pv = None
    if learned:
        m, pv = m[:, :C], m[:, C:]
        if cond is not None:
            c = cond.to(cdt)
            m = m + guidance_scale * (c[:, :C] - m)
            pv = c[:, C:]
    elif cond is not None:
        m = m + guidance_scale * (cond.to(cdt) - m)
    a_t = _alpha_ref(a.alpha_t, a.alpha_t_tensor, x.dim(), cdt, device)
    a_p = _alpha_ref(a.alpha_prev, a.alpha_prev_tensor, x.dim(), cdt, device)
    beta_t = 1 - a_t
    if prediction_type == 0:
        x0 = (x - beta_t ** 0.5 * m) / a_t ** 0.5
        eps = m
    elif prediction_type == 1:
        x0 = m
        eps = (x - a_t ** 0.5 * x0) / beta_t ** 0.5
    else:
        x0 = a_t ** 0.5 * x - beta_t ** 0.5 * m
        eps = a_t ** 0.5 * m + beta_t ** 0.5 * x
    if threshold_ratio is not None and x0.numel() > 0:
        B = x0.shape[0]
        flat = x0.reshape(B, -1)
        s = torch.quantile(flat.abs(), threshold_ratio, dim=1) if flat.shape[1] > 0 else flat.new_ones(B)
        s = torch.clamp(s, min=1, max=threshold_max).unsqueeze(1)
        x0 = (torch.clamp(flat, -s, s) / s).reshape(x0.shape)
    elif clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    if kind == KIND_DDIM:
        variance = (1 - a_p) / beta_t * (1 - a_t / a_p)
        std = eta * variance ** 0.5
        if a.use_clipped:
            eps = (x - a_t ** 0.5 * x0) / beta_t ** 0.5
        prev = a_p ** 0.5 * x0 + (1 - a_p - std ** 2) ** 0.5 * eps
        add = eta > 0
    else:
        cur_alpha = a_t / a_p
        cur_beta = 1 - cur_alpha
        prev = (a_p ** 0.5 * cur_beta) / beta_t * x0 + cur_alpha ** 0.5 * (1 - a_p) / beta_t * x
        var = torch.clamp((1 - a_p) / beta_t * cur_beta, min=1e-20)
        if variance_type == 0:
            std = var ** 0.5
        elif variance_type == 1:
            std = torch.exp(0.5 * torch.log(var))
        elif variance_type in (2, 3):
            std = cur_beta ** 0.5
        elif variance_type == 4:
            std = pv ** 0.5
        else:
            frac = (pv + 1) / 2
            std = torch.exp(0.5 * (frac * torch.log(cur_beta) + (1 - frac) * torch.log(var)))
        if noise_mode == NOISE_AUTO:
            std = std * (a_p < 1).to(cdt)
        add = noise_mode != NOISE_NEVER
    if add and noise_src != SRC_NONE:
        if noise_src == SRC_TENSOR:
            z = noise.to(cdt)
        else:
            z = reference_normal(x.numel(), stream, device).view(x.shape).to(cdt)
        prev = prev + std * z
    prev = prev.to(out_dtype)
    return prev, (x0.to(out_dtype) if a.want_x0 else None)


# ---------------------------------------------------------------------------------------------
# The op's arguments, named once: the wrapper builds them, the custom op takes them flat (schema from
# the annotations), the kernels read them by name.
# ---------------------------------------------------------------------------------------------
class StepArgs(NamedTuple):
    kind: int                                 # KIND_DDIM | KIND_DDPM
    sample: torch.Tensor                      # x_t [B, ...]
    model_output: torch.Tensor                # prediction (uncond with guidance); 2C channels if learned
    cond_output: Optional[torch.Tensor]       # cond prediction with guidance, else None
    guidance_scale: float
    alpha_t: float                            # used when alpha_t_tensor is None
    alpha_prev: float
    alpha_t_tensor: Optional[torch.Tensor]    # fp32, 0-dim or [B], on sample's device
    alpha_prev_tensor: Optional[torch.Tensor]
    eta: float
    prediction_type: int                      # PREDICTION_TYPES
    clip_range: Optional[float]
    threshold_ratio: Optional[float]          # dynamic thresholding when not None
    threshold_max: float
    use_clipped: bool
    variance_type: int                        # VARIANCE_TYPES
    noise_mode: int                           # NOISE_NEVER | NOISE_ALWAYS | NOISE_AUTO
    noise_src: int                            # SRC_NONE | SRC_TENSOR | SRC_STREAM
    noise: Optional[torch.Tensor]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    want_x0: bool
    backend: str

    @property
    def learned(self) -> bool:
        return self.kind == KIND_DDPM and self.variance_type in (4, 5)

    @property
    def stream(self) -> Optional[Stream]:
        if self.noise_src != SRC_STREAM:
            return None
        return Stream(self.seed, self.offset, self.seed_tensor, self.offset_tensor)

    def checked(self) -> "StepArgs":
        """The op's own checks (torch.ops.genfast.diffusion_step is callable directly, by torch.compile or
        by another library): every tensor has the shape, dtype and device the kernels assume, and is made
        contiguous, before a pointer crosses."""
        op = "diffusion_step"
        sample = _checks.tensor(self.sample, f"{op}: sample", min_dim=1)
        if self.kind not in (KIND_DDIM, KIND_DDPM) or self.prediction_type not in (0, 1, 2) or \
                self.variance_type not in range(6) or self.noise_mode not in (0, 1, 2) or self.noise_src not in (0, 1, 2):
            raise ValueError(f"{op}: kind, prediction_type, variance_type, noise_mode or noise_src out of range: "
                             f"{(self.kind, self.prediction_type, self.variance_type, self.noise_mode, self.noise_src)}")
        if self.backend in COMPILED and sample.dtype not in _COMPILED_DTYPES:
            raise TypeError(f"{op}: the {self.backend} backend takes float32, float16 or bfloat16, got {sample.dtype}")
        expected = tuple(sample.shape)
        if self.learned:
            if sample.dim() < 2:
                raise ValueError(f"{op}: a learned variance needs a channel dimension in sample")
            expected = (sample.shape[0], 2 * sample.shape[1]) + tuple(sample.shape[2:])
        model = _checks.tensor(self.model_output, f"{op}: model_output")
        if tuple(model.shape) != expected:
            raise ValueError(f"{op}: model_output has shape {tuple(model.shape)}, expected {expected}")
        _checks.like(model, sample, f"{op}: model_output", "sample", shape=False)
        cond = self.cond_output
        if cond is not None:
            _checks.like(_checks.tensor(cond, f"{op}: cond_output"), model, f"{op}: cond_output", "model_output")
            cond = cond.contiguous()
        batch = sample.shape[0]
        alphas = []
        for name, t in (("alpha_t_tensor", self.alpha_t_tensor), ("alpha_prev_tensor", self.alpha_prev_tensor)):
            if t is not None:
                _checks.tensor(t, f"{op}: {name}", dtypes=(torch.float32,))
                if t.device != sample.device or not (t.dim() == 0 or tuple(t.shape) == (batch,)):
                    raise ValueError(f"{op}: {name} must be a 0-dim or [{batch}] float32 tensor on {sample.device}, "
                                     f"got {tuple(t.shape)} on {t.device}")
                t = t.contiguous()
            alphas.append(t)
        if self.threshold_ratio is not None and not 0.0 <= self.threshold_ratio <= 1.0:
            raise ValueError(f"{op}: threshold_ratio must lie in [0, 1], got {self.threshold_ratio}")
        noise = self.noise
        if self.noise_src == SRC_TENSOR:
            if noise is None:
                raise ValueError(f"{op}: noise_src says a noise tensor but noise is None")
            _checks.tensor(noise, f"{op}: noise")
            _checks.like(noise, sample, f"{op}: noise", "sample", dtype=False)
            noise = noise.contiguous()
        stream = self.stream
        if stream is not None:
            stream = stream.check(sample.device, op)
        return self._replace(sample=sample.contiguous(), model_output=model.contiguous(), cond_output=cond,
                             alpha_t_tensor=alphas[0], alpha_prev_tensor=alphas[1], noise=noise,
                             seed_tensor=stream.seed_tensor if stream else self.seed_tensor,
                             offset_tensor=stream.offset_tensor if stream else self.offset_tensor)


# ---------------------------------------------------------------------------------------------
# The kernel: one launch writes `out` (and `out_x0`) from contiguous inputs; with abs_x0 it writes
# |x0| in fp32 instead (the first pass of dynamic thresholding).
# ---------------------------------------------------------------------------------------------
step_kernel = Kernel("diffusion_step")


def _ext_args(a: StepArgs, out, out_x0, thresh, threshold_weight, abs_x0):
    """The compiled kernels' flat arguments, in the order of csrc/bind_diffusion.cpp::params_from."""
    n = a.sample.numel()
    batch = a.sample.shape[0]
    seed, offset, seed_ptr, offset_ptr = a.stream.ints() if a.stream else (0, 0, 0, 0)
    noise = a.noise if a.noise_src == SRC_TENSOR else None
    return (
        a.kind, int(abs_x0), n, n // batch if batch > 0 else 0,
        out.data_ptr(), _ext.data_ptr(out_x0), a.sample.data_ptr(), a.model_output.data_ptr(),
        _ext.data_ptr(a.cond_output), _ext.data_ptr(noise), _ext.DTYPE_CODES[a.sample.dtype],
        _ext.DTYPE_CODES[noise.dtype] if noise is not None else 0,
        _ext.data_ptr(a.alpha_t_tensor), a.alpha_t_tensor is not None and a.alpha_t_tensor.dim() == 1,
        _ext.data_ptr(a.alpha_prev_tensor), a.alpha_prev_tensor is not None and a.alpha_prev_tensor.dim() == 1,
        a.alpha_t, a.alpha_prev, a.eta, a.prediction_type, a.variance_type,
        a.cond_output is not None, a.guidance_scale,
        a.clip_range is not None, a.clip_range or 0.0,
        thresh[0].data_ptr() if thresh else 0, thresh[1].data_ptr() if thresh else 0,
        threshold_weight, a.threshold_max, a.use_clipped, a.noise_mode, a.noise_src,
        seed, offset, seed_ptr, offset_ptr,
    )


@step_kernel.compiled
def _(launch, a: StepArgs, out, out_x0, thresh, threshold_weight, abs_x0):
    launch("diffusion_step", *_ext_args(a, out, out_x0, thresh, threshold_weight, abs_x0))


@step_kernel.triton
def _(a: StepArgs, out, out_x0, thresh, threshold_weight, abs_x0):
    from genfast.triton.diffusion import diffusion_step_triton

    diffusion_step_triton(a.kind, out, out_x0, a.sample, a.model_output, a.cond_output, a.guidance_scale, a.alpha_t,
                          a.alpha_prev, a.alpha_t_tensor, a.alpha_prev_tensor, a.eta, a.prediction_type, a.clip_range,
                          thresh, threshold_weight, a.threshold_max, a.use_clipped, a.variance_type, a.noise_mode,
                          a.noise_src, a.noise, a.stream, abs_x0)


def _threshold_bounds(a: StepArgs):
    """Per-sample (lower, upper) order statistics of |x0| for torch.quantile's linear interpolation:
    kernel 1 writes |x0| (fp32, [B, N]); two kthvalue selections pick the bracketing values. The
    interpolation and the clamp to [1, max_value] happen inside the step kernel. No host sync."""
    B = a.sample.shape[0]
    N = a.sample.numel() // B
    absx0 = torch.empty((B, N), dtype=torch.float32, device=a.sample.device)
    first = a._replace(eta=0.0, clip_range=None, threshold_ratio=None, use_clipped=False, noise_mode=NOISE_NEVER,
                       noise_src=SRC_NONE, noise=None)
    step_kernel(a.backend, first, absx0, None, None, 0.0, True)
    pos = a.threshold_ratio * (N - 1)
    lo_k = int(math.floor(pos))
    hi_k = min(lo_k + 1, N - 1)
    weight = pos - lo_k
    lo = torch.kthvalue(absx0, lo_k + 1, dim=1).values
    hi = torch.kthvalue(absx0, hi_k + 1, dim=1).values if hi_k != lo_k else lo
    # torch.quantile (the reference, diffusers) gives NaN for a row holding a NaN, so the whole sample turns
    # NaN; kthvalue sorts NaN last and could pick finite values. A sum of |x0| is NaN exactly then.
    has_nan = torch.isnan(absx0.sum(dim=1))
    lo = torch.where(has_nan, torch.full_like(lo, float("nan")), lo)
    return lo.contiguous(), hi.contiguous(), weight


def _compiled_step(a: StepArgs):
    out = torch.empty_like(a.sample)
    out_x0 = torch.empty_like(a.sample) if a.want_x0 else None
    if a.sample.numel() == 0:
        return out, out_x0
    thresh, weight = None, 0.0
    if a.threshold_ratio is not None:
        lo, hi, weight = _threshold_bounds(a)
        thresh = (lo, hi)
    step_kernel(a.backend, a, out, out_x0, thresh, weight, False)
    return out, out_x0


def _impl(a: StepArgs):
    if a.backend == "reference" or a.sample.dtype not in _COMPILED_DTYPES:
        return _reference_step(a)
    return _compiled_step(a)


def _op_impl(a: StepArgs):
    prev, x0 = _impl(a.checked())
    return prev, (x0 if x0 is not None else a.sample.new_empty((0,)))


def _op_fake(a: StepArgs):
    x0 = torch.empty_like(a.sample) if a.want_x0 else a.sample.new_empty((0,))
    return torch.empty_like(a.sample), x0


# The custom op (used under torch.compile / tracing / torch.ops.genfast; eager calls go straight to
# _impl, skipping the dispatcher's ~10 us, since the op has no autograd and no state).
diffusion_step_op = custom_op("genfast::diffusion_step", StepArgs, "(Tensor, Tensor)", _op_impl, _op_fake)


# ---------------------------------------------------------------------------------------------
# Argument checks (errors name the argument) and the public functions.
# ---------------------------------------------------------------------------------------------
def _check_tensor(t, name: str) -> torch.Tensor:
    return _checks.tensor(t, name)


def _check_alpha(value, name: str, sample: torch.Tensor) -> tuple[float, Optional[torch.Tensor]]:
    if type(value) is float and 0.0 < value <= 1.0:  # the common case, checked first (host overhead)
        return value, None
    if type(value) is torch.Tensor and value.dtype == torch.float32 and value.dim() == 0 and \
            value.device == sample.device:
        return 1.0, value
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}")
        if value.dim() == 0 and value.device.type == "cpu" and sample.device.type != "cpu":
            return _check_alpha(float(value), name, sample)  # a host read, no device sync
        if value.dim() > 1 or (value.dim() == 1 and (sample.dim() == 0 or value.shape[0] != sample.shape[0])):
            batch = sample.shape[0] if sample.dim() else None
            raise ValueError(f"{name}: expected a float, a 0-dim tensor or a [B] tensor with B = {batch} "
                             f"(sample's batch), got shape {tuple(value.shape)}")
        if value.device != sample.device:
            raise ValueError(f"{name}: on {value.device} but sample is on {sample.device}")
        if value.dtype != torch.float32:
            value = value.float()
        return 1.0, value.contiguous()
    if not _checks.is_real(value):
        raise TypeError(f"{name}: expected a float or a tensor, got {type(value).__name__}")
    value = float(value)
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise ValueError(f"{name}: must lie in (0, 1], got {value}")
    return value, None


def _check_float(value, name: str, allow_none: bool = False):
    return _checks.real(value, name, allow_none=allow_none)


_DEFAULT_BACKEND: dict[str, str] = {}
_CHECKED: set = set()


def _select_backend(sample: torch.Tensor) -> str:
    # Eager fast path: the default per device type and a forced backend's availability do not change
    # within a process, so they are cached (launch overhead dominates small steps); the checks and
    # errors are pick_backend's own.
    if sample.dtype not in _COMPILED_DTYPES:
        return pick_backend("diffusion_step", sample, "sample")
    forced = _backend.forced_backend()
    key = (forced, sample.device.type)
    if forced is None:
        name = _DEFAULT_BACKEND.get(sample.device.type)
        if name is None:
            name = _DEFAULT_BACKEND[sample.device.type] = pick_backend("diffusion_step", sample, "sample")
        return name
    if key in _CHECKED:
        return forced
    name = pick_backend("diffusion_step", sample, "sample")
    _CHECKED.add(key)
    return name


def _prepare(kind, sample, model_output, alpha_prod_t, alpha_prod_t_prev, eta, prediction_type, clip_sample_range,
             thresholding, use_clipped_model_output, guidance_scale, noise, seed, offset, return_pred_original,
             variance_type, add_noise):
    sample = _check_tensor(sample, "sample")
    if sample.dim() < 1:
        raise ValueError("sample: expected a tensor with a batch dimension, got a 0-dim tensor")
    if isinstance(prediction_type, str) and prediction_type in PREDICTION_TYPES:
        ptype = PREDICTION_TYPES[prediction_type]
    else:
        raise ValueError(f"prediction_type: must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    if isinstance(variance_type, str) and variance_type in VARIANCE_TYPES:
        vtype = VARIANCE_TYPES[variance_type]
    else:
        raise ValueError(f"variance_type: must be one of {', '.join(VARIANCE_TYPES)}, got {variance_type!r}")
    learned = kind == KIND_DDPM and vtype in (4, 5)

    # model output: one tensor, or an (uncond, cond) pair with guidance_scale
    cond = None
    if isinstance(model_output, (tuple, list)):
        if len(model_output) != 2:
            raise ValueError(f"model_output: a guidance pair must be (uncond, cond), got {len(model_output)} tensors")
        if guidance_scale is None:
            raise ValueError("guidance_scale: model_output is an (uncond, cond) pair, so guidance_scale is required")
        model = _check_tensor(model_output[0], "model_output[0] (uncond)")
        cond = _check_tensor(model_output[1], "model_output[1] (cond)")
        if cond.shape != model.shape or cond.dtype != model.dtype or cond.device != model.device:
            raise ValueError(f"model_output: uncond and cond differ: {tuple(model.shape)} {model.dtype} {model.device} "
                             f"vs {tuple(cond.shape)} {cond.dtype} {cond.device}")
        gscale = _check_float(guidance_scale, "guidance_scale")
    else:
        model = _check_tensor(model_output, "model_output")
        if guidance_scale is not None:
            raise ValueError("guidance_scale: classifier-free guidance needs model_output=(uncond, cond), "
                             "got a single tensor")
        gscale = 1.0
    if model.device != sample.device:
        raise ValueError(f"model_output: on {model.device} but sample is on {sample.device}")
    if model.dtype != sample.dtype:
        raise TypeError(f"model_output: dtype {model.dtype} differs from sample's {sample.dtype}")
    expected = tuple(sample.shape)
    if learned:
        if sample.dim() < 2:
            raise ValueError(f"sample: variance_type={variance_type!r} needs a channel dimension")
        expected = (sample.shape[0], 2 * sample.shape[1]) + tuple(sample.shape[2:])
    if tuple(model.shape) != expected:
        extra = f" (variance_type={variance_type!r} needs 2C channels)" if learned else ""
        raise ValueError(f"model_output: shape {tuple(model.shape)} does not match {expected}{extra}")

    a_t, a_t_tensor = _check_alpha(alpha_prod_t, "alpha_prod_t", sample)
    a_p, a_p_tensor = _check_alpha(alpha_prod_t_prev, "alpha_prod_t_prev", sample)
    eta = _check_float(eta, "eta")
    if eta < 0:
        raise ValueError(f"eta: must be >= 0, got {eta}")
    clip = _check_float(clip_sample_range, "clip_sample_range", allow_none=True)
    if clip is not None and clip <= 0:
        raise ValueError(f"clip_sample_range: must be > 0, got {clip}")
    t_ratio, t_max = None, 1.0
    if thresholding is not None:
        if not isinstance(thresholding, (tuple, list)) or len(thresholding) != 2:
            raise TypeError(f"thresholding: expected (ratio, max_value), got {thresholding!r}")
        t_ratio = _check_float(thresholding[0], "thresholding ratio")
        t_max = _check_float(thresholding[1], "thresholding max_value")
        if not 0.0 <= t_ratio <= 1.0:
            raise ValueError(f"thresholding: ratio must lie in [0, 1], got {t_ratio}")
        if t_max < 1.0:
            raise ValueError(f"thresholding: max_value must be >= 1, got {t_max}")
    if not isinstance(use_clipped_model_output, bool):
        raise TypeError("use_clipped_model_output: expected a bool")
    if not isinstance(return_pred_original, bool):
        raise TypeError("return_pred_original: expected a bool")

    # noise
    if kind == KIND_DDIM:
        mode = NOISE_ALWAYS if eta > 0 else NOISE_NEVER
    else:
        if add_noise is None:
            mode = NOISE_AUTO
        elif isinstance(add_noise, bool):
            mode = NOISE_ALWAYS if add_noise else NOISE_NEVER
        else:
            raise TypeError(f"add_noise: expected True, False or None, got {add_noise!r}")
    src, seed_i, offset_i, seed_t, offset_t = SRC_NONE, 0, 0, None, None
    if mode != NOISE_NEVER:
        if noise is not None:
            noise = _check_tensor(noise, "noise")
            if tuple(noise.shape) != tuple(sample.shape):
                raise ValueError(f"noise: shape {tuple(noise.shape)} does not match sample's {tuple(sample.shape)}")
            if noise.device != sample.device:
                raise ValueError(f"noise: on {noise.device} but sample is on {sample.device}")
            if noise.dtype not in _ext.DTYPE_CODES:
                raise TypeError(f"noise: unsupported dtype {noise.dtype}")
            src = SRC_TENSOR
            if not noise.is_contiguous():
                noise = noise.contiguous()
        else:
            st = resolve_stream(seed, offset, sample.device)
            src, seed_i, offset_i, seed_t, offset_t = SRC_STREAM, st.seed, st.offset, st.seed_tensor, st.offset_tensor
    else:
        noise = None

    if sample.dtype not in _ext.DTYPE_CODES:
        raise TypeError(f"sample: unsupported dtype {sample.dtype} (float32, float16, bfloat16, float64)")
    backend = _select_backend(sample)
    if not sample.is_contiguous():
        sample = sample.contiguous()
    if not model.is_contiguous():
        model = model.contiguous()
    if cond is not None and not cond.is_contiguous():
        cond = cond.contiguous()
    return StepArgs(kind, sample, model, cond, gscale, a_t, a_p, a_t_tensor, a_p_tensor, eta, ptype, clip, t_ratio,
                    t_max, use_clipped_model_output, vtype, mode, src, noise, seed_i, offset_i, seed_t, offset_t,
                    return_pred_original, backend)


def _call(a: StepArgs):
    # the wrapper has checked and made contiguous everything the op's own checks look at
    if eager_ok(a.sample, a.model_output, a.cond_output, a.alpha_t_tensor, a.alpha_prev_tensor, a.noise,
                a.seed_tensor, a.offset_tensor):
        prev, x0 = _impl(a)
    else:
        prev, x0 = diffusion_step_op(*a)
    return (prev, x0) if a.want_x0 else prev


def ddim_step(sample: torch.Tensor, model_output, alpha_prod_t, alpha_prod_t_prev, *, eta: float = 0.0,
              prediction_type: str = "epsilon", clip_sample_range: Optional[float] = None,
              thresholding: Optional[Sequence[float]] = None, use_clipped_model_output: bool = False,
              guidance_scale: Optional[float] = None, noise: Optional[torch.Tensor] = None, seed=None, offset=0,
              return_pred_original: bool = False):
    """One DDIM update x_t -> x_{t_prev} (diffusers' DDIMScheduler.step) as one fused kernel.

    sample: x_t [B, ...]; model_output: the model's prediction (shape of sample) or an (uncond, cond)
    pair with guidance_scale. alpha_prod_t / alpha_prod_t_prev: cumulative alphas (float, 0-dim or
    [B] tensor). eta > 0 adds noise std = eta * sigma_t (from `noise` or genfast's stream at
    (seed, offset)). See the module docstring for every option.
    """
    return _call(_prepare(KIND_DDIM, sample, model_output, alpha_prod_t, alpha_prod_t_prev, eta, prediction_type,
                          clip_sample_range, thresholding, use_clipped_model_output, guidance_scale, noise, seed,
                          offset, return_pred_original, "fixed_small", None))


def ddpm_step(sample: torch.Tensor, model_output, alpha_prod_t, alpha_prod_t_prev, *,
              variance_type: str = "fixed_small", prediction_type: str = "epsilon",
              clip_sample_range: Optional[float] = None, thresholding: Optional[Sequence[float]] = None,
              guidance_scale: Optional[float] = None, noise: Optional[torch.Tensor] = None, seed=None, offset=0,
              add_noise: Optional[bool] = None, return_pred_original: bool = False):
    """One DDPM ancestral update (diffusers' DDPMScheduler.step) as one fused kernel.

    variance_type: fixed_small, fixed_small_log, fixed_large, fixed_large_log, learned, learned_range
    (the last two take a model output with 2C channels: prediction, then variance). add_noise: None
    (noise only where alpha_prod_t_prev < 1), True or False; pass bool(t > 0) to match diffusers.
    """
    return _call(_prepare(KIND_DDPM, sample, model_output, alpha_prod_t, alpha_prod_t_prev, 0.0, prediction_type,
                          clip_sample_range, thresholding, False, guidance_scale, noise, seed, offset,
                          return_pred_original, variance_type, add_noise))
