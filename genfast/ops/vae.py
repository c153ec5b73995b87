"""genfast.ops.reparameterize / reparameterize_kl: the fused VAE reparameterization with its KL term.

For mu, logvar of shape (B, *latent) (at least 1-D; dim 0 is the batch):

    lv   = clamp(logvar, lo, hi)                  only when logvar_clamp=(lo, hi) is given
    z    = mu + exp(lv / 2) * eps                 eps ~ N(0, I): `noise`, or genfast's stream
    KL_b = -1/2 * sum_j (1 + lv_bj - mu_bj^2 - exp(lv_bj))   sum over every non-batch element j

KL_b is the exact KL(N(mu_b, diag(exp(lv_b))) || N(0, I)) in nats, summed (not averaged) over the
latent and with its 1/2 (some codes average over latent dimensions, i.e. divide by D = prod(latent);
some omit the 1/2: multiply/divide accordingly). reduction="batchmean" (default) returns mean_b KL_b,
"sum" sum_b KL_b, "none" the vector KL_b.

free_bits=lam (Kingma et al. 2016, "free bits", one group per latent element): the batch-mean KL of
each latent element, m_j = mean_b KL_bj, is floored at lam, so the batch objective is
sum_j max(lam, m_j) and elements whose mean KL is below lam get no gradient from the KL. Per sample
(reduction="none") KL_b + sum_j max(0, lam - m_j) is returned: the shortfall is shared equally by
the samples, so "batchmean"/"sum" equal the mean/sum of the "none" values.

eps: with noise=None element i (row-major) is element i of genfast.ops.randn(mu.shape, seed=seed,
offset=offset) on every backend. The stream is not stored: the backward regenerates eps from
(seed, offset) (the seed tensor, if one is given, is copied at forward time). A user `noise` tensor
(same shape, dtype and device as mu) is used as given and saved for the backward.

Kernels: one forward kernel writes z and per-block KL partial sums per sample (and, with free_bits,
per latent element); a tiny finishing step sums those partials (a few values per sample) in torch.
One backward kernel takes grad_z and the KL gradient (per sample, and per latent element with
free_bits) and writes grad_mu and grad_logvar. Arithmetic is fp32; z is in the input dtype; the KL
is returned in float32 for float16/bfloat16 inputs (a sum over a large latent overflows float16;
autocast does the same for reductions) and in the input dtype otherwise. float64 runs on the
reference backend (the default dispatch routes it there; forcing a compiled backend with float64
is a TypeError).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from genfast import _ext
from genfast.ops import _checks
from genfast.ops._dispatch import Kernel, custom_op, eager_function, eager_ok, pick_backend
from genfast.ops._stream import Stream, resolve_stream
from genfast.ops.random import reference_normal

REDUCTIONS = ("batchmean", "sum", "none")


def kl_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the KL sums: float32 for half inputs, else the input dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _batch_and_latent(shape) -> tuple[int, int]:
    b = shape[0]
    d = 1
    for s in shape[1:]:
        d *= s
    return b, d


# ---------------------------------------------------------------------------------------------
# Reference backend: plain PyTorch (fp32 arithmetic for half inputs, float64 for float64).
# ---------------------------------------------------------------------------------------------
def _reference_eps(mu: torch.Tensor, noise: Optional[torch.Tensor], stream: Stream, compute: torch.dtype):
    if noise is not None:
        return noise.to(compute)
    return reference_normal(mu.numel(), stream, mu.device).view(mu.shape).to(compute)


def _reference_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    acc = kl_dtype(mu.dtype)
    m = mu.to(acc)
    lv = logvar.to(acc)
    if lo is not None:
        lv = lv.clamp(lo, hi)
    eps = _reference_eps(mu, noise, stream, acc)
    std = torch.exp(0.5 * lv)
    z = (m + std * eps).to(mu.dtype)
    b, d = _batch_and_latent(mu.shape)
    rows = mu.new_empty((0,), dtype=acc)
    cols = mu.new_empty((0,), dtype=acc)
    if with_kl:
        kl = (0.5 * (m * m + std * std - 1.0 - lv)).reshape(b, d)
        rows = kl.sum(1)
        if col_sums:
            cols = kl.sum(0)
    return z, rows, cols


def _reference_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    acc = kl_dtype(mu.dtype)
    m = mu.to(acc)
    lv_raw = logvar.to(acc)
    lv = lv_raw.clamp(lo, hi) if lo is not None else lv_raw
    std = torch.exp(0.5 * lv)
    b, d = _batch_and_latent(mu.shape)
    coef = torch.zeros((b, d), dtype=acc, device=mu.device)
    if grad_rows is not None:
        coef = coef + grad_rows.to(acc).view(b, 1)
    if grad_cols is not None:
        coef = coef + grad_cols.to(acc).view(1, d)
    coef = coef.view(mu.shape)
    g_mu = coef * m
    g_lv = 0.5 * coef * (std * std - 1.0)
    if grad_z is not None:
        eps = _reference_eps(mu, noise, stream, acc)
        gz = grad_z.to(acc)
        g_mu = g_mu + gz
        g_lv = g_lv + 0.5 * gz * std * eps
    if lo is not None:
        g_lv = torch.where((lv_raw >= lo) & (lv_raw <= hi), g_lv, torch.zeros_like(g_lv))
    return g_mu.to(mu.dtype), g_lv.to(mu.dtype)


# ---------------------------------------------------------------------------------------------
# The two kernels: forward (z, per-sample KL sums, optional per-element KL sums over the batch) and
# backward (grad_mu, grad_logvar from grad_z and the KL gradients).
# ---------------------------------------------------------------------------------------------
vae_forward_kernel = Kernel("vae_forward")
vae_forward_kernel.reference(_reference_forward)


def _clamp_ints(lo, hi) -> tuple:
    return lo is not None, 0.0 if lo is None else lo, 0.0 if hi is None else hi


@vae_forward_kernel.compiled
def _(launch, mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    b, d = _batch_and_latent(mu.shape)
    z = torch.empty_like(mu)
    if not launch.cuda:  # the C++ kernel sums rows and columns itself
        rows = mu.new_empty((b if with_kl else 0,), dtype=torch.float32)
        cols = mu.new_empty((d if col_sums else 0,), dtype=torch.float32)
        launch("vae_forward", mu.data_ptr(), logvar.data_ptr(), _ext.data_ptr(noise), z.data_ptr(),
               _ext.data_ptr(rows if with_kl else None), _ext.data_ptr(cols if col_sums else None), b, d,
               _ext.dtype_code(mu), *stream.ints(), *_clamp_ints(lo, hi))
        return z, rows, cols
    # the CUDA kernel writes per-block partials; a sum over a few values per sample finishes them
    n_chunks, n_groups = launch.query("vae_partials_shape", b, d, _ext.dtype_code(mu), col_sums)
    row_part = mu.new_empty((n_chunks if with_kl else 0, b), dtype=torch.float32)
    col_part = mu.new_empty((n_groups if col_sums else 0, d), dtype=torch.float32)
    launch("vae_forward", mu.data_ptr(), logvar.data_ptr(), _ext.data_ptr(noise), z.data_ptr(),
           _ext.data_ptr(row_part if with_kl else None), _ext.data_ptr(col_part if col_sums else None), b, d,
           _ext.dtype_code(mu), *stream.ints(), *_clamp_ints(lo, hi), col_sums)
    rows = row_part.sum(0) if with_kl else row_part.new_empty((0,))
    cols = col_part.sum(0) if col_sums else col_part.new_empty((0,))
    return z, rows, cols


@vae_forward_kernel.triton
def _(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    from genfast.triton.vae import vae_forward

    return vae_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi)


vae_backward_kernel = Kernel("vae_backward")
vae_backward_kernel.reference(_reference_backward)


@vae_backward_kernel.compiled
def _(launch, grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    b, d = _batch_and_latent(mu.shape)
    g_mu = torch.empty_like(mu)
    g_lv = torch.empty_like(mu)
    launch("vae_backward", _ext.data_ptr(grad_z), _ext.data_ptr(grad_rows), _ext.data_ptr(grad_cols), mu.data_ptr(),
           logvar.data_ptr(), _ext.data_ptr(noise), g_mu.data_ptr(), g_lv.data_ptr(), b, d, _ext.dtype_code(mu),
           *stream.ints(), *_clamp_ints(lo, hi))
    return g_mu, g_lv


@vae_backward_kernel.triton
def _(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    from genfast.triton.vae import vae_backward

    return vae_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi)


# ---------------------------------------------------------------------------------------------
# Custom ops. Outputs of the forward: z, the per-sample KL sums (B,) and, with col_sums, the
# per-latent-element KL sums over the batch (D,); the reduction and free bits are torch ops on those.
# ---------------------------------------------------------------------------------------------
def _check_clamp_pair(lo, hi, op: str) -> None:
    if (lo is None) != (hi is None) or (lo is not None and not lo <= hi):
        raise ValueError(f"{op}: clamp_lo/clamp_hi must both be None or satisfy lo <= hi, got {lo}, {hi}")


def _check_data(mu, logvar, noise, op: str):
    mu = _checks.tensor(mu, f"{op}: mu", min_dim=1)
    _checks.like(logvar, mu, f"{op}: logvar", "mu")
    if noise is not None:
        _checks.like(noise, mu, f"{op}: noise", "mu")
        noise = noise.contiguous()
    return mu.contiguous(), logvar.contiguous(), noise


class VaeArgs(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    noise: Optional[torch.Tensor]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    with_kl: bool
    col_sums: bool
    clamp_lo: Optional[float]
    clamp_hi: Optional[float]
    backend: str


def _forward_impl(a: VaeArgs):
    op = "vae_reparameterize"
    mu, logvar, noise = _check_data(a.mu, a.logvar, a.noise, op)
    _check_clamp_pair(a.clamp_lo, a.clamp_hi, op)
    stream = Stream(a.seed, a.offset, a.seed_tensor, a.offset_tensor).check(mu.device, op)
    acc = kl_dtype(mu.dtype)
    if mu.numel() == 0:
        b, d = _batch_and_latent(mu.shape)
        return (torch.empty_like(mu), mu.new_zeros((b if a.with_kl else 0,), dtype=acc),
                mu.new_zeros((d if a.col_sums else 0,), dtype=acc))
    z, rows, cols = vae_forward_kernel(a.backend, mu, logvar, noise, stream, a.with_kl, a.col_sums, a.clamp_lo,
                                       a.clamp_hi)
    return z, rows.to(acc), cols.to(acc)


def _forward_fake(a: VaeArgs):
    b = a.mu.shape[0]
    d = math.prod(a.mu.shape[1:])
    acc = kl_dtype(a.mu.dtype)
    return (torch.empty_like(a.mu), a.mu.new_empty((b if a.with_kl else 0,), dtype=acc),
            a.mu.new_empty((d if a.col_sums else 0,), dtype=acc))


vae_forward_op = custom_op("genfast::vae_reparameterize", VaeArgs, "(Tensor, Tensor, Tensor)", _forward_impl,
                           _forward_fake)


class VaeBackwardArgs(NamedTuple):
    grad_z: Optional[torch.Tensor]
    grad_rows: Optional[torch.Tensor]
    grad_cols: Optional[torch.Tensor]
    mu: torch.Tensor
    logvar: torch.Tensor
    noise: Optional[torch.Tensor]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    clamp_lo: Optional[float]
    clamp_hi: Optional[float]
    backend: str


def _backward_impl(a: VaeBackwardArgs):
    op = "vae_reparameterize_backward"
    mu, logvar, noise = _check_data(a.mu, a.logvar, a.noise, op)
    _check_clamp_pair(a.clamp_lo, a.clamp_hi, op)
    stream = Stream(a.seed, a.offset, a.seed_tensor, a.offset_tensor).check(mu.device, op)
    b, d = _batch_and_latent(mu.shape)
    acc = kl_dtype(mu.dtype)
    grad_z, grad_rows, grad_cols = a.grad_z, a.grad_rows, a.grad_cols
    if grad_z is not None:  # incoming gradients may be expanded (stride 0, e.g. from a mean)
        grad_z = _checks.like(grad_z, mu, f"{op}: grad_z", "mu", dtype=False).to(mu.dtype).contiguous()
    for name, g, n in (("grad_rows", grad_rows, b), ("grad_cols", grad_cols, d)):
        if g is not None:
            _checks.tensor(g, f"{op}: {name}")
            if tuple(g.shape) != (n,) or g.device != mu.device:
                raise ValueError(f"{op}: {name} must be a [{n}] tensor on {mu.device}, got {tuple(g.shape)} on "
                                 f"{g.device}")
    grad_rows = grad_rows.to(acc).contiguous() if grad_rows is not None else None
    grad_cols = grad_cols.to(acc).contiguous() if grad_cols is not None else None
    if mu.numel() == 0:
        return torch.zeros_like(mu), torch.zeros_like(mu)
    return vae_backward_kernel(a.backend, grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, a.clamp_lo,
                               a.clamp_hi)


vae_backward_op = custom_op("genfast::vae_reparameterize_backward", VaeBackwardArgs, "(Tensor, Tensor)",
                            _backward_impl, lambda a: (torch.empty_like(a.mu), torch.empty_like(a.mu)))


def _no_double_backward(ctx, grad_mu, grad_logvar):
    raise RuntimeError("reparameterize_kl: its backward is once-differentiable; a second derivative through the "
                       "fused VAE op is not supported (use the reference formula, or torch.func on plain torch ops, "
                       "for higher-order gradients)")


vae_backward_op.register_autograd(_no_double_backward)


def _setup_context(ctx, inputs, output):
    a = VaeArgs(*inputs)
    # A seed/offset tensor may be overwritten before the backward (graph replay): keep today's value.
    seed_tensor = a.seed_tensor.clone() if a.seed_tensor is not None else None
    offset_tensor = a.offset_tensor.clone() if a.offset_tensor is not None else None
    ctx.save_for_backward(a.mu, a.logvar, a.noise, seed_tensor, offset_tensor)
    ctx.args = (a.seed, a.offset, a.clamp_lo, a.clamp_hi, a.backend, a.with_kl, a.col_sums)


def _backward(ctx, grad_z, grad_rows, grad_cols):
    mu, logvar, noise, seed_tensor, offset_tensor = ctx.saved_tensors
    seed, offset, clamp_lo, clamp_hi, backend, with_kl, col_sums = ctx.args
    g_mu, g_lv = vae_backward_op(*VaeBackwardArgs(grad_z, grad_rows if with_kl else None,
                                                  grad_cols if col_sums else None, mu, logvar, noise, seed, offset,
                                                  seed_tensor, offset_tensor, clamp_lo, clamp_hi, backend))
    g_noise = None
    if noise is not None and ctx.needs_input_grad[2] and grad_z is not None:
        lv = logvar.to(kl_dtype(mu.dtype))
        if clamp_lo is not None:
            lv = lv.clamp(clamp_lo, clamp_hi)
        g_noise = (grad_z.to(lv.dtype) * torch.exp(0.5 * lv)).to(noise.dtype)
    return g_mu, g_lv, g_noise, None, None, None, None, None, None, None, None, None


vae_forward_op.register_autograd(_backward, setup_context=_setup_context)
_VaeFunction = eager_function(vae_forward_op, _setup_context, _backward, "_VaeFunction")


# ---------------------------------------------------------------------------------------------
# Public API: validation, dispatch, reduction and free bits.
# ---------------------------------------------------------------------------------------------
def _check_real(v, name: str) -> float:
    return _checks.real(v, name, finite=False)


def _check_clamp(logvar_clamp) -> tuple[Optional[float], Optional[float]]:
    if logvar_clamp is None:
        return None, None
    if not isinstance(logvar_clamp, (tuple, list)) or len(logvar_clamp) != 2:
        raise ValueError(f"logvar_clamp: expected a pair (lo, hi), got {logvar_clamp!r}")
    lo = _check_real(logvar_clamp[0], "logvar_clamp")
    hi = _check_real(logvar_clamp[1], "logvar_clamp")
    if lo > hi:
        raise ValueError(f"logvar_clamp: lo={lo} exceeds hi={hi}")
    return lo, hi


def _run(mu, logvar, noise, seed, offset, with_kl: bool, col_sums: bool, lo, hi):
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(logvar, "logvar")
    _checks.like(logvar, mu, "logvar", "mu")
    if noise is not None:
        _checks.tensor(noise, "noise")
        _checks.like(noise, mu, "noise", "mu")
        stream = Stream(0, 0, None, None)  # unused: the noise is given
    else:
        stream = resolve_stream(seed, offset, mu.device)
    backend = pick_backend("vae", mu, "mu")
    args = VaeArgs(mu, logvar, noise, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor, with_kl,
                   col_sums, lo, hi, backend)
    # eager calls skip the dispatcher (no gradient needed) or torch's custom-op autograd wrapper (one
    # needed); tracing, compiling, modes and torch.func go through the registered op
    tensors = (mu, logvar, noise, stream.seed_tensor, stream.offset_tensor)
    if not torch._C._are_functorch_transforms_active() and eager_ok(*tensors):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*tensors):
            return _VaeFunction.apply(*args)
        return _forward_impl(args)
    return vae_forward_op(*args)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, *, noise: torch.Tensor | None = None, seed=None,
                   offset=0) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, differentiable in mu and logvar (one kernel each way).

    eps: `noise` if given (same shape/dtype/device as mu), else genfast's stream at (seed, offset)
    (seed None: drawn from torch's default generator), regenerated in the backward, not stored.
    """
    z, _, _ = _run(mu, logvar, noise, seed, offset, False, False, None, None)
    return z


