"""genfast.ops.gradient_penalty: the WGAN-GP gradient penalty (and R1), fused.

    two-sided (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs"):
        x_b = alpha_b real_b + (1 - alpha_b) fake_b,  alpha_b ~ U(0, 1) per sample
        g_b = dD(x)/dx_b (graph kept),  penalty = weight * mean_b (||g_b||_2 - center)^2
    one-sided (same paper, appendix): weight * mean_b relu(||g_b|| - center)^2
    r1 (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?"; StyleGAN2's
        convention): on real data only, weight / 2 * mean_b ||dD(real_b)/dx||^2

The norm runs over all non-batch dimensions. alpha_b is element b of
`genfast.ops.rand([B], seed=seed, offset=offset)`, drawn inside the interpolation kernel.

Three fused kernels per backend (reference / cpu / cuda / triton):
  (a) `genfast::gp_interpolate`: x = alpha_b real + (1 - alpha_b) fake in one pass, alpha from the
      stream in-kernel (or read from a [B] tensor); its autograd (d/dreal = alpha, d/dfake = 1 - alpha)
      is plain PyTorch, so it is differentiable to any order.
  (b) `genfast::gp_norm_penalty`: per-sample sum of squares in fp32 and the penalty in ONE launch:
      programs own (sample, chunk) tiles and write one fp32 partial each; the last program to finish
      (an atomic ticket) adds the partials of each sample in a fixed order, so the result is
      deterministic (no float atomics), and writes the norms and the penalty. Chunks rather than one
      program per sample because B = 64 samples of 3x64x64 would leave half an H100 idle; the chunk
      length is chosen so that about 1024 programs run whatever B and the row length are.
  (c) `genfast::gp_norm_penalty_backward`: one elementwise pass
      dP/dg_b = grad_out * weight / B * s(||g_b||) * g_b with s = 2 (n - c) / n (two-sided),
      2 relu(n - c) / n (one-sided), 1 (r1), and s = 0 where n == 0 (so zero rows give 0, not NaN,
      as torch's norm backward does). Autograd carries it through the critic's double backward. It is
      once-differentiable: asking for its derivative raises.

The penalty's Function is applied to g = autograd.grad(D(x).sum(), x, create_graph=True), so the
critic parameters get their gradient through the double backward; x itself is a fresh tensor
requiring grad (a leaf unless real/fake require grad, in which case gradients reach them too).

Numerics: fp32 arithmetic inside every kernel; outputs in the input dtype (norms fp32). float64 runs
the reference (the oracle's dtype); forcing a compiled backend with float64 raises TypeError.
"""
from __future__ import annotations

from typing import Optional

import torch

from genfast import _backend, _ext
from genfast.ops._stream import Stream, resolve_stream
from genfast.ops.random import reference_uniform

MODES = {"two-sided": 0, "one-sided": 1, "r1": 2}
_COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OP = "gradient_penalty"

__all__ = ["gradient_penalty", "interpolate", "gradient_norm_penalty", "reference_gradient_penalty", "MODES"]


# ---------------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------------
def _pick_backend(t: torch.Tensor, name: str) -> str:
    if t.dtype not in _COMPILED_DTYPES and t.dtype != torch.float64:
        raise TypeError(f"{name}: expected float32, float16, bfloat16 or float64, got {t.dtype}")
    forced = _backend.forced_backend()
    if t.dtype == torch.float64:
        if forced not in (None, "reference"):
            raise TypeError(f"{name}: float64 runs only on the reference backend (the oracle); backend "
                            f"{forced!r} computes in fp32 and takes float32, float16 or bfloat16")
        return "reference"
    return _backend.select_backend(_OP, t.device, t.dtype)


# ---------------------------------------------------------------------------------------------
# Persistent ticket counter of the one-launch reduction (GPU backends). The last program resets it
# to zero, so it is zero between launches; it is allocated once per device, outside any CUDA graph
# capture (run the op once eagerly before capturing, as every graph needs a warm-up anyway).
# Launches of this op on two streams of one device must not run concurrently.
# ---------------------------------------------------------------------------------------------
_COUNTERS: dict[tuple[str, int], torch.Tensor] = {}


def _ticket_counter(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index if device.index is not None else -1)
    counter = _COUNTERS.get(key)
    if counter is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("gradient_norm_penalty: run it once eagerly on this device before capturing a "
                               "CUDA graph (it allocates its ticket counter on first use)")
        counter = torch.zeros(1, dtype=torch.int32, device=device)
        _COUNTERS[key] = counter
    return counter


