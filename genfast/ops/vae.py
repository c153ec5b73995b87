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
from typing import Optional

import torch

from genfast import _backend, _ext
from genfast.ops._stream import Stream, resolve_stream
from genfast.ops.random import reference_normal

REDUCTIONS = ("batchmean", "sum", "none")
_MASK64 = 2**64 - 1


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
# Compiled backends.
# ---------------------------------------------------------------------------------------------
def _stream_ints(stream: Stream):
    return (stream.seed & _MASK64, stream.offset & _MASK64, _ext.data_ptr(stream.seed_tensor),
            _ext.data_ptr(stream.offset_tensor))


def _cpu_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    b, d = _batch_and_latent(mu.shape)
    z = torch.empty_like(mu)
    rows = mu.new_empty((b if with_kl else 0,), dtype=torch.float32)
    cols = mu.new_empty((d if col_sums else 0,), dtype=torch.float32)
    _ext._C.vae_forward_cpu(mu.data_ptr(), logvar.data_ptr(), _ext.data_ptr(noise), z.data_ptr(),
                            _ext.data_ptr(rows if with_kl else None), _ext.data_ptr(cols if col_sums else None),
                            b, d, _ext.dtype_code(mu), *_stream_ints(stream), lo is not None,
                            0.0 if lo is None else lo, 0.0 if hi is None else hi)
    return z, rows, cols


def _compiled_backward(launch, grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi, *device_args):
    b, d = _batch_and_latent(mu.shape)
    g_mu = torch.empty_like(mu)
    g_lv = torch.empty_like(mu)
    launch(_ext.data_ptr(grad_z), _ext.data_ptr(grad_rows), _ext.data_ptr(grad_cols), mu.data_ptr(),
           logvar.data_ptr(), _ext.data_ptr(noise), g_mu.data_ptr(), g_lv.data_ptr(), b, d, _ext.dtype_code(mu),
           *_stream_ints(stream), lo is not None, 0.0 if lo is None else lo, 0.0 if hi is None else hi, *device_args)
    return g_mu, g_lv


def _cpu_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    return _compiled_backward(_ext._C.vae_backward_cpu, grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi)


def _cuda_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    b, d = _batch_and_latent(mu.shape)
    z = torch.empty_like(mu)
    n_chunks, n_groups = _ext._C.vae_partials_shape_cuda(b, d, _ext.dtype_code(mu), col_sums)
    row_part = mu.new_empty((n_chunks if with_kl else 0, b), dtype=torch.float32)
    col_part = mu.new_empty((n_groups if col_sums else 0, d), dtype=torch.float32)
    _ext._C.vae_forward_cuda(mu.data_ptr(), logvar.data_ptr(), _ext.data_ptr(noise), z.data_ptr(),
                             _ext.data_ptr(row_part if with_kl else None),
                             _ext.data_ptr(col_part if col_sums else None), b, d, _ext.dtype_code(mu),
                             *_stream_ints(stream), lo is not None, 0.0 if lo is None else lo,
                             0.0 if hi is None else hi, col_sums, _ext.cuda_stream(mu), _ext.device_index(mu))
    rows = row_part.sum(0) if with_kl else row_part.new_empty((0,))
    cols = col_part.sum(0) if col_sums else col_part.new_empty((0,))
    return z, rows, cols


def _cuda_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    return _compiled_backward(_ext._C.vae_backward_cuda, grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo,
                              hi, _ext.cuda_stream(mu), _ext.device_index(mu))


def _triton_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    from genfast.triton.vae import vae_forward

    return vae_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi)


def _triton_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    from genfast.triton.vae import vae_backward

    return vae_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi)


_FORWARD = {"reference": _reference_forward, "cpu": _cpu_forward, "cuda": _cuda_forward, "triton": _triton_forward}
_BACKWARD = {"reference": _reference_backward, "cpu": _cpu_backward, "cuda": _cuda_backward,
             "triton": _triton_backward}