def reparameterize_kl(mu: torch.Tensor, logvar: torch.Tensor, *, noise: torch.Tensor | None = None, seed=None,
                      offset=0, reduction: str = "batchmean", free_bits: float | None = None,
                      logvar_clamp: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, kl): the reparameterized sample and KL(N(mu, exp(logvar)) || N(0, I)) in one fused pass.

    See the module docstring for the exact convention (sum over every non-batch element, with the 1/2;
    reduction "batchmean" | "sum" | "none"; free_bits floors the batch-mean KL of each latent element;
    logvar_clamp=(lo, hi) clamps logvar before use, e.g. (-30, 20) as in latent diffusion).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if free_bits is not None:
        free_bits = _check_real(free_bits, "free_bits")
        if free_bits < 0:
            raise ValueError(f"free_bits: must be >= 0, got {free_bits}")
    lo, hi = _check_clamp(logvar_clamp)
    z, rows, cols = _run(mu, logvar, noise, seed, offset, True, free_bits is not None, lo, hi)
    kl = rows
    if free_bits is not None:
        dim_mean = cols / mu.shape[0]
        kl = rows + torch.relu(free_bits - dim_mean).sum()
    if reduction == "batchmean":
        kl = kl.mean()
    elif reduction == "sum":
        kl = kl.sum()
    return z, kl
