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
* Mixed dtypes are promoted as diffusers' formulas promote them (checked against diffusers 0.42 in both
  directions): prev_sample in torch.promote_types(sample, model_output[, cond]) -- an fp16 model output
  with an fp32 sample (autocast) gives fp32, an fp32 output with an fp16 sample also fp32 -- and
  pred_original_sample likewise, except with prediction_type="sample", where diffusers returns the
  model output itself: its dtype. The inputs are cast (exactly) to the promoted dtype and the step
  computes in fp32 as always. The `noise` tensor does not take part in the promotion (diffusers draws
  its noise in the model output's dtype; a noise tensor of any float dtype is used as given).
* Broadcasting: model outputs (and `noise`) broadcast against the sample as in diffusers' formulas: a
  [1, ...] model output for a batch of B, a [B, ...] output for a [1, ...] sample (the result has the
  broadcast shape), singleton spatial dimensions. Learned variance types need exactly 2C channels.
  Per-sample alphas and thresholding act on the broadcast batch. Two differences from diffusers:
  pred_original_sample has the broadcast shape also for prediction_type="sample" (diffusers: the model
  output's shape), and thresholding with prediction_type="sample" and a model output broadcast along
  non-batch dimensions is refused (diffusers takes that quantile over the un-broadcast model output).
* Autograd, on every backend, w.r.t. sample, model_output (and cond: d/duncond = 1 - w, d/dcond = w),
  the noise tensor and tensor alphas; the learned variance channels get theirs through std, clipping
  passes gradients as torch.clamp does (bounds included). The backward is its own custom op
  (genfast::diffusion_step_backward): one elementwise kernel on every backend that regenerates the
  stream noise from (seed, offset) -- seed/offset tensors are copied at forward time -- instead of
  saving it. Dynamic thresholding and gradients w.r.t. alpha tensors are not elementwise: those calls
  compute their gradients by a vjp through the reference formula in fp32 (fp64 for fp64 data).
  Once-differentiable: a second derivative raises. Eager calls that need no gradient (grad mode off, or
  no input requiring grad) skip the dispatcher; the others run the custom op.
* torch.func: grad/vjp work (through an autograd.Function with the same forward and backward), and
  vmap works on every backend: the vmapped dimension is folded into the batch, or, with noise from the
  stream (every slice draws the same noise, as a loop over slices would) or vmapped seed/offset
  tensors, the op runs once per slice.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch

from genfast import _ext
from genfast.ops import _checks
from genfast.ops._dispatch import COMPILED, Kernel, custom_op, eager_ok, pick_backend_cached
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

    def checked(self, op: str = "diffusion_step") -> "StepArgs":
        """The op's own checks (torch.ops.genfast.diffusion_step is callable directly, by torch.compile or
        by another library): every tensor has the shape, dtype and device the kernels assume, and is made
        contiguous, before a pointer crosses. `op` names the op in errors (the backward checks these too)."""
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
        _ext.data_ptr(out), _ext.data_ptr(out_x0), a.sample.data_ptr(), a.model_output.data_ptr(),
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
        prev, x0 = _reference_step(a)
        # prediction_type="sample" without clipping: x0 is the model output itself (or a view of it); an op's
        # output must not alias its input
        if x0 is not None and x0.numel() and x0.untyped_storage().data_ptr() == \
                a.model_output.untyped_storage().data_ptr():
            x0 = x0.clone()
        return prev, x0
    return _compiled_step(a)


def _op_impl(a: StepArgs):
    prev, x0 = _impl(a.checked())
    return prev, (x0 if x0 is not None else a.sample.new_empty((0,)))


def _op_fake(a: StepArgs):
    x0 = torch.empty_like(a.sample) if a.want_x0 else a.sample.new_empty((0,))
    return torch.empty_like(a.sample), x0


# The custom op (used under torch.compile / tracing / torch.ops.genfast / autograd / torch.func; eager
# calls that need no gradient go straight to _impl, skipping the dispatcher's ~10 us: see _call).
diffusion_step_op = custom_op("genfast::diffusion_step", StepArgs, "(Tensor, Tensor)", _op_impl, _op_fake)


# ---------------------------------------------------------------------------------------------
# Autograd. The backward is its own custom op, genfast::diffusion_step_backward: one elementwise
# kernel per call on every backend (kernels/diffusion_backward.cuh has the formulas) that reads the
# sample, the model output(s) and the incoming gradients and writes the gradients of the sample, the
# model output (and cond), and the noise tensor. The noise itself is regenerated from the stream (the
# seed/offset tensors are copied at forward time), never saved; it is read only where the gradient
# needs its values (learned variance types). Dynamic thresholding (its per-sample quantile scale
# depends on every x0 of the sample) and gradients of alpha tensors are not elementwise: for those
# calls the forward op's autograd computes every requested gradient by a vjp through the reference
# formula, in fp32 (fp64 for fp64), with torch.autograd (not inside a custom op, where autograd
# records nothing and torch.func breaks under dispatch modes). Once-differentiable.
# ---------------------------------------------------------------------------------------------
def _guided(a: StepArgs, cdt):
    """(m, v): the guided prediction and the predicted variance (learned types, else None), in cdt."""
    mu = a.model_output.to(cdt)
    C = a.sample.shape[1] if a.sample.dim() > 1 else 0
    w = a.guidance_scale
    if a.learned:
        m, v = mu[:, :C], mu[:, C:]
        if a.cond_output is not None:
            c = a.cond_output.to(cdt)
            m, v = m + w * (c[:, :C] - m), c[:, C:]
        return m, v
    if a.cond_output is not None:
        return mu + w * (a.cond_output.to(cdt) - mu), None
    return mu, None


def _reference_noise(a: StepArgs, cdt) -> torch.Tensor:
    if a.noise_src == SRC_TENSOR:
        return a.noise.to(cdt)
    return reference_normal(a.sample.numel(), a.stream, a.sample.device).view(a.sample.shape).to(cdt)


def _reference_backward_math(a: StepArgs, grad_prev: torch.Tensor, grad_x0: Optional[torch.Tensor]):
    """The analytic backward in plain PyTorch (the formulas of kernels/diffusion_backward.cuh, float64
    capable): (g_x, g_m, g_v, g_z) w.r.t. the sample, the guided prediction, the predicted variance
    (learned types, else None) and the noise (None without noise)."""
    cdt = torch.float64 if a.sample.dtype == torch.float64 else torch.float32
    x = a.sample.to(cdt)
    m, v = _guided(a, cdt)
    a_t = _alpha_ref(a.alpha_t, a.alpha_t_tensor, x.dim(), cdt, x.device)
    a_p = _alpha_ref(a.alpha_prev, a.alpha_prev_tensor, x.dim(), cdt, x.device)
    beta_t = 1 - a_t
    sa, sb, sap = a_t ** 0.5, beta_t ** 0.5, a_p ** 0.5
    pred = a.prediction_type
    x0 = (x - sb * m) / sa if pred == 0 else (m if pred == 1 else sa * x - sb * m)
    gp = grad_prev.to(cdt)
    gx0 = grad_x0.to(cdt) if grad_x0 is not None else 0.0
    g_x = torch.zeros_like(x)
    g_m = torch.zeros_like(x)
    g_v = torch.zeros_like(x) if v is not None else None
    g_z = None
    if a.kind == KIND_DDIM:
        std = a.eta * ((1 - a_p) / beta_t * (1 - a_t / a_p)) ** 0.5
        direction = (1 - a_p - std ** 2) ** 0.5
        if a.use_clipped:  # eps = (x - sa * x0c) / sb
            g_x0c = gp * (sap - direction * sa / sb) + gx0
            g_x = gp * direction / sb
        else:
            g_x0c = gp * sap + gx0
            g_eps = gp * direction
            if pred == 0:
                g_m = g_eps
            elif pred == 1:
                g_x, g_m = g_eps / sb, -g_eps * sa / sb
            else:
                g_x, g_m = g_eps * sb, g_eps * sa
        if a.eta > 0 and a.noise_src != SRC_NONE:  # the reference's rule for DDIM noise
            g_z = gp * std
    else:
        cur_alpha = a_t / a_p
        cur_beta = 1 - cur_alpha
        g_x0c = gp * ((sap * cur_beta) / beta_t) + gx0
        g_x = gp * (cur_alpha ** 0.5 * (1 - a_p) / beta_t)
        if a.noise_mode != NOISE_NEVER and a.noise_src != SRC_NONE:
            mask = (a_p < 1).to(cdt) if a.noise_mode == NOISE_AUTO else torch.ones((), dtype=cdt, device=x.device)
            var = torch.clamp((1 - a_p) / beta_t * cur_beta, min=1e-20)
            vt = a.variance_type
            if vt == 0:
                std = var ** 0.5 * mask
            elif vt == 1:
                std = torch.exp(0.5 * torch.log(var)) * mask
            elif vt in (2, 3):
                std = cur_beta ** 0.5 * mask
            else:
                z = _reference_noise(a, cdt)
                if vt == 4:  # std = sqrt(v) * mask
                    r = v ** 0.5
                    std = r * mask
                    g_v = gp * z * mask * 0.5 / r
                else:  # learned_range: std = exp((frac lb + (1 - frac) lv) / 2) * mask
                    log_var, log_beta = torch.log(var), torch.log(cur_beta)
                    frac = (v + 1) / 2
                    e = torch.exp(0.5 * (frac * log_beta + (1 - frac) * log_var))
                    std = e * mask
                    g_v = gp * z * mask * e * 0.25 * (log_beta - log_var)
            g_z = gp * std
    if a.clip_range is not None:  # torch.clamp's gradient: bounds included, zero outside and for NaN
        r = a.clip_range
        g_x0 = torch.where((x0 >= -r) & (x0 <= r), g_x0c, torch.zeros_like(g_x0c))
    else:
        g_x0 = g_x0c
    if pred == 0:
        g_x, g_m = g_x + g_x0 / sa, g_m - g_x0 * sb / sa
    elif pred == 1:
        g_m = g_m + g_x0
    else:
        g_x, g_m = g_x + g_x0 * sa, g_m - g_x0 * sb
    return g_x, g_m, g_v, g_z


step_backward_kernel = Kernel("diffusion_step_backward")


@step_backward_kernel.reference
def _(a: StepArgs, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise):
    g_x, g_m, g_v, g_z = _reference_backward_math(a, grad_prev, grad_x0)
    w = a.guidance_scale
    guided = a.cond_output is not None
    if g_sample is not None:
        g_sample.copy_(g_x)
    if g_noise is not None:
        g_noise.copy_(g_z if g_z is not None else torch.zeros_like(g_x))
    if g_model is not None:
        pred_part = (1 - w) * g_m if guided else g_m
        if a.learned:
            var_part = torch.zeros_like(g_v) if guided else g_v
            pred_part = torch.cat([pred_part, var_part], dim=1)
        g_model.copy_(pred_part)
        if guided:
            g_cond.copy_(torch.cat([w * g_m, g_v], dim=1) if a.learned else w * g_m)


def _backward_ext_args(a: StepArgs, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise):
    """The compiled backward kernels' flat arguments (csrc/bind_diffusion_backward.cpp)."""
    return (*_ext_args(a, None, None, None, 0.0, False), grad_prev.data_ptr(), _ext.data_ptr(grad_x0),
            _ext.data_ptr(g_sample), _ext.data_ptr(g_model), _ext.data_ptr(g_cond), _ext.data_ptr(g_noise))


@step_backward_kernel.compiled
def _(launch, a: StepArgs, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise):
    launch("diffusion_step_backward", *_backward_ext_args(a, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise))


@step_backward_kernel.triton
def _(a: StepArgs, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise):
    from genfast.triton.diffusion_backward import diffusion_step_backward_triton

    diffusion_step_backward_triton(a, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise)


class StepBackwardArgs(NamedTuple):
    """The incoming gradients, the forward's arguments (StepArgs without want_x0) and what is wanted."""

    grad_prev: torch.Tensor                   # d loss / d prev_sample
    grad_x0: Optional[torch.Tensor]           # d loss / d pred_original_sample (None: not used)
    kind: int
    sample: torch.Tensor
    model_output: torch.Tensor
    cond_output: Optional[torch.Tensor]
    guidance_scale: float
    alpha_t: float
    alpha_prev: float
    alpha_t_tensor: Optional[torch.Tensor]
    alpha_prev_tensor: Optional[torch.Tensor]
    eta: float
    prediction_type: int
    clip_range: Optional[float]
    threshold_ratio: Optional[float]          # must be None: thresholding's backward is the vjp (below)
    threshold_max: float
    use_clipped: bool
    variance_type: int
    noise_mode: int
    noise_src: int
    noise: Optional[torch.Tensor]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    backend: str
    want_sample: bool                         # gradients to compute; the others come back empty
    want_model: bool                          # model_output, and cond_output under guidance
    want_noise: bool                          # the noise tensor (noise_src == SRC_TENSOR)

    def forward_args(self) -> StepArgs:
        return StepArgs(*self[2:25], False, self.backend)


_BACKWARD_OP = "diffusion_step_backward"


def _backward_op_impl(b: StepBackwardArgs):
    """(grad_sample, grad_model_output, grad_cond_output, grad_noise), each empty where not wanted."""
    a = b.forward_args().checked(_BACKWARD_OP)
    if a.threshold_ratio is not None:
        raise ValueError(f"{_BACKWARD_OP}: dynamic thresholding has no elementwise backward; diffusion_step's "
                         f"autograd computes it by a vjp through the reference (threshold_ratio must be None here)")
    sample = a.sample
    grads = []
    for name, g in (("grad_prev", b.grad_prev), ("grad_x0", b.grad_x0)):
        if g is not None:  # incoming gradients may be expanded (stride 0) or of another float dtype
            _checks.tensor(g, f"{_BACKWARD_OP}: {name}")
            _checks.like(g, sample, f"{_BACKWARD_OP}: {name}", "sample", dtype=False)
            g = g.to(sample.dtype).contiguous()
        grads.append(g)
    grad_prev, grad_x0 = grads
    guided = a.cond_output is not None
    g_sample = torch.empty_like(sample) if b.want_sample else None
    g_model = torch.empty_like(a.model_output) if b.want_model else None
    g_cond = torch.empty_like(a.cond_output) if b.want_model and guided else None
    # the kernels write the noise's gradient in the sample's dtype
    g_noise = torch.empty_like(sample) if b.want_noise and a.noise_src == SRC_TENSOR else None
    if sample.numel():
        backend = a.backend if sample.dtype in _COMPILED_DTYPES else "reference"
        step_backward_kernel(backend, a, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise)
    if g_noise is not None and g_noise.dtype != a.noise.dtype:
        g_noise = g_noise.to(a.noise.dtype)
    return tuple(g if g is not None else sample.new_empty((0,)) for g in (g_sample, g_model, g_cond, g_noise))


def _backward_op_fake(b: StepBackwardArgs):
    sample = b.sample

    def like(t, wanted):
        if t is None or not wanted:
            return sample.new_empty((0,))
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    return (like(sample, b.want_sample), like(b.model_output, b.want_model), like(b.cond_output, b.want_model),
            like(b.noise, b.want_noise and b.noise_src == SRC_TENSOR))


diffusion_step_backward_op = custom_op("genfast::diffusion_step_backward", StepBackwardArgs,
                                       "(Tensor, Tensor, Tensor, Tensor)", _backward_op_impl, _backward_op_fake)

_ONCE_DIFFERENTIABLE = ("ddim_step/ddpm_step: the step's backward is once-differentiable (like "
                        "torch.autograd.function.once_differentiable); a second derivative through genfast's fused "
                        "diffusion step is not supported, so it raises instead of silently dropping terms")


def _no_double_backward(ctx, *grads):
    raise RuntimeError(_ONCE_DIFFERENTIABLE)


diffusion_step_backward_op.register_autograd(_no_double_backward)


def _vjp_backward(a: StepArgs, grad_prev, grad_x0, want_sample, want_model, want_noise, want_alphas):
    """Every requested gradient by a vjp through the reference formula, in fp32 (fp64 for fp64 data): the
    backward of dynamic thresholding (its per-sample quantile scale depends on every x0 of the sample) and
    of alpha tensors, which are not elementwise. Returns (sample, model, cond, noise, alpha_t, alpha_prev)
    gradients, None where not wanted."""
    cdt = torch.float64 if a.sample.dtype == torch.float64 else torch.float32
    candidates = (("sample", a.sample, want_sample, cdt), ("model_output", a.model_output, want_model, cdt),
                  ("cond_output", a.cond_output, want_model, cdt),
                  ("noise", a.noise, want_noise and a.noise_src == SRC_TENSOR, None),
                  ("alpha_t_tensor", a.alpha_t_tensor, want_alphas, torch.float32),
                  ("alpha_prev_tensor", a.alpha_prev_tensor, want_alphas, torch.float32))
    primals = {name: t.detach().to(dtype or t.dtype) for name, t, want, dtype in candidates if t is not None and want}
    names = list(primals)

    cotangents = [grad_prev] + ([grad_x0] if grad_x0 is not None else [])

    def outputs(*tensors):  # prev (and x0) as a function of the wanted inputs
        prev, x0 = _reference_step(a._replace(want_x0=grad_x0 is not None, **dict(zip(names, tensors))))
        return (prev, x0) if grad_x0 is not None else (prev,)

    found = {}
    if names and _functorch_active():  # inside torch.func transforms: their vjp (requires_grad_ is refused)
        outs, vjp_fn = torch.func.vjp(outputs, *primals.values())
        found = dict(zip(names, vjp_fn(tuple(g.to(o.dtype) for o, g in zip(outs, cotangents)))))
    elif names:
        leaves = [t.requires_grad_() for t in primals.values()]
        with torch.enable_grad():
            pairs = [(o, g.to(o.dtype)) for o, g in zip(outputs(*leaves), cotangents)
                     if o.requires_grad]  # (x0 = m depends on no alpha)
            if pairs:
                found = dict(zip(names, torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                                                            allow_unused=True)))
    results = []
    for name, t, _, _ in candidates:
        if name not in primals:
            results.append(None)
            continue
        g = found.get(name)
        g = torch.zeros_like(primals[name]) if g is None else g
        results.append(g.to(t.dtype).contiguous())
    return tuple(results)


# positions of the differentiable inputs among StepArgs' fields
_I_SAMPLE, _I_MODEL, _I_COND = StepArgs._fields.index("sample"), StepArgs._fields.index("model_output"), \
    StepArgs._fields.index("cond_output")
_I_ALPHA_T, _I_ALPHA_PREV = StepArgs._fields.index("alpha_t_tensor"), StepArgs._fields.index("alpha_prev_tensor")
_I_NOISE = StepArgs._fields.index("noise")


def _setup_context(ctx, inputs, output):
    a = StepArgs(*inputs)
    # A seed/offset tensor may be rewritten before the backward (graph replay): keep the forward's value.
    seed_tensor = a.seed_tensor.clone() if a.seed_tensor is not None else None
    offset_tensor = a.offset_tensor.clone() if a.offset_tensor is not None else None
    ctx.save_for_backward(a.sample, a.model_output, a.cond_output, a.alpha_t_tensor, a.alpha_prev_tensor, a.noise,
                          seed_tensor, offset_tensor)
    ctx.step = a._replace(sample=None, model_output=None, cond_output=None, alpha_t_tensor=None,
                          alpha_prev_tensor=None, noise=None, seed_tensor=None, offset_tensor=None)


def _backward(ctx, grad_prev, grad_x0):
    need = ctx.needs_input_grad
    grads = [None] * len(StepArgs._fields)
    want_sample, want_model = need[_I_SAMPLE], need[_I_MODEL] or need[_I_COND]
    want_noise, want_alphas = need[_I_NOISE], need[_I_ALPHA_T] or need[_I_ALPHA_PREV]
    if not (want_sample or want_model or want_noise or want_alphas):
        return tuple(grads)
    sample, model, cond, alpha_t, alpha_prev, noise, seed_tensor, offset_tensor = ctx.saved_tensors
    a = ctx.step._replace(sample=sample, model_output=model, cond_output=cond, alpha_t_tensor=alpha_t,
                          alpha_prev_tensor=alpha_prev, noise=noise, seed_tensor=seed_tensor,
                          offset_tensor=offset_tensor)
    if grad_prev is None:
        grad_prev = torch.zeros_like(sample)
    if not a.want_x0 or grad_x0 is None or grad_x0.numel() != sample.numel():
        grad_x0 = None
    if a.threshold_ratio is not None or want_alphas:
        # not elementwise: a vjp through the reference formula (see _vjp_backward)
        out = _vjp_backward(a, grad_prev, grad_x0, want_sample, want_model, want_noise, want_alphas)
    else:
        args = StepBackwardArgs(grad_prev, grad_x0, *a[:23], a.backend, want_sample, want_model, want_noise)
        if _functorch_active():  # torch.func needs an autograd.Function with setup_context
            out = _StepBackwardFunction.apply(*args) + (None, None)
        else:
            out = diffusion_step_backward_op(*args) + (None, None)
    for i, g in zip((_I_SAMPLE, _I_MODEL, _I_COND, _I_NOISE, _I_ALPHA_T, _I_ALPHA_PREV), out):
        if need[i]:
            grads[i] = g
    return tuple(grads)


diffusion_step_op.register_autograd(_backward, setup_context=_setup_context)


def _functorch_active() -> bool:
    return torch._C._are_functorch_transforms_active()


class _StepFunction(torch.autograd.Function):
    """The step under torch.func transforms (grad, vjp, vmap of them): the custom op's own autograd
    registration is not functorch-compatible, this Function is (setup_context; vmap through the ops'
    registered batching rules). Same forward, same backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*flat):
        return diffusion_step_op(*flat)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_prev, grad_x0):
        return _backward(ctx, grad_prev, grad_x0)


class _StepBackwardFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(*flat):
        return diffusion_step_backward_op(*flat)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_ONCE_DIFFERENTIABLE)


# ---------------------------------------------------------------------------------------------
# torch.func.vmap: the vmapped dimension is folded into the batch (one call on [V * B, ...]: per-sample
# alphas and thresholding stay per slice). Noise from the stream is drawn per call from the shape of
# one slice, so every slice sees the same noise; with stream noise, or vmapped seed/offset tensors, the
# rule runs the op once per slice instead (exactly the per-slice semantics), as it does for the backward.
# ---------------------------------------------------------------------------------------------
def _vmap_by_loop(op, batch_size: int, in_dims, flat):
    if batch_size == 0:
        raise ValueError(f"{op}: vmap over a dimension of size 0 is not supported")
    results = []
    for i in range(batch_size):
        results.append(op(*[x.select(d, i) if d is not None else x for x, d in zip(flat, in_dims)]))
    outs = tuple(torch.stack([r[k] for r in results]) for k in range(len(results[0])))
    return outs, (0,) * len(outs)


def _step_vmap(info, in_dims, *flat):
    a, dims = StepArgs(*flat), StepArgs(*in_dims)
    V = info.batch_size
    if (a.noise_src == SRC_STREAM and a.noise_mode != NOISE_NEVER) or dims.seed_tensor is not None or \
            dims.offset_tensor is not None or V == 0:
        return _vmap_by_loop(diffusion_step_op, V, in_dims, flat)
    sample = a.sample.movedim(dims.sample, 0) if dims.sample is not None else a.sample.unsqueeze(0).expand(V, *a.sample.shape)
    B = sample.shape[1]

    def fold(t, d):  # [V, B, ...] -> [V * B, ...]
        if t is None:
            return None
        t = t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(V, *t.shape)
        return t.reshape((V * t.shape[1],) + tuple(t.shape[2:]))

    def fold_alpha(t, d):  # 0-dim stays 0-dim if not vmapped; [B] / [V] / [V, B] -> [V * B]
        if t is None:
            return None
        if d is None:
            return t if t.dim() == 0 else t.repeat(V)
        t = t.movedim(d, 0)
        return t.repeat_interleave(B) if t.dim() == 1 else t.reshape(-1)

    folded = a._replace(sample=fold(a.sample, dims.sample), model_output=fold(a.model_output, dims.model_output),
                        cond_output=fold(a.cond_output, dims.cond_output), noise=fold(a.noise, dims.noise),
                        alpha_t_tensor=fold_alpha(a.alpha_t_tensor, dims.alpha_t_tensor),
                        alpha_prev_tensor=fold_alpha(a.alpha_prev_tensor, dims.alpha_prev_tensor))
    prev, x0 = diffusion_step_op(*folded)
    prev = prev.reshape((V,) + tuple(sample.shape[1:]))
    if not a.want_x0:
        return (prev, x0), (0, None)
    return (prev, x0.reshape(prev.shape)), (0, 0)


def _step_backward_vmap(info, in_dims, *flat):
    return _vmap_by_loop(diffusion_step_backward_op, info.batch_size, in_dims, flat)


diffusion_step_op.register_vmap(_step_vmap)
diffusion_step_backward_op.register_vmap(_step_backward_vmap)


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
            if not (value.requires_grad and torch.is_grad_enabled()):
                return _check_alpha(float(value), name, sample)  # a host read, no device sync
            value = value.to(sample.device)  # differentiable: the copy keeps the graph
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
        if cond.device != model.device:
            raise ValueError(f"model_output: uncond is on {model.device} but cond is on {cond.device}")
        gscale = _check_float(guidance_scale, "guidance_scale")
    else:
        model = _check_tensor(model_output, "model_output")
        if guidance_scale is not None:
            raise ValueError("guidance_scale: classifier-free guidance needs model_output=(uncond, cond), "
                             "got a single tensor")
        gscale = 1.0
    if model.device != sample.device:
        raise ValueError(f"model_output: on {model.device} but sample is on {sample.device}")
    if learned and sample.dim() < 2:
        raise ValueError(f"sample: variance_type={variance_type!r} needs a channel dimension")

    # dtypes as diffusers' formulas promote them: prev_sample in promote(sample, model_output), and so is
    # pred_original_sample except with prediction_type="sample", where it is the model output's dtype.
    model_dtype = model.dtype if cond is None else torch.promote_types(model.dtype, cond.dtype)
    out_dtype = sample.dtype if model_dtype == sample.dtype else torch.promote_types(sample.dtype, model_dtype)
    x0_dtype = model_dtype if ptype == PREDICTION_TYPES["sample"] else out_dtype
    # shapes: model outputs broadcast against the sample as in diffusers' formulas (a [1, ...] output for
    # a batch of B, ...); the step runs on the broadcast shape, the inputs expanded to it.
    shape = tuple(sample.shape)
    expected = (shape[0], 2 * shape[1]) + shape[2:] if learned else shape
    given_shape = None  # the model output's shape where it is broadcast
    if model.shape != expected or (cond is not None and cond.shape != expected):
        outputs = [("model_output", model)] if cond is None else [("model_output[0] (uncond)", model),
                                                                 ("model_output[1] (cond)", cond)]
        given_shape = tuple(model.shape) if model.shape != expected else tuple(cond.shape)
        shape = _broadcast_step_shape(sample, outputs, learned, variance_type)
        expected = (shape[0], 2 * shape[1]) + shape[2:] if learned else shape
    if out_dtype != sample.dtype:
        sample = sample.to(out_dtype)
    if model.dtype != out_dtype:
        model = model.to(out_dtype)
    if cond is not None and cond.dtype != out_dtype:
        cond = cond.to(out_dtype)
    if given_shape is not None:
        if sample.shape != shape:
            sample = sample.expand(shape)
        if model.shape != expected:
            model = model.expand(expected)
        if cond is not None and cond.shape != expected:
            cond = cond.expand(expected)

    a_t, a_t_tensor = _check_alpha(alpha_prod_t, "alpha_prod_t", sample)
    a_p, a_p_tensor = _check_alpha(alpha_prod_t_prev, "alpha_prod_t_prev", sample)
    eta = _check_float(eta, "eta")
    clip = _check_float(clip_sample_range, "clip_sample_range", allow_none=True)
    t_ratio, t_max = None, 1.0
    if thresholding is not None:
        if not isinstance(thresholding, (tuple, list)) or len(thresholding) != 2:
            raise TypeError(f"thresholding: expected (ratio, max_value), got {thresholding!r}")
        t_ratio = _check_float(thresholding[0], "thresholding ratio")
        t_max = _check_float(thresholding[1], "thresholding max_value")
        if not 0.0 <= t_ratio <= 1.0:
            raise ValueError(f"thresholding: ratio must lie in [0, 1], got {t_ratio}")
        if ptype == PREDICTION_TYPES["sample"] and given_shape is not None and given_shape[1:] != expected[1:]:
            # diffusers takes the quantile over x0 = model_output un-broadcast; over the broadcast x0 the
            # repeated elements would move the quantile: refuse rather than differ silently
            raise ValueError(f"thresholding: with prediction_type='sample' the per-sample quantile is taken over "
                             f"model_output itself, which is broadcast along non-batch dimensions here "
                             f"({given_shape} against {expected}); expand model_output to {expected} first")
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
            if tuple(noise.shape) != shape:
                try:
                    fits = tuple(torch.broadcast_shapes(noise.shape, shape)) == shape
                except RuntimeError:
                    fits = False
                if not fits:
                    raise ValueError(f"noise: shape {tuple(noise.shape)} does not broadcast to the step's shape {shape}")
                noise = noise.expand(shape)
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
    backend = pick_backend_cached("diffusion_step", sample, "sample")
    if not sample.is_contiguous():
        sample = sample.contiguous()
    if not model.is_contiguous():
        model = model.contiguous()
    if cond is not None and not cond.is_contiguous():
        cond = cond.contiguous()
    return StepArgs(kind, sample, model, cond, gscale, a_t, a_p, a_t_tensor, a_p_tensor, eta, ptype, clip, t_ratio,
                    t_max, use_clipped_model_output, vtype, mode, src, noise, seed_i, offset_i, seed_t, offset_t,
                    return_pred_original, backend), x0_dtype


def _broadcast_step_shape(sample: torch.Tensor, outputs, learned: bool, variance_type: str) -> tuple:
    """The shape of the step: sample's and the model outputs' (their prediction half, for learned variance
    types) broadcast together, as diffusers' formulas do."""
    shapes = [tuple(sample.shape)]
    C = sample.shape[1] if sample.dim() > 1 else None
    for name, t in outputs:
        s = tuple(t.shape)
        if learned:
            if t.dim() != sample.dim() or s[1] != 2 * C:
                raise ValueError(f"{name}: shape {s} does not fit sample's {tuple(sample.shape)}: "
                                 f"variance_type={variance_type!r} needs 2C = {2 * C} channels (prediction, then "
                                 f"variance)")
            s = (s[0], C) + s[2:]
        shapes.append(s)
    try:
        shape = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise ValueError(f"model_output: shape {tuple(outputs[0][1].shape)} does not broadcast with sample's "
                         f"{tuple(sample.shape)}" + ("" if len(outputs) == 1 else
                                                     f" (cond: {tuple(outputs[1][1].shape)})")) from None
    return shape


def _call(a: StepArgs, x0_dtype: torch.dtype):
    # The wrapper has checked and made contiguous everything the op's own checks look at. Eager calls that
    # need no gradient (grad mode off, or no input requiring grad) and no torch.func transform skip the
    # dispatcher; eager calls that need one and torch.func transforms use _StepFunction; the others go
    # through the custom op, whose autograd and vmap rules are registered.
    tensors = (a.sample, a.model_output, a.cond_output, a.alpha_t_tensor, a.alpha_prev_tensor, a.noise,
               a.seed_tensor, a.offset_tensor)
    if _functorch_active():
        prev, x0 = _StepFunction.apply(*a)
    elif eager_ok(*tensors):
        if not (torch.is_grad_enabled() and torch._C._any_requires_grad(*tensors)):
            prev, x0 = _impl(a)
        else:  # eager autograd: the same forward and backward without torch's custom-op autograd wrapper,
            # whose per-call re-read of this 28-argument schema (fill_defaults) cost ~180 us per step
            prev, x0 = _StepFunction.apply(*a)
    else:  # tracing, compiling, subclasses, modes: the registered op and its autograd
        prev, x0 = diffusion_step_op(*a)
    if not a.want_x0:
        return prev
    return prev, (x0 if x0.dtype == x0_dtype else x0.to(x0_dtype))


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
    return _call(*_prepare(KIND_DDIM, sample, model_output, alpha_prod_t, alpha_prod_t_prev, eta, prediction_type,
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
    return _call(*_prepare(KIND_DDPM, sample, model_output, alpha_prod_t, alpha_prod_t_prev, 0.0, prediction_type,
                          clip_sample_range, thresholding, False, guidance_scale, noise, seed, offset,
                          return_pred_original, variance_type, add_noise))