def _rows(t: torch.Tensor) -> tuple[int, int]:
    b = t.shape[0]
    return b, (t.numel() // b if b else 0)


# ---------------------------------------------------------------------------------------------
# (a) interpolation
# ---------------------------------------------------------------------------------------------
def _alpha_vector(batch: int, alpha: Optional[torch.Tensor], stream: Stream, device) -> torch.Tensor:
    if alpha is not None:
        return alpha
    return reference_uniform(batch, stream, device)


def _interp_reference(real, fake, alpha, stream, out):
    b = real.shape[0]
    a = _alpha_vector(b, alpha, stream, real.device)
    acc = torch.float64 if real.dtype == torch.float64 else torch.float32
    a = a.to(acc).view((b,) + (1,) * (real.dim() - 1))
    out.copy_(a * real.to(acc) + (1.0 - a) * fake.to(acc))


def _interp_cpu(real, fake, alpha, stream, out):
    b, row = _rows(real)
    _ext._C.gp_interpolate_cpu(real.data_ptr(), fake.data_ptr(), out.data_ptr(), _ext.data_ptr(alpha),
                               _ext.dtype_code(alpha) if alpha is not None else 0, b, row, _ext.dtype_code(real),
                               stream.seed & (2**64 - 1), stream.offset & (2**64 - 1),
                               _ext.data_ptr(stream.seed_tensor), _ext.data_ptr(stream.offset_tensor))


def _interp_cuda(real, fake, alpha, stream, out):
    b, row = _rows(real)
    _ext._C.gp_interpolate_cuda(real.data_ptr(), fake.data_ptr(), out.data_ptr(), _ext.data_ptr(alpha),
                                _ext.dtype_code(alpha) if alpha is not None else 0, b, row, _ext.dtype_code(real),
                                stream.seed & (2**64 - 1), stream.offset & (2**64 - 1),
                                _ext.data_ptr(stream.seed_tensor), _ext.data_ptr(stream.offset_tensor),
                                _ext.cuda_stream(real), _ext.device_index(real))


def _interp_triton(real, fake, alpha, stream, out):
    from genfast.triton.gradient_penalty import interpolate_launch

    interpolate_launch(real, fake, out, alpha, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor)


_INTERP = {"reference": _interp_reference, "cpu": _interp_cpu, "cuda": _interp_cuda, "triton": _interp_triton}


@torch.library.custom_op("genfast::gp_interpolate", mutates_args=())
def interpolate_op(real: torch.Tensor, fake: torch.Tensor, alpha: Optional[torch.Tensor], seed: int, offset: int,
                   seed_tensor: Optional[torch.Tensor], offset_tensor: Optional[torch.Tensor],
                   backend: str) -> torch.Tensor:
    real, fake = real.contiguous(), fake.contiguous()
    alpha = alpha.contiguous() if alpha is not None else None
    out = torch.empty_like(real)
    if real.numel():
        _INTERP[backend](real, fake, alpha, Stream(seed, offset, seed_tensor, offset_tensor), out)
    return out


@interpolate_op.register_fake
def _(real, fake, alpha, seed, offset, seed_tensor, offset_tensor, backend):
    return torch.empty_like(real, memory_format=torch.contiguous_format)


def _interp_setup(ctx, inputs, output):
    real, fake, alpha, seed, offset, seed_tensor, offset_tensor, backend = inputs
    ctx.stream = (seed, offset, backend)
    ctx.shape = real.shape
    ctx.dtypes = (real.dtype, fake.dtype)
    need_alpha_grad = alpha is not None and ctx.needs_input_grad[2]
    ctx.save_for_backward(alpha, seed_tensor, offset_tensor, real if need_alpha_grad else None,
                          fake if need_alpha_grad else None)


def _interp_backward(ctx, grad_out):
    alpha, seed_tensor, offset_tensor, real, fake = ctx.saved_tensors
    seed, offset, backend = ctx.stream
    b = ctx.shape[0]
    if alpha is None:  # the [B] alphas again, from the same stream (B values: negligible)
        alpha = reference_uniform(b, Stream(seed, offset, seed_tensor, offset_tensor), grad_out.device)
    acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    a = alpha.to(acc).view((b,) + (1,) * (len(ctx.shape) - 1))
    go = grad_out.to(acc)
    grad_real = (go * a).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    grad_fake = (go * (1.0 - a)).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
    grad_alpha = None
    if real is not None:
        grad_alpha = (go * (real.to(acc) - fake.to(acc))).reshape(b, -1).sum(1).to(alpha.dtype)
    return grad_real, grad_fake, grad_alpha, None, None, None, None, None


interpolate_op.register_autograd(_interp_backward, setup_context=_interp_setup)


# ---------------------------------------------------------------------------------------------
# (b) per-sample norms + penalty, (c) its backward
# ---------------------------------------------------------------------------------------------
def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _penalty_from_sq(sq: torch.Tensor, weight: float, center: float, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    norms = torch.sqrt(sq)
    if mode == 2:
        return weight / 2.0 * sq.mean(), norms
    d = norms - center
    if mode == 1:
        d = torch.clamp_min(d, 0.0)
    return weight * (d * d).mean(), norms


def _np_reference(grad, weight, center, mode, penalty, norms):
    b = grad.shape[0]
    g = grad.reshape(b, -1).to(_norm_dtype(grad.dtype))
    p, n = _penalty_from_sq((g * g).sum(1), weight, center, mode)
    penalty.copy_(p)
    norms.copy_(n)


def _np_cpu(grad, weight, center, mode, penalty, norms):
    b, row = _rows(grad)
    _ext._C.gp_norm_penalty_cpu(grad.data_ptr(), norms.data_ptr(), penalty.data_ptr(), b, row,
                                _ext.dtype_code(grad), float(weight), float(center), mode)


def _np_cuda(grad, weight, center, mode, penalty, norms):
    b, row = _rows(grad)
    counter = _ticket_counter(grad.device)
    partials = torch.empty(max(b, 1024), dtype=torch.float32, device=grad.device)  # the launcher uses <= max(B, 1024)
    _ext._C.gp_norm_penalty_cuda(grad.data_ptr(), norms.data_ptr(), penalty.data_ptr(), partials.data_ptr(),
                                 partials.numel(), counter.data_ptr(), b, row,
                                 _ext.dtype_code(grad), float(weight), float(center), mode, _ext.cuda_stream(grad),
                                 _ext.device_index(grad))


def _np_triton(grad, weight, center, mode, penalty, norms):
    from genfast.triton.gradient_penalty import norm_penalty_launch

    norm_penalty_launch(grad, norms, penalty, _ticket_counter(grad.device), weight, center, mode)


_NORM_PENALTY = {"reference": _np_reference, "cpu": _np_cpu, "cuda": _np_cuda, "triton": _np_triton}


@torch.library.custom_op("genfast::gp_norm_penalty", mutates_args=())
def norm_penalty_op(grad: torch.Tensor, weight: float, center: float, mode: int,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    grad = grad.contiguous()
    b = grad.shape[0]
    penalty = torch.empty((), dtype=grad.dtype, device=grad.device)
    norms = torch.empty((b,), dtype=_norm_dtype(grad.dtype), device=grad.device)
    if b == 0:  # the mean over no samples, as torch.mean gives it
        penalty.fill_(float("nan"))
        return penalty, norms
    _NORM_PENALTY[backend](grad, weight, center, mode, penalty, norms)
    return penalty, norms


@norm_penalty_op.register_fake
def _(grad, weight, center, mode, backend):
    return (torch.empty((), dtype=grad.dtype, device=grad.device),
            torch.empty((grad.shape[0],), dtype=_norm_dtype(grad.dtype), device=grad.device))


def _npb_reference(grad_out, grad, norms, weight, center, mode, out):
    b = grad.shape[0]
    acc = _norm_dtype(grad.dtype)
    n = norms.to(acc)
    if mode == 2:
        s = torch.ones_like(n)
    else:
        d = n - center
        if mode == 1:
            d = torch.clamp_min(d, 0.0)
        s = torch.where(n > 0, 2.0 * d / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n))
    scale = grad_out.to(acc) * (weight / b) * s
    out.view(b, -1).copy_(grad.reshape(b, -1).to(acc) * scale[:, None])


def _npb_cpu(grad_out, grad, norms, weight, center, mode, out):
    b, row = _rows(grad)
    go = grad_out.to(grad.dtype).contiguous()
    _ext._C.gp_norm_penalty_backward_cpu(go.data_ptr(), grad.data_ptr(), norms.data_ptr(), out.data_ptr(), b, row,
                                         _ext.dtype_code(grad), float(weight), float(center), mode)


def _npb_cuda(grad_out, grad, norms, weight, center, mode, out):
    b, row = _rows(grad)
    go = grad_out.to(grad.dtype).contiguous()
    _ext._C.gp_norm_penalty_backward_cuda(go.data_ptr(), grad.data_ptr(), norms.data_ptr(), out.data_ptr(), b, row,
                                          _ext.dtype_code(grad), float(weight), float(center), mode,
                                          _ext.cuda_stream(grad), _ext.device_index(grad))


def _npb_triton(grad_out, grad, norms, weight, center, mode, out):
    from genfast.triton.gradient_penalty import norm_penalty_backward_launch

    norm_penalty_backward_launch(grad_out.to(grad.dtype).contiguous(), grad, norms, out, weight, center, mode)


_NORM_PENALTY_BWD = {"reference": _npb_reference, "cpu": _npb_cpu, "cuda": _npb_cuda, "triton": _npb_triton}


@torch.library.custom_op("genfast::gp_norm_penalty_backward", mutates_args=())
def norm_penalty_backward_op(grad_out: torch.Tensor, grad: torch.Tensor, norms: torch.Tensor, weight: float,
                             center: float, mode: int, backend: str) -> torch.Tensor:
    grad = grad.contiguous()
    norms = norms.contiguous()
    out = torch.empty_like(grad)
    if grad.numel():
        _NORM_PENALTY_BWD[backend](grad_out, grad, norms, weight, center, mode, out)
    return out


@norm_penalty_backward_op.register_fake
def _(grad_out, grad, norms, weight, center, mode, backend):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _npb_no_double_backward(ctx, grad):
    raise RuntimeError("gradient_norm_penalty: its backward is once-differentiable (like "
                       "torch.autograd.function.once_differentiable); a third derivative of the critic through "
                       "the gradient penalty is not supported, so it raises instead of silently dropping terms")


norm_penalty_backward_op.register_autograd(_npb_no_double_backward)


def _np_setup(ctx, inputs, output):
    grad, weight, center, mode, backend = inputs
    _, norms = output
    ctx.mark_non_differentiable(norms)
    ctx.args = (weight, center, mode, backend)
    ctx.save_for_backward(grad, norms)


def _np_backward(ctx, grad_penalty, grad_norms):
    grad, norms = ctx.saved_tensors
    weight, center, mode, backend = ctx.args
    if grad_penalty is None:
        return None, None, None, None, None
    return norm_penalty_backward_op(grad_penalty, grad, norms, weight, center, mode, backend), None, None, None, None


norm_penalty_op.register_autograd(_np_backward, setup_context=_np_setup)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def _check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{name}: expected a batch dimension first, got a 0-dim tensor")
    return t


def _check_number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: must be finite, got {v}")
    return v


def _check_mode(mode) -> int:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return MODES[mode]


def _check_pair(real, fake) -> None:
    if fake.shape != real.shape:
        raise ValueError(f"fake: shape {tuple(fake.shape)} does not match real's {tuple(real.shape)}")
    if fake.dtype != real.dtype:
        raise TypeError(f"fake: dtype {fake.dtype} does not match real's {real.dtype}")
    if fake.device != real.device:
        raise ValueError(f"fake: on {fake.device} but real is on {real.device}")


def _check_alpha(alpha, real) -> Optional[torch.Tensor]:
    if alpha is None:
        return None
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        raise TypeError(f"alpha: expected a floating-point tensor of shape [B], got "
                        f"{alpha.dtype if isinstance(alpha, torch.Tensor) else type(alpha).__name__}")
    if tuple(alpha.shape) != (real.shape[0],):
        raise ValueError(f"alpha: expected shape ({real.shape[0]},) (one per sample), got {tuple(alpha.shape)}")
    if alpha.device != real.device:
        raise ValueError(f"alpha: on {alpha.device} but real is on {real.device}")
    if real.dtype != torch.float64 and alpha.dtype == torch.float64:
        alpha = alpha.float()
    return alpha


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: Optional[torch.Tensor] = None, seed=None,
                offset=0) -> torch.Tensor:
    """x_b = alpha_b real_b + (1 - alpha_b) fake_b, in one pass with alpha drawn in-kernel.

    alpha: optional [B] tensor; otherwise alpha_b is element b of genfast.ops.rand([B], seed=seed,
    offset=offset) (seed None: drawn from torch's default generator). Differentiable in real, fake
    and alpha (d/dreal = alpha, d/dfake = 1 - alpha).
    """
    _check_tensor(real, "real")
    _check_tensor(fake, "fake")
    _check_pair(real, fake)
    alpha = _check_alpha(alpha, real)
    backend = _pick_backend(real, "real")
    stream = resolve_stream(seed, offset, real.device)
    return interpolate_op(real, fake, alpha, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor,
                          backend)


def gradient_norm_penalty(grad: torch.Tensor, weight: float = 10.0, center: float = 1.0,
                          mode: str = "two-sided") -> torch.Tensor:
    """The penalty of per-sample gradients `grad` ([B, ...]) as a 0-dim tensor in grad's dtype.

    two-sided: weight * mean_b (||g_b|| - center)^2; one-sided: weight * mean_b relu(||g_b|| - center)^2;
    r1: weight / 2 * mean_b ||g_b||^2 (center unused). Norms over all non-batch dims, accumulated in
    fp32. Differentiable once in grad (its backward is once-differentiable).
    """
    _check_tensor(grad, "grad")
    m = _check_mode(mode)
    weight = _check_number(weight, "weight")
    center = _check_number(center, "center")
    backend = _pick_backend(grad, "grad")
    penalty, _ = norm_penalty_op(grad, weight, center, m, backend)
    return penalty


def _critic_gradient(critic, x: torch.Tensor, critic_kwargs) -> torch.Tensor:
    if not callable(critic):
        raise TypeError(f"critic: expected a callable (an nn.Module or function), got {type(critic).__name__}")
    out = critic(x, **critic_kwargs)
    b = x.shape[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"critic: must return a tensor, got {type(out).__name__}")
    if not (tuple(out.shape) == (b,) or tuple(out.shape) == (b, 1)):
        raise ValueError(f"critic: must return one value per sample, shape ({b},) or ({b}, 1); "
                         f"got {tuple(out.shape)}")
    if not out.requires_grad:
        raise ValueError("critic: its output does not depend on its input (no gradient to penalize)")
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)
    if g is None:
        raise ValueError("critic: its output does not depend on its input (no gradient to penalize)")
    return g


