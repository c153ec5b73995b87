"""genfast.ops.euler_step / euler_ancestral_step / dpm_solver_step: the samplers of the score-based view of
diffusion (probability-flow ODE and reverse SDE), one fused kernel per step.

Math = diffusers 0.42's EulerDiscreteScheduler.step, EulerAncestralDiscreteScheduler.step and
DPMSolverMultistepScheduler.step (convert_model_output + the first/second/third-order updates), in
Karras' sigma parameterization (sigma = sqrt((1 - alpha_bar) / alpha_bar); the sample lives at scale
sqrt(sigma^2 + 1) for Euler, and at alpha_t = 1 / sqrt(sigma^2 + 1) times x0 plus sigma_t = sigma * alpha_t
times noise for DPM-Solver).

Every one of these steps is linear in the sample x, the (guided) model output m, the converted outputs
of earlier steps h1, h2 and the noise z once its per-step coefficients are known. The host computes the
coefficients in float64 (`euler_coefficients`, `euler_ancestral_coefficients`, `dpm_solver_coefficients`,
each a `StepCoefficients`); the kernel evaluates

    xs   = x + pre_noise * z                       (Euler's churn)
    conv = conv_x * xs + conv_m * m                (x0 for Euler and DPM-Solver++, epsilon for DPM-Solver)
    conv = threshold(conv)                         (dynamic thresholding in x0 space, optional)
    prev = c_x * xs + c_0 * conv + c_1 * (conv - h1) + c_2 * (h1 - h2) + c_noise * z

and returns prev and conv (the next step's history, or Euler's pred_original_sample). `sampler_step`
runs precomputed coefficients (what the schedulers do: their coefficients are cached per step index).

* Guidance: `model_output=(uncond, cond)` with `guidance_scale=w` -> uncond + w * (cond - uncond), fused.
* A model output with twice the sample's channels (learned variance, DeepFloyd IF) is read in place:
  the first C channels are the prediction (diffusers' DPM-Solver takes `model_output[:, :3]`).
* Noise: `noise=` a tensor shaped like `sample` (any float dtype: pass the draws of a torch.Generator for
  diffusers' exact results), else genfast's stream: z[i] == genfast.ops.randn(sample.shape, seed=seed,
  offset=offset)[i] (fp32). seed None -> drawn from torch's default generator; seed/offset may be int64
  one-element device tensors (CUDA-graph replay). No noise is drawn where its coefficients are 0.
* dtypes: fp32/fp16/bf16 (fp32 arithmetic inside, outputs in the input dtype; the converted output may be
  asked for in float32, as diffusers' Euler returns pred_original_sample); float64 runs on the reference.
  No host sync anywhere. Thresholding takes two launches plus a selection (a per-sample quantile), except
  with sample_max_value <= 1, where the scale is that constant (1: clipping x0 to [-1, 1]): one launch.
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

NOISE_NONE, NOISE_TENSOR, NOISE_STREAM = 0, 1, 2
_COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OP = "sampler_step"


# ---------------------------------------------------------------------------------------------
# Per-step coefficients (host, float64).
# ---------------------------------------------------------------------------------------------
class StepCoefficients(NamedTuple):
    """The kernel's per-step coefficients (see the module docstring); `history` = previous outputs read."""

    c_x: float
    c_0: float
    c_1: float = 0.0
    c_2: float = 0.0
    c_noise: float = 0.0
    pre_noise: float = 0.0
    conv_x: float = 0.0
    conv_m: float = 1.0
    to_x0_x: float = 0.0   # x0 = to_x0_x * xs + to_x0_c * conv (for thresholding)
    to_x0_c: float = 1.0
    from_x0_x: float = 0.0  # conv = from_x0_x * xs + from_x0_c * x0 (after thresholding)
    from_x0_c: float = 1.0
    history: int = 0

    @property
    def noisy(self) -> bool:
        return self.pre_noise != 0.0 or self.c_noise != 0.0


# IEEE-754 arithmetic on Python floats (as torch computes it: a zero sigma gives an infinite log-SNR, an
# overflow gives inf), in plain `math` so torch.compile traces it as constants.
_INF = math.inf


