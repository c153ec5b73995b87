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

from typing import NamedTuple, Optional

import torch

from genfast import _ext
from genfast.ops import _checks
from genfast.ops._dispatch import Kernel, custom_op, eager_ok, pick_backend
from genfast.ops._stream import Stream, resolve_stream
from genfast.ops.random import reference_uniform

MODES = {"two-sided": 0, "one-sided": 1, "r1": 2}
_OP = "gradient_penalty"

__all__ = ["gradient_penalty", "interpolate", "gradient_norm_penalty", "reference_gradient_penalty", "MODES"]


def _rows(t: torch.Tensor) -> tuple[int, int]:
    b = t.shape[0]
    return b, (t.numel() // b if b else 0)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_mode_code(mode: int, op: str) -> int:
    if mode not in (0, 1, 2):
        raise ValueError(f"{op}: mode must be 0 (two-sided), 1 (one-sided) or 2 (r1), got {mode}")
    return mode


# ---------------------------------------------------------------------------------------------
# (a) interpolation: x_b = alpha_b real_b + (1 - alpha_b) fake_b
# ---------------------------------------------------------------------------------------------
interp_kernel = Kernel("gp_interpolate")


@interp_kernel.reference
def _(real, fake, alpha, stream, out):
    b = real.shape[0]
    a = alpha if alpha is not None else reference_uniform(b, stream, real.device)
    acc = _acc_dtype(real.dtype)
    a = a.to(acc).view((b,) + (1,) * (real.dim() - 1))
    out.copy_(a * real.to(acc) + (1.0 - a) * fake.to(acc))


@interp_kernel.compiled
def _(launch, real, fake, alpha, stream, out):
    b, row = _rows(real)
    launch("gp_interpolate", real.data_ptr(), fake.data_ptr(), out.data_ptr(), _ext.data_ptr(alpha),
           _ext.dtype_code(alpha) if alpha is not None else 0, b, row, _ext.dtype_code(real), *stream.ints())


@interp_kernel.triton
def _(real, fake, alpha, stream, out):
    from genfast.triton.gradient_penalty import interpolate_launch

    interpolate_launch(real, fake, out, alpha, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor)


class InterpArgs(NamedTuple):
    real: torch.Tensor
    fake: torch.Tensor
    alpha: Optional[torch.Tensor]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    backend: str

    def checked(self) -> "InterpArgs":
        """The op's own checks (torch.ops.genfast.gp_interpolate is callable directly) and contiguous copies."""
        real = _checks.tensor(self.real, "gp_interpolate: real", min_dim=1)
        _checks.like(self.fake, real, "gp_interpolate: fake", "real")
        alpha = self.alpha
        if alpha is not None:
            _checks.tensor(alpha, "gp_interpolate: alpha")
            if tuple(alpha.shape) != (real.shape[0],) or alpha.device != real.device:
                raise ValueError(f"gp_interpolate: alpha must be a [{real.shape[0]}] tensor on {real.device}, got "
                                 f"{tuple(alpha.shape)} on {alpha.device}")
            alpha = alpha.contiguous()
        stream = Stream(self.seed, self.offset, self.seed_tensor, self.offset_tensor).check(real.device,
                                                                                          "gp_interpolate")
        return self._replace(real=real.contiguous(), fake=self.fake.contiguous(), alpha=alpha,
                             seed_tensor=stream.seed_tensor, offset_tensor=stream.offset_tensor)

    @property
    def stream(self) -> Stream:
        return Stream(self.seed, self.offset, self.seed_tensor, self.offset_tensor)


def _interp_impl(a: InterpArgs) -> torch.Tensor:
    a = a.checked()
    out = torch.empty_like(a.real)
    if a.real.numel():
        interp_kernel(a.backend, a.real, a.fake, a.alpha, a.stream, out)
    return out


interpolate_op = custom_op("genfast::gp_interpolate", InterpArgs, "Tensor", _interp_impl,
                           lambda a: torch.empty_like(a.real, memory_format=torch.contiguous_format))


def _interp_setup(ctx, inputs, output):
    a = InterpArgs(*inputs)
    # A seed/offset tensor may be overwritten before the backward (graph replay, a reused buffer): the
    # backward must see the alphas of this forward, so it keeps copies.
    ctx.stream = (a.seed, a.offset)
    ctx.shape = a.real.shape
    ctx.dtypes = (a.real.dtype, a.fake.dtype)
    need_alpha_grad = a.alpha is not None and ctx.needs_input_grad[2]
    ctx.save_for_backward(a.alpha, None if a.seed_tensor is None else a.seed_tensor.clone(),
                          None if a.offset_tensor is None else a.offset_tensor.clone(),
                          a.real if need_alpha_grad else None, a.fake if need_alpha_grad else None)


def _interp_backward(ctx, grad_out):
    alpha, seed_tensor, offset_tensor, real, fake = ctx.saved_tensors
    seed, offset = ctx.stream
    b = ctx.shape[0]
    if alpha is None:  # the [B] alphas again, from the same stream (B values: negligible)
        alpha = reference_uniform(b, Stream(seed, offset, seed_tensor, offset_tensor), grad_out.device)
    acc = _acc_dtype(grad_out.dtype)
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
def _penalty_from_sq(sq: torch.Tensor, weight: float, center: float, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    norms = torch.sqrt(sq)
    if mode == 2:
        return weight / 2.0 * sq.mean(), norms
    d = norms - center
    if mode == 1:
        d = torch.clamp_min(d, 0.0)
    return weight * (d * d).mean(), norms


norm_penalty_kernel = Kernel("gp_norm_penalty")


@norm_penalty_kernel.reference
def _(grad, weight, center, mode, penalty, norms):
    b = grad.shape[0]
    g = grad.reshape(b, -1).to(_acc_dtype(grad.dtype))
    p, n = _penalty_from_sq((g * g).sum(1), weight, center, mode)
    penalty.copy_(p)
    norms.copy_(n)


@norm_penalty_kernel.compiled
def _(launch, grad, weight, center, mode, penalty, norms):
    b, row = _rows(grad)
    if not launch.cuda:
        launch("gp_norm_penalty", grad.data_ptr(), norms.data_ptr(), penalty.data_ptr(), b, row,
               _ext.dtype_code(grad), float(weight), float(center), mode)
        return
    # The one-launch reduction's scratch, per call (so launches on two streams never share it, and a
    # CUDA graph captures its allocation): <= max(B, 1024) fp32 partials and a ticket counter, which the
    # launcher zeroes with cudaMemsetAsync on the stream before the kernel.
    partials = torch.empty(max(b, 1024), dtype=torch.float32, device=grad.device)
    counter = torch.empty(1, dtype=torch.int32, device=grad.device)
    launch("gp_norm_penalty", grad.data_ptr(), norms.data_ptr(), penalty.data_ptr(), partials.data_ptr(),
           partials.numel(), counter.data_ptr(), b, row, _ext.dtype_code(grad), float(weight), float(center), mode)


@norm_penalty_kernel.triton
def _(grad, weight, center, mode, penalty, norms):
    from genfast.triton.gradient_penalty import norm_penalty_launch

    counter = torch.zeros(1, dtype=torch.int32, device=grad.device)  # per call, as above
    norm_penalty_launch(grad, norms, penalty, counter, weight, center, mode)


class NormPenaltyArgs(NamedTuple):
    grad: torch.Tensor
    weight: float
    center: float
    mode: int
    backend: str


def _norm_penalty_impl(a: NormPenaltyArgs) -> tuple[torch.Tensor, torch.Tensor]:
    grad = _checks.tensor(a.grad, "gp_norm_penalty: grad", min_dim=1).contiguous()
    mode = _check_mode_code(a.mode, "gp_norm_penalty")
    b = grad.shape[0]
    penalty = torch.empty((), dtype=grad.dtype, device=grad.device)
    norms = torch.empty((b,), dtype=_acc_dtype(grad.dtype), device=grad.device)
    if b == 0:  # the mean over no samples, as torch.mean gives it
        penalty.fill_(float("nan"))
        return penalty, norms
    norm_penalty_kernel(a.backend, grad, a.weight, a.center, mode, penalty, norms)
    return penalty, norms


norm_penalty_op = custom_op(
    "genfast::gp_norm_penalty", NormPenaltyArgs, "(Tensor, Tensor)", _norm_penalty_impl,
    lambda a: (torch.empty((), dtype=a.grad.dtype, device=a.grad.device),
               torch.empty((a.grad.shape[0],), dtype=_acc_dtype(a.grad.dtype), device=a.grad.device)))


norm_penalty_backward_kernel = Kernel("gp_norm_penalty_backward")


@norm_penalty_backward_kernel.reference
def _(grad_out, grad, norms, weight, center, mode, out):
    b = grad.shape[0]
    acc = _acc_dtype(grad.dtype)
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


@norm_penalty_backward_kernel.compiled
def _(launch, grad_out, grad, norms, weight, center, mode, out):
    b, row = _rows(grad)
    launch("gp_norm_penalty_backward", grad_out.data_ptr(), grad.data_ptr(), norms.data_ptr(), out.data_ptr(), b,
           row, _ext.dtype_code(grad), float(weight), float(center), mode)


@norm_penalty_backward_kernel.triton
def _(grad_out, grad, norms, weight, center, mode, out):
    from genfast.triton.gradient_penalty import norm_penalty_backward_launch

    norm_penalty_backward_launch(grad_out, grad, norms, out, weight, center, mode)


class NormPenaltyBackwardArgs(NamedTuple):
    grad_out: torch.Tensor
    grad: torch.Tensor
    norms: torch.Tensor
    weight: float
    center: float
    mode: int
    backend: str


def _norm_penalty_backward_impl(a: NormPenaltyBackwardArgs) -> torch.Tensor:
    op = "gp_norm_penalty_backward"
    grad = _checks.tensor(a.grad, f"{op}: grad", min_dim=1).contiguous()
    mode = _check_mode_code(a.mode, op)
    _checks.tensor(a.grad_out, f"{op}: grad_out")
    _checks.tensor(a.norms, f"{op}: norms")
    if a.grad_out.numel() != 1 or tuple(a.norms.shape) != (grad.shape[0],):
        raise ValueError(f"{op}: grad_out must hold one element and norms must be [{grad.shape[0]}], got "
                         f"{tuple(a.grad_out.shape)} and {tuple(a.norms.shape)}")
    # the kernels read grad_out in grad's dtype and norms in fp32 (fp64 for the reference's fp64)
    grad_out = a.grad_out.reshape(()).to(grad.dtype).contiguous()
    norms = a.norms.to(_acc_dtype(grad.dtype)).contiguous()
    out = torch.empty_like(grad)
    if grad.numel():
        norm_penalty_backward_kernel(a.backend, grad_out, grad, norms, a.weight, a.center, mode, out)
    return out


norm_penalty_backward_op = custom_op(
    "genfast::gp_norm_penalty_backward", NormPenaltyBackwardArgs, "Tensor", _norm_penalty_backward_impl,
    lambda a: torch.empty_like(a.grad, memory_format=torch.contiguous_format))


def _npb_no_double_backward(ctx, grad):
    raise RuntimeError("gradient_norm_penalty: its backward is once-differentiable (like "
                       "torch.autograd.function.once_differentiable); a third derivative of the critic through "
                       "the gradient penalty is not supported, so it raises instead of silently dropping terms")


norm_penalty_backward_op.register_autograd(_npb_no_double_backward)


def _np_setup(ctx, inputs, output):
    a = NormPenaltyArgs(*inputs)
    _, norms = output
    ctx.mark_non_differentiable(norms)
    ctx.args = (a.weight, a.center, a.mode, a.backend)
    ctx.save_for_backward(a.grad, norms)


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
    return _checks.tensor(t, name, min_dim=1)


def _check_number(v, name: str) -> float:
    return _checks.real(v, name)


def _check_mode(mode) -> int:
    return _checks.choice(mode, "mode", MODES)


def _check_pair(real, fake) -> None:
    _checks.like(fake, real, "fake", "real")


def _check_alpha(alpha, real) -> Optional[torch.Tensor]:
    if alpha is None:
        return None
    _checks.tensor(alpha, "alpha")
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
    backend = pick_backend(_OP, real, "real")
    stream = resolve_stream(seed, offset, real.device)
    args = InterpArgs(real, fake, alpha, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor, backend)
    # Eager calls that need no gradient and no torch.func transform skip the dispatcher (~10 us: at a
    # cache-resident shape that was half the call); the others go through the custom op and its autograd.
    tensors = (real, fake, alpha, stream.seed_tensor, stream.offset_tensor)
    if not torch._C._are_functorch_transforms_active() and eager_ok(*tensors) and \
            not (torch.is_grad_enabled() and torch._C._any_requires_grad(*tensors)):
        return _interp_impl(args)
    return interpolate_op(*args)


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
    backend = pick_backend(_OP, grad, "grad")
    penalty, _ = norm_penalty_op(*NormPenaltyArgs(grad, weight, center, m, backend))
    return penalty


def _critic_gradient(critic, x: torch.Tensor, critic_kwargs) -> torch.Tensor:
    if not callable(critic):
        raise TypeError(f"critic: expected a callable (an nn.Module or function), got {type(critic).__name__}")
    if not torch.is_grad_enabled():
        raise RuntimeError("gradient_penalty: autograd is disabled here (torch.no_grad() or inference_mode); the "
                           "penalty differentiates the critic with respect to its input, so call it with grad enabled")
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