# ---------------------------------------------------------------------------------------------
# Custom ops. Outputs of the forward: z, the per-sample KL sums (B,) and, with col_sums, the
# per-latent-element KL sums over the batch (D,); the reduction and free bits are torch ops on those.
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("genfast::vae_reparameterize", mutates_args=())
def vae_forward_op(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    noise: Optional[torch.Tensor],
    seed: int,
    offset: int,
    seed_tensor: Optional[torch.Tensor],
    offset_tensor: Optional[torch.Tensor],
    with_kl: bool,
    col_sums: bool,
    clamp_lo: Optional[float],
    clamp_hi: Optional[float],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    stream = Stream(seed, offset, seed_tensor, offset_tensor)
    z, rows, cols = _FORWARD[backend](mu, logvar, noise, stream, with_kl, col_sums, clamp_lo, clamp_hi)
    return z, rows.to(kl_dtype(mu.dtype)), cols.to(kl_dtype(mu.dtype))


@vae_forward_op.register_fake
def _(mu, logvar, noise, seed, offset, seed_tensor, offset_tensor, with_kl, col_sums, clamp_lo, clamp_hi, backend):
    b = mu.shape[0]
    d = math.prod(mu.shape[1:])
    acc = kl_dtype(mu.dtype)
    return (torch.empty_like(mu), mu.new_empty((b if with_kl else 0,), dtype=acc),
            mu.new_empty((d if col_sums else 0,), dtype=acc))


@torch.library.custom_op("genfast::vae_reparameterize_backward", mutates_args=())
def vae_backward_op(
    grad_z: Optional[torch.Tensor],
    grad_rows: Optional[torch.Tensor],
    grad_cols: Optional[torch.Tensor],
    mu: torch.Tensor,
    logvar: torch.Tensor,
    noise: Optional[torch.Tensor],
    seed: int,
    offset: int,
    seed_tensor: Optional[torch.Tensor],
    offset_tensor: Optional[torch.Tensor],
    clamp_lo: Optional[float],
    clamp_hi: Optional[float],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    stream = Stream(seed, offset, seed_tensor, offset_tensor)
    return _BACKWARD[backend](grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, clamp_lo, clamp_hi)


@vae_backward_op.register_fake
def _(grad_z, grad_rows, grad_cols, mu, logvar, noise, seed, offset, seed_tensor, offset_tensor, clamp_lo, clamp_hi,
      backend):
    return torch.empty_like(mu), torch.empty_like(mu)


def _setup_context(ctx, inputs, output):
    (mu, logvar, noise, seed, offset, seed_tensor, offset_tensor, with_kl, col_sums, clamp_lo, clamp_hi,
     backend) = inputs
    # A seed/offset tensor may be overwritten before the backward (graph replay): keep today's value.
    seed_tensor = seed_tensor.clone() if seed_tensor is not None else None
    offset_tensor = offset_tensor.clone() if offset_tensor is not None else None
    ctx.save_for_backward(mu, logvar, noise, seed_tensor, offset_tensor)
    ctx.args = (seed, offset, clamp_lo, clamp_hi, backend, with_kl, col_sums)


def _backward(ctx, grad_z, grad_rows, grad_cols):
    mu, logvar, noise, seed_tensor, offset_tensor = ctx.saved_tensors
    seed, offset, clamp_lo, clamp_hi, backend, with_kl, col_sums = ctx.args
    # Incoming gradients may be expanded (stride 0, e.g. from a mean): the kernels take contiguous ones.
    grad_z = grad_z.contiguous() if grad_z is not None else None
    grad_rows = grad_rows.to(torch.float32 if mu.dtype != torch.float64 else torch.float64).contiguous() \
        if (grad_rows is not None and with_kl) else None
    grad_cols = grad_cols.to(grad_rows.dtype if grad_rows is not None else kl_dtype(mu.dtype)).contiguous() \
        if (grad_cols is not None and col_sums) else None
    g_mu, g_lv = vae_backward_op(grad_z, grad_rows, grad_cols, mu, logvar, noise, seed, offset, seed_tensor,
                                 offset_tensor, clamp_lo, clamp_hi, backend)
    g_noise = None
    if noise is not None and ctx.needs_input_grad[2] and grad_z is not None:
        lv = logvar.to(kl_dtype(mu.dtype))
        if clamp_lo is not None:
            lv = lv.clamp(clamp_lo, clamp_hi)
        g_noise = (grad_z.to(lv.dtype) * torch.exp(0.5 * lv)).to(noise.dtype)
    return g_mu, g_lv, g_noise, None, None, None, None, None, None, None, None, None


vae_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public API: validation, dispatch, reduction and free bits.
# ---------------------------------------------------------------------------------------------
def _check_tensor(t, name: str, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point() or t.dtype not in _ext.DTYPE_CODES:
        raise TypeError(f"{name}: expected a float32, float16, bfloat16 or float64 tensor, got {t.dtype}")
    if like is None:
        if t.dim() == 0:
            raise ValueError(f"{name}: needs a batch dimension (at least 1-D), got a 0-dim tensor")
        return
    if t.shape != like.shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)} differs from mu's shape {tuple(like.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} differs from mu's dtype {like.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name}: on {t.device} but mu is on {like.device}")


def _check_real(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{name}: must not be NaN")
    return v


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


def select_vae_backend(device: torch.device, dtype: torch.dtype) -> str:
    name = _backend.select_backend("vae", device, dtype)
    if dtype == torch.float64 and name != "reference":
        if _backend.forced_backend() is not None:
            raise TypeError(f"dtype: the {name} backend computes in float32 and takes float32, float16 or bfloat16; "
                            "float64 runs on the reference backend")
        name = "reference"
    return name


def _run(mu, logvar, noise, seed, offset, with_kl: bool, col_sums: bool, lo, hi):
    _check_tensor(mu, "mu")
    _check_tensor(logvar, "logvar", mu)
    if noise is not None:
        _check_tensor(noise, "noise", mu)
        stream = Stream(0, 0, None, None)  # unused: the noise is given
    else:
        stream = resolve_stream(seed, offset, mu.device)
    backend = select_vae_backend(mu.device, mu.dtype)
    return vae_forward_op(mu.contiguous(), logvar.contiguous(), noise.contiguous() if noise is not None else None,
                          stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor, with_kl, col_sums,
                          lo, hi, backend)


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