def _div(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or a != a:
            return math.nan
        return math.copysign(_INF, a) * math.copysign(1.0, b)
    return a / b


def _log(v: float) -> float:
    if v != v or v < 0.0:
        return math.nan
    return math.log(v) if v > 0.0 else -_INF


def _exp(v: float) -> float:
    if v != v:
        return v
    return math.exp(v) if v < 709.0 else _INF


def _expm1(v: float) -> float:
    if v != v:
        return v
    return math.expm1(v) if v < 709.0 else _INF


def _sqrt(v: float) -> float:
    return math.sqrt(v) if v >= 0.0 else math.nan


def euler_coefficients(sigma: float, sigma_next: float, prediction_type: str = "epsilon", gamma: float = 0.0,
                       s_noise: float = 1.0) -> StepCoefficients:
    """diffusers' EulerDiscreteScheduler.step: sigma_hat = sigma * (gamma + 1); with gamma > 0 the sample
    first gets noise of std s_noise * sqrt(sigma_hat^2 - sigma^2) ("churn"); then
    prev = xs + (xs - x0) / sigma_hat * (sigma_next - sigma_hat)."""
    sigma, sigma_next, gamma = float(sigma), float(sigma_next), float(gamma)
    sigma_hat = sigma * (gamma + 1.0)
    pre = float(s_noise) * _sqrt(sigma_hat * sigma_hat - sigma * sigma) if gamma > 0 else 0.0
    conv_x, conv_m = _x0_conversion(prediction_type, sigma, sigma_hat)
    k = _div(sigma_next - sigma_hat, sigma_hat)
    return StepCoefficients(c_x=1.0 + k, c_0=-k, pre_noise=pre, conv_x=conv_x, conv_m=conv_m)


def euler_ancestral_coefficients(sigma: float, sigma_next: float,
                                 prediction_type: str = "epsilon") -> StepCoefficients:
    """diffusers' EulerAncestralDiscreteScheduler.step: sigma_up = sqrt(s'^2 (s^2 - s'^2) / s^2),
    sigma_down = sqrt(s'^2 - sigma_up^2), prev = x + (x - x0) / s * (sigma_down - s) + sigma_up * z."""
    s, s_to = float(sigma), float(sigma_next)
    sigma_up = _sqrt(_div(s_to * s_to * (s * s - s_to * s_to), s * s))
    sigma_down = _sqrt(max(s_to * s_to - sigma_up * sigma_up, 0.0)) if sigma_up == sigma_up else math.nan
    conv_x, conv_m = _x0_conversion(prediction_type, s, s)
    k = _div(sigma_down - s, s)
    return StepCoefficients(c_x=1.0 + k, c_0=-k, c_noise=sigma_up, conv_x=conv_x, conv_m=conv_m)


def _x0_conversion(prediction_type: str, sigma: float, sigma_hat: float):
    """x0 = conv_x * x + conv_m * m for Euler's (unscaled) sample at noise level sigma."""
    if prediction_type == "epsilon":
        return 1.0, -sigma_hat
    if prediction_type == "v_prediction":
        return _div(1.0, sigma * sigma + 1.0), _div(-sigma, _sqrt(sigma * sigma + 1.0))
    if prediction_type in ("sample", "original_sample"):
        return 0.0, 1.0
    raise ValueError(f"prediction_type: must be one of epsilon, v_prediction, sample, got {prediction_type!r}")


ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
DPM_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")


def dpm_alpha_sigma(sigma: float, flow: bool = False) -> tuple[float, float]:
    """(alpha_t, sigma_t) of a Karras sigma (or of a flow-matching sigma)."""
    sigma = float(sigma)
    if flow:
        return 1.0 - sigma, sigma
    alpha = _div(1.0, _sqrt(sigma * sigma + 1.0))
    return alpha, sigma * alpha


def dpm_solver_coefficients(sigmas: Sequence[float], algorithm_type: str = "dpmsolver++",
                            solver_type: str = "midpoint", prediction_type: str = "epsilon",
                            flow_sigmas: bool = False) -> StepCoefficients:
    """Coefficients of one DPM-Solver step of order len(sigmas) - 1 (1, 2 or 3): sigmas = (sigma_next,
    sigma_s0, sigma_s1, sigma_s2), the target noise level, then the current and earlier ones."""
    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type: must be one of {', '.join(ALGORITHM_TYPES)}, got {algorithm_type!r}")
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type: must be one of {', '.join(SOLVER_TYPES)}, got {solver_type!r}")
    order = len(sigmas) - 1
    if order not in (1, 2, 3):
        raise ValueError(f"sigmas: expected 2 to 4 noise levels (orders 1 to 3), got {len(sigmas)}")
    data = algorithm_type in ("dpmsolver++", "sde-dpmsolver++")
    if order == 3 and algorithm_type == "sde-dpmsolver":
        raise ValueError("algorithm_type: sde-dpmsolver has no third-order update (use solver_order <= 2)")
    pairs = [dpm_alpha_sigma(s, flow_sigmas) for s in sigmas]
    lambdas = [_log(a) - _log(s) for a, s in pairs]
    alpha_t, sigma_t = pairs[0]
    alpha_s0, sigma_s0 = pairs[1]
    h = lambdas[0] - lambdas[1]
    em1 = _expm1(-h)          # e^{-h} - 1
    ep1 = _expm1(h)           # e^{h} - 1
    em2 = -_expm1(-2.0 * h)   # 1 - e^{-2h}
    c_noise = e1 = e2 = 0.0
    if algorithm_type == "dpmsolver++":
        c_x = _div(sigma_t, sigma_s0)
        e0 = -alpha_t * em1
        if order == 2:
            e1 = -0.5 * alpha_t * em1 if solver_type == "midpoint" else alpha_t * (_div(em1, h) + 1.0)
        elif order == 3:
            e1 = alpha_t * (_div(em1, h) + 1.0)
            e2 = -alpha_t * (_div(em1 + h, h * h) - 0.5)
    elif algorithm_type == "dpmsolver":
        c_x = _div(alpha_t, alpha_s0)
        e0 = -sigma_t * ep1
        if order == 2:
            e1 = -0.5 * sigma_t * ep1 if solver_type == "midpoint" else -sigma_t * (_div(ep1, h) - 1.0)
        elif order == 3:
            e1 = -sigma_t * (_div(ep1, h) - 1.0)
            e2 = -sigma_t * (_div(ep1 - h, h * h) - 0.5)
    elif algorithm_type == "sde-dpmsolver++":
        c_x = _div(sigma_t, sigma_s0) * _exp(-h)
        e0 = alpha_t * em2
        c_noise = sigma_t * _sqrt(em2)
        if order == 2:
            e1 = 0.5 * alpha_t * em2 if solver_type == "midpoint" else alpha_t * (_div(em2, -2.0 * h) + 1.0)
        elif order == 3:
            e1 = alpha_t * (_div(em2, -2.0 * h) + 1.0)
            e2 = alpha_t * (_div(em2 - 2.0 * h, (2.0 * h) * (2.0 * h)) - 0.5)
    else:  # sde-dpmsolver
        c_x = _div(alpha_t, alpha_s0)
        e0 = -2.0 * sigma_t * ep1
        c_noise = sigma_t * _sqrt(_expm1(2.0 * h))
        if order == 2:
            e1 = -sigma_t * ep1 if solver_type == "midpoint" else -2.0 * sigma_t * (_div(ep1, h) - 1.0)
    # D1, D2 in terms of A = m0 - m1 and B = m1 - m2 (the kernel's history differences)
    c_1 = c_2 = 0.0
    if order == 2:
        r0 = _div(lambdas[1] - lambdas[2], h)
        c_1 = _div(e1, r0)
    elif order == 3:
        r0 = _div(lambdas[1] - lambdas[2], h)
        r1 = _div(lambdas[2] - lambdas[3], h)
        c_1 = _div(e1, r0) * (1.0 + _div(r0, r0 + r1)) + _div(e2, r0 * (r0 + r1))
        c_2 = -_div(e1, r1) * _div(r0, r0 + r1) - _div(e2, r1 * (r0 + r1))
    conv = _dpm_conversion(prediction_type, data, alpha_s0, sigma_s0, float(sigmas[1]))
    if data:
        to_x0 = from_x0 = (0.0, 1.0)
    else:  # thresholding of epsilon goes through x0 = (x - sigma eps) / alpha and back
        to_x0 = (_div(1.0, alpha_s0), _div(-sigma_s0, alpha_s0))
        from_x0 = (_div(1.0, sigma_s0), _div(-alpha_s0, sigma_s0))
    return StepCoefficients(c_x=c_x, c_0=e0, c_1=c_1, c_2=c_2, c_noise=c_noise, conv_x=conv[0], conv_m=conv[1],
                            to_x0_x=to_x0[0], to_x0_c=to_x0[1], from_x0_x=from_x0[0], from_x0_c=from_x0[1],
                            history=order - 1)


def _dpm_conversion(prediction_type: str, data: bool, alpha: float, sigma: float, raw_sigma: float):
    """diffusers' convert_model_output as (conv_x, conv_m): x0 (data prediction) or epsilon."""
    if data:
        if prediction_type == "epsilon":
            return _div(1.0, alpha), _div(-sigma, alpha)
        if prediction_type == "sample":
            return 0.0, 1.0
        if prediction_type == "v_prediction":
            return alpha, -sigma
        if prediction_type == "flow_prediction":
            return 1.0, -raw_sigma
    else:
        if prediction_type == "epsilon":
            return 0.0, 1.0
        if prediction_type == "sample":
            return _div(1.0, sigma), _div(-alpha, sigma)
        if prediction_type == "v_prediction":
            return sigma, alpha
    raise ValueError(f"prediction_type: must be one of epsilon, sample, v_prediction"
                     f"{', flow_prediction' if data else ''} for {'dpmsolver++' if data else 'dpmsolver'}, "
                     f"got {prediction_type!r}")


# ---------------------------------------------------------------------------------------------
# The op's arguments, named once.
# ---------------------------------------------------------------------------------------------
class SamplerStepArgs(NamedTuple):
    sample: torch.Tensor
    model_output: torch.Tensor               # prediction (uncond with guidance); 2C channels: first C used
    cond_output: Optional[torch.Tensor]
    guidance_scale: float
    history1: Optional[torch.Tensor]         # converted output of the previous step
    history2: Optional[torch.Tensor]         # ... and of the one before
    c_x: float
    c_0: float
    c_1: float
    c_2: float
    c_noise: float
    pre_noise: float
    conv_x: float
    conv_m: float
    to_x0_x: float
    to_x0_c: float
    from_x0_x: float
    from_x0_c: float
    history: int
    threshold_ratio: Optional[float]
    threshold_max: float
    aux_dtype: torch.dtype                   # dtype of the converted output (sample's or float32)
    want_aux: bool
    noise_src: int                           # NOISE_NONE | NOISE_TENSOR | NOISE_STREAM
    noise: Optional[torch.Tensor]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    backend: str

    @property
    def stream(self) -> Optional[Stream]:
        if self.noise_src != NOISE_STREAM:
            return None
        return Stream(self.seed, self.offset, self.seed_tensor, self.offset_tensor)

    @property
    def model_stride(self) -> int:
        b = self.sample.shape[0]
        return self.model_output.numel() // b if b else 0

    def checked(self) -> "SamplerStepArgs":
        """The op's own checks (torch.ops.genfast.sampler_step is callable directly): shapes, dtypes and
        devices the kernels assume; tensors made contiguous before a pointer crosses."""
        sample = _checks.tensor(self.sample, f"{OP}: sample", min_dim=1)
        if self.backend in COMPILED and sample.dtype not in _COMPILED_DTYPES:
            raise TypeError(f"{OP}: the {self.backend} backend takes float32, float16 or bfloat16, got {sample.dtype}")
        if self.history not in (0, 1, 2) or self.noise_src not in (0, 1, 2):
            raise ValueError(f"{OP}: history or noise_src out of range: {(self.history, self.noise_src)}")
        model = _checks.tensor(self.model_output, f"{OP}: model_output")
        _check_model_shape(model, sample, f"{OP}: model_output")
        _checks.like(model, sample, f"{OP}: model_output", "sample", shape=False)
        cond = self.cond_output
        if cond is not None:
            _checks.like(_checks.tensor(cond, f"{OP}: cond_output"), model, f"{OP}: cond_output", "model_output")
            cond = cond.contiguous()
        hist = []
        for i, h in enumerate((self.history1, self.history2)):
            if i < self.history:
                if h is None:
                    raise ValueError(f"{OP}: history says {self.history} previous outputs but history{i + 1} is None")
                _checks.like(_checks.tensor(h, f"{OP}: history{i + 1}"), sample, f"{OP}: history{i + 1}", "sample")
                h = h.contiguous()
            else:
                h = None
            hist.append(h)
        if self.aux_dtype not in (sample.dtype, torch.float32):
            raise TypeError(f"{OP}: aux_dtype must be sample's dtype or float32, got {self.aux_dtype}")
        if self.threshold_ratio is not None and not 0.0 <= self.threshold_ratio <= 1.0:
            raise ValueError(f"{OP}: threshold_ratio must lie in [0, 1], got {self.threshold_ratio}")
        noise = self.noise
        if self.noise_src == NOISE_TENSOR:
            if noise is None:
                raise ValueError(f"{OP}: noise_src says a noise tensor but noise is None")
            _checks.tensor(noise, f"{OP}: noise")
            _checks.like(noise, sample, f"{OP}: noise", "sample", dtype=False)
            noise = noise.contiguous()
        else:
            noise = None
        stream = self.stream
        if stream is not None:
            stream = stream.check(sample.device, OP)
        return self._replace(sample=sample.contiguous(), model_output=model.contiguous(), cond_output=cond,
                             history1=hist[0], history2=hist[1], noise=noise,
                             seed_tensor=stream.seed_tensor if stream else None,
                             offset_tensor=stream.offset_tensor if stream else None)


def _check_model_shape(model: torch.Tensor, sample: torch.Tensor, name: str) -> None:
    if tuple(model.shape) == tuple(sample.shape):
        return
    learned = (sample.dim() >= 2 and model.dim() == sample.dim() and model.shape[0] == sample.shape[0]
               and model.shape[1] == 2 * sample.shape[1] and model.shape[2:] == sample.shape[2:])
    if not learned:
        raise ValueError(f"{name}: shape {tuple(model.shape)} does not match sample's {tuple(sample.shape)} "
                         f"(or twice its channels, a learned-variance output)")


# ---------------------------------------------------------------------------------------------
# Reference: the same formula in plain PyTorch (fp32 for fp16/bf16 data, fp64 for fp64).
# ---------------------------------------------------------------------------------------------
def _prediction(a: SamplerStepArgs, cdt) -> torch.Tensor:
    m = a.model_output
    C = a.sample.shape[1] if a.sample.dim() > 1 else 0
    learned = tuple(m.shape) != tuple(a.sample.shape)
    m = (m[:, :C] if learned else m).to(cdt)
    if a.cond_output is not None:
        c = a.cond_output[:, :C] if learned else a.cond_output
        m = m + a.guidance_scale * (c.to(cdt) - m)
    return m


def _reference_noise(a: SamplerStepArgs, cdt) -> Optional[torch.Tensor]:
    if a.noise_src == NOISE_TENSOR:
        return a.noise.to(cdt)
    if a.noise_src == NOISE_STREAM:
        return reference_normal(a.sample.numel(), a.stream, a.sample.device).view(a.sample.shape).to(cdt)
    return None


def _reference_step(a: SamplerStepArgs):
    out_dtype = a.sample.dtype
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32
    x = a.sample.to(cdt)
    m = _prediction(a, cdt)
    z = _reference_noise(a, cdt)
    xs = x + a.pre_noise * z if (z is not None and a.pre_noise != 0.0) else x
    conv = a.conv_x * xs + a.conv_m * m
    if a.threshold_ratio is not None and conv.numel() > 0:
        B = conv.shape[0]
        x0 = (a.to_x0_x * xs + a.to_x0_c * conv).reshape(B, -1)
        s = torch.quantile(x0.abs(), a.threshold_ratio, dim=1) if x0.shape[1] > 0 else x0.new_ones(B)
        s = torch.clamp(s, min=1, max=a.threshold_max).unsqueeze(1)
        x0 = (torch.clamp(x0, -s, s) / s).reshape(conv.shape)
        conv = a.from_x0_x * xs + a.from_x0_c * x0
    prev = a.c_x * xs + a.c_0 * conv
    if a.history >= 1:
        prev = prev + a.c_1 * (conv - a.history1.to(cdt))
    if a.history >= 2:
        prev = prev + a.c_2 * (a.history1.to(cdt) - a.history2.to(cdt))
    if z is not None and a.c_noise != 0.0:
        prev = prev + a.c_noise * z
    aux_dtype = torch.float64 if out_dtype == torch.float64 else a.aux_dtype
    return prev.to(out_dtype), (conv.to(aux_dtype) if a.want_aux else None)


# ---------------------------------------------------------------------------------------------
# The kernel: one launch writes `out` and `out_aux`; with abs_x0 it writes |x0| (fp32) into `out`
# instead (the first pass of dynamic thresholding).
# ---------------------------------------------------------------------------------------------
step_kernel = Kernel("sampler_step")


def _ext_args(a: SamplerStepArgs, out, out_aux, thresh, threshold_weight, abs_x0):
    """The compiled kernels' flat arguments, in the order of csrc/bind_sampler_steps.cpp."""
    n = a.sample.numel()
    batch = a.sample.shape[0]
    seed, offset, seed_ptr, offset_ptr = a.stream.ints() if a.stream else (0, 0, 0, 0)
    noise = a.noise if a.noise_src == NOISE_TENSOR else None
    return (
        int(abs_x0), n, n // batch if batch else 0, a.model_stride,
        out.data_ptr(), _ext.data_ptr(out_aux), a.sample.data_ptr(), a.model_output.data_ptr(),
        _ext.data_ptr(a.cond_output), _ext.data_ptr(a.history1), _ext.data_ptr(a.history2), _ext.data_ptr(noise),
        _ext.DTYPE_CODES[a.sample.dtype], _ext.DTYPE_CODES[a.aux_dtype],
        _ext.DTYPE_CODES[noise.dtype] if noise is not None else 0,
        a.history, a.cond_output is not None, a.guidance_scale,
        a.pre_noise, a.conv_x, a.conv_m,
        thresh[0].data_ptr() if thresh else 0, thresh[1].data_ptr() if thresh else 0, threshold_weight,
        a.threshold_max, a.to_x0_x, a.to_x0_c, a.from_x0_x, a.from_x0_c,
        a.c_x, a.c_0, a.c_1, a.c_2, a.c_noise,
        a.noise_src, seed, offset, seed_ptr, offset_ptr,
    )


@step_kernel.compiled
def _(launch, a: SamplerStepArgs, out, out_aux, thresh, threshold_weight, abs_x0):
    launch("sampler_step", *_ext_args(a, out, out_aux, thresh, threshold_weight, abs_x0))


@step_kernel.triton
def _(a: SamplerStepArgs, out, out_aux, thresh, threshold_weight, abs_x0):
    from genfast.triton.sampler_steps import sampler_step_triton

    sampler_step_triton(a, out, out_aux, thresh, threshold_weight, abs_x0)


def _threshold_bounds(a: SamplerStepArgs):
    """Per-sample order statistics of |x0| bracketing torch.quantile's position: kernel 1 writes |x0|
    (fp32 [B, N]), two kthvalue selections pick the bracketing values; the interpolation and the clamp
    happen in the step kernel. No host sync."""
    B = a.sample.shape[0]
    N = a.sample.numel() // B
    absx0 = torch.empty((B, N), dtype=torch.float32, device=a.sample.device)
    step_kernel(a.backend, a, absx0, None, None, 0.0, True)
    pos = a.threshold_ratio * (N - 1)
    lo_k = int(math.floor(pos))
    hi_k = min(lo_k + 1, N - 1)
    lo = torch.kthvalue(absx0, lo_k + 1, dim=1).values
    hi = torch.kthvalue(absx0, hi_k + 1, dim=1).values if hi_k != lo_k else lo
    return (lo.contiguous(), hi.contiguous()), pos - lo_k


_CONSTANT_BOUNDS: dict = {}


def _constant_bounds(a: SamplerStepArgs):
    """sample_max_value <= 1: torch.clamp(q, min=1, max=v) is v whatever the quantile q, so the scale is a
    constant (v = 1: plain clipping of x0 to [-1, 1]) and no quantile pass is needed. Cached per batch."""
    key = (a.sample.shape[0], a.sample.get_device(), a.sample.is_cuda, a.threshold_max)  # no device object per step
    bounds = _CONSTANT_BOUNDS.get(key)
    if bounds is None:
        if a.sample.is_cuda and torch.cuda.is_current_stream_capturing():
            return None  # no allocation outside the graph's pool during capture (the warm-up run fills this)
        if len(_CONSTANT_BOUNDS) > 64:
            _CONSTANT_BOUNDS.clear()
        v = torch.full((a.sample.shape[0],), a.threshold_max, dtype=torch.float32, device=a.sample.device)
        bounds = _CONSTANT_BOUNDS[key] = (v, v)
    return bounds, 0.0


def _compiled_step(a: SamplerStepArgs):
    out = torch.empty_like(a.sample)
    out_aux = torch.empty(a.sample.shape, dtype=a.aux_dtype, device=a.sample.device) if a.want_aux else None
    if a.sample.numel() == 0:
        return out, out_aux
    thresh, weight = None, 0.0
    if a.threshold_ratio is not None:
        constant = _constant_bounds(a) if a.threshold_max <= 1.0 else None
        thresh, weight = constant if constant is not None else _threshold_bounds(a)
    step_kernel(a.backend, a, out, out_aux, thresh, weight, False)
    return out, out_aux


def _impl(a: SamplerStepArgs):
    if a.backend == "reference" or a.sample.dtype not in _COMPILED_DTYPES:
        return _reference_step(a)
    return _compiled_step(a)


def _op_impl(a: SamplerStepArgs):
    prev, aux = _impl(a.checked())
    return prev, (aux if aux is not None else a.sample.new_empty((0,)))


def _op_fake(a: SamplerStepArgs):
    aux = torch.empty(a.sample.shape, dtype=a.aux_dtype, device=a.sample.device) if a.want_aux \
        else a.sample.new_empty((0,))
    return torch.empty_like(a.sample), aux


sampler_step_op = custom_op("genfast::sampler_step", SamplerStepArgs, "(Tensor, Tensor)", _op_impl, _op_fake)


# ---------------------------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------------------------
_VALID_COEFFICIENTS: set = set()  # checked once each (a loop reuses the same few per step index)


def _check_coefficients(coefficients) -> StepCoefficients:
    if not isinstance(coefficients, StepCoefficients):
        raise TypeError(f"coefficients: expected a StepCoefficients, got {type(coefficients).__name__}")
    if coefficients in _VALID_COEFFICIENTS:
        return coefficients
    for name, v in zip(coefficients._fields, coefficients):
        if name == "history":
            if v not in (0, 1, 2):
                raise ValueError(f"coefficients.history: must be 0, 1 or 2, got {v!r}")
        elif not isinstance(v, float):
            raise TypeError(f"coefficients.{name}: expected a float, got {type(v).__name__}")
    if len(_VALID_COEFFICIENTS) > 4096:
        _VALID_COEFFICIENTS.clear()
    _VALID_COEFFICIENTS.add(coefficients)
    return coefficients


def sampler_step(sample: torch.Tensor, model_output, coefficients: StepCoefficients, *,
                 history: Sequence[torch.Tensor] = (), thresholding: Optional[Sequence[float]] = None,
                 guidance_scale: Optional[float] = None, noise: Optional[torch.Tensor] = None, seed=None,
                 offset=0, aux_dtype: Optional[torch.dtype] = None, want_aux: bool = True):
    """One fused step with precomputed coefficients (see the module docstring): -> (prev, conv).

    history: the converted outputs of the previous steps, most recent first (coefficients.history of
    them are read). thresholding: (ratio, max_value) as diffusers' dynamic_thresholding_ratio and
    sample_max_value. aux_dtype: dtype of conv (default: sample's). want_aux=False: conv is not written
    (returned as None)."""
    sample = _checks.tensor(sample, "sample", min_dim=1)
    co = _check_coefficients(coefficients)
    cond = None
    if isinstance(model_output, (tuple, list)):
        if len(model_output) != 2:
            raise ValueError(f"model_output: a guidance pair must be (uncond, cond), got {len(model_output)} tensors")
        if guidance_scale is None:
            raise ValueError("guidance_scale: model_output is an (uncond, cond) pair, so guidance_scale is required")
        model = _checks.tensor(model_output[0], "model_output[0] (uncond)")
        cond = _checks.tensor(model_output[1], "model_output[1] (cond)")
        _checks.like(cond, model, "model_output[1] (cond)", "model_output[0] (uncond)")
        gscale = _checks.real(guidance_scale, "guidance_scale")
    else:
        model = _checks.tensor(model_output, "model_output")
        if guidance_scale is not None:
            raise ValueError("guidance_scale: classifier-free guidance needs model_output=(uncond, cond), "
                             "got a single tensor")
        gscale = 1.0
    _checks.like(model, sample, "model_output", "sample", shape=False)
    _check_model_shape(model, sample, "model_output")
    if not isinstance(history, (tuple, list)):
        raise TypeError(f"history: expected a sequence of tensors, got {type(history).__name__}")
    if len(history) < co.history:
        raise ValueError(f"history: the step reads {co.history} previous outputs, got {len(history)}")
    hist = [None, None]
    for i in range(co.history):
        h = _checks.tensor(history[i], f"history[{i}]")
        _checks.like(h, sample, f"history[{i}]", "sample")
        hist[i] = h if h.is_contiguous() else h.contiguous()
    t_ratio, t_max = None, 1.0
    if thresholding is not None:
        if not isinstance(thresholding, (tuple, list)) or len(thresholding) != 2:
            raise TypeError(f"thresholding: expected (ratio, max_value), got {thresholding!r}")
        t_ratio = _checks.real(thresholding[0], "thresholding ratio")
        t_max = _checks.real(thresholding[1], "thresholding max_value")
        if not 0.0 <= t_ratio <= 1.0:
            raise ValueError(f"thresholding: ratio must lie in [0, 1], got {t_ratio}")
    if aux_dtype is None:
        aux_dtype = sample.dtype
    if aux_dtype not in (sample.dtype, torch.float32):
        raise TypeError(f"aux_dtype: must be sample's dtype ({sample.dtype}) or torch.float32, got {aux_dtype}")
    if sample.dtype == torch.float64:
        aux_dtype = torch.float64
    src, seed_i, offset_i, seed_t, offset_t = NOISE_NONE, 0, 0, None, None
    if co.noisy:
        if noise is not None:
            noise = _checks.tensor(noise, "noise")
            _checks.like(noise, sample, "noise", "sample", dtype=False)
            src = NOISE_TENSOR
            if not noise.is_contiguous():
                noise = noise.contiguous()
        else:
            st = resolve_stream(seed, offset, sample.device)
            src, seed_i, offset_i, seed_t, offset_t = NOISE_STREAM, st.seed, st.offset, st.seed_tensor, st.offset_tensor
    else:
        noise = None
    backend = pick_backend_cached(OP, sample, "sample")
    if not sample.is_contiguous():
        sample = sample.contiguous()
    if not model.is_contiguous():
        model = model.contiguous()
    if cond is not None and not cond.is_contiguous():
        cond = cond.contiguous()
    a = SamplerStepArgs(sample, model, cond, gscale, hist[0], hist[1], co.c_x, co.c_0, co.c_1, co.c_2, co.c_noise,
                        co.pre_noise, co.conv_x, co.conv_m, co.to_x0_x, co.to_x0_c, co.from_x0_x, co.from_x0_c,
                        co.history, t_ratio, t_max, aux_dtype, bool(want_aux), src, noise, seed_i, offset_i, seed_t,
                        offset_t, backend)
    if eager_ok(sample, model, cond, hist[0], hist[1], noise, seed_t, offset_t):
        prev, aux = _impl(a)
    else:
        prev, aux = sampler_step_op(*a)
        if not want_aux:
            aux = None
    return prev, aux


def euler_step(sample: torch.Tensor, model_output, sigma: float, sigma_next: float, *,
               prediction_type: str = "epsilon", gamma: float = 0.0, s_noise: float = 1.0,
               guidance_scale: Optional[float] = None, noise: Optional[torch.Tensor] = None, seed=None, offset=0,
               return_pred_original: bool = False, pred_original_dtype: Optional[torch.dtype] = None):
    """One Euler step of the probability-flow ODE (diffusers' EulerDiscreteScheduler.step), fused.

    sample: x at noise level sigma (Karras scale: not divided by sqrt(sigma^2 + 1); the model sees
    that scaled input). sigma_next: the next noise level (0 at the end). gamma > 0 adds "churn" noise
    of std s_noise * sqrt(sigma_hat^2 - sigma^2) first (sigma_hat = sigma * (1 + gamma)).
    Returns prev_sample, or (prev_sample, pred_original_sample) with return_pred_original=True."""
    co = euler_coefficients(_checks.real(sigma, "sigma"), _checks.real(sigma_next, "sigma_next"),
                            prediction_type, _checks.real(gamma, "gamma"), _checks.real(s_noise, "s_noise"))
    prev, x0 = sampler_step(sample, model_output, co, guidance_scale=guidance_scale, noise=noise, seed=seed,
                            offset=offset, aux_dtype=pred_original_dtype, want_aux=bool(return_pred_original))
    return (prev, x0) if return_pred_original else prev


def euler_ancestral_step(sample: torch.Tensor, model_output, sigma: float, sigma_next: float, *,
                         prediction_type: str = "epsilon", guidance_scale: Optional[float] = None,
                         noise: Optional[torch.Tensor] = None, seed=None, offset=0,
                         return_pred_original: bool = False, pred_original_dtype: Optional[torch.dtype] = None):
    """One Euler-ancestral step of the reverse SDE (diffusers' EulerAncestralDiscreteScheduler.step):
    a deterministic Euler step to sigma_down, then noise of std sigma_up. Arguments as euler_step."""
    co = euler_ancestral_coefficients(_checks.real(sigma, "sigma"), _checks.real(sigma_next, "sigma_next"),
                                      prediction_type)
    prev, x0 = sampler_step(sample, model_output, co, guidance_scale=guidance_scale, noise=noise, seed=seed,
                            offset=offset, aux_dtype=pred_original_dtype, want_aux=bool(return_pred_original))
    return (prev, x0) if return_pred_original else prev


def dpm_solver_step(sample: torch.Tensor, model_output, sigmas: Sequence[float],
                    history: Sequence[torch.Tensor] = (), *, algorithm_type: str = "dpmsolver++",
                    solver_type: str = "midpoint", prediction_type: str = "epsilon",
                    thresholding: Optional[Sequence[float]] = None, flow_sigmas: bool = False,
                    guidance_scale: Optional[float] = None, noise: Optional[torch.Tensor] = None, seed=None,
                    offset=0):
    """One multistep DPM-Solver step (diffusers' DPMSolverMultistepScheduler.step: convert_model_output,
    then the update of order len(sigmas) - 1) as one kernel that reads the previous outputs in the
    same pass. -> (prev_sample, converted_model_output); keep the second for the next step's history.

    sigmas: (sigma_next, sigma_now, sigma_prev, sigma_prev2) as far as the order needs; history: the
    converted outputs of the previous steps, most recent first. algorithm_type: dpmsolver++ (default),
    sde-dpmsolver++ (noise from `noise` or genfast's stream), dpmsolver, sde-dpmsolver."""
    if not isinstance(sigmas, (tuple, list)):
        raise TypeError(f"sigmas: expected a sequence of floats, got {type(sigmas).__name__}")
    sig = [_checks.real(s, f"sigmas[{i}]") for i, s in enumerate(sigmas)]
    co = dpm_solver_coefficients(sig, algorithm_type, solver_type, prediction_type, bool(flow_sigmas))
    return sampler_step(sample, model_output, co, history=history, thresholding=thresholding,
                        guidance_scale=guidance_scale, noise=noise, seed=seed, offset=offset)