def _penalty_input(critic, real, fake, mode, alpha, seed, offset, interp) -> torch.Tensor:
    if not callable(critic):
        raise TypeError(f"critic: expected a callable (an nn.Module or function), got {type(critic).__name__}")
    _check_tensor(real, "real")
    m = _check_mode(mode)
    if m == 2:
        x = real
    else:
        if fake is None:
            raise ValueError(f"fake: required for mode {mode!r} (only 'r1' penalizes real data alone)")
        _check_tensor(fake, "fake")
        _check_pair(real, fake)
        x = interp(real, fake, alpha, seed, offset)
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    return x


def gradient_penalty(critic, real: torch.Tensor, fake: Optional[torch.Tensor] = None, *, weight: float = 10.0,
                     center: float = 1.0, mode: str = "two-sided", alpha: Optional[torch.Tensor] = None, seed=None,
                     offset=0, **critic_kwargs) -> torch.Tensor:
    """WGAN-GP / R1 gradient penalty of `critic` (a callable returning [B] or [B, 1]) as a 0-dim tensor.

    Call `.backward()` on (a loss including) it: the critic parameters get the exact gradient through
    the double backward. `critic_kwargs` (e.g. class labels `y=labels`) are passed to the critic.
    See the module docstring for the formulas.
    """
    weight = _check_number(weight, "weight")
    center = _check_number(center, "center")
    x = _penalty_input(critic, real, fake, mode, alpha, seed, offset, interpolate)
    g = _critic_gradient(critic, x, critic_kwargs)
    return gradient_norm_penalty(g, weight=weight, center=center, mode=mode)


def reference_gradient_penalty(critic, real: torch.Tensor, fake: Optional[torch.Tensor] = None, *,
                               weight: float = 10.0, center: float = 1.0, mode: str = "two-sided",
                               alpha: Optional[torch.Tensor] = None, seed=None, offset=0,
                               **critic_kwargs) -> torch.Tensor:
    """The plain-autograd penalty (the textbook implementation, differentiable to any order): the
    oracle of the tests and the 'plain' column of the benchmark. Same alpha as gradient_penalty."""
    weight = _check_number(weight, "weight")
    center = _check_number(center, "center")

    def plain_interp(r, f, a, s, o):
        a = _check_alpha(a, r)
        if a is None:
            a = reference_uniform(r.shape[0], resolve_stream(s, o, r.device), r.device)
        a = a.to(r.dtype).view((r.shape[0],) + (1,) * (r.dim() - 1))
        return a * r + (1 - a) * f

    x = _penalty_input(critic, real, fake, mode, alpha, seed, offset, plain_interp)
    g = _critic_gradient(critic, x, critic_kwargs)
    norms = g.reshape(g.shape[0], -1).norm(2, dim=1)
    if mode == "r1":
        return weight / 2 * (norms * norms).mean()
    d = norms - center
    if mode == "one-sided":
        d = torch.relu(d)
    return weight * (d * d).mean()
