"""genfast.ops.rand / randn: the random stream of design.md on every backend.

Element i of a tensor (row-major) is component i % 4 of Philox4x32-10 at counter
(lo32(i // 4), hi32(i // 4), lo32(offset), hi32(offset)) with key (lo32(seed), hi32(seed));
uniforms are ((r >> 9) + 0.5) * 2^-23, normals Box-Muller on pairs. Always drawn in fp32, then cast.

This module also holds the reference stream (`reference_uniform`, `reference_normal`) that the
other ops' references use.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from genfast import _backend, _ext
from genfast.ops import _checks
from genfast.ops._dispatch import Kernel, custom_op
from genfast.ops._stream import MASK32, Stream, resolve_stream

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
TWO_PI_F32 = 6.28318548202514648438
TWO_POW_M23 = 1.1920928955078125e-07


# ---------------------------------------------------------------------------------------------
# Reference: plain PyTorch on int64 tensors holding uint32 words (any device, graph-capturable).
# ---------------------------------------------------------------------------------------------
def _mulhilo(m: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # m * b for 32-bit m, b without int64 overflow: split b into 16-bit halves (products < 2^48).
    t = m * (b & 0xFFFF)
    u = m * (b >> 16)
    lo = (((u & 0xFFFF) << 16) + t) & MASK32
    hi = (u + (t >> 16)) >> 16
    return hi, lo


def _words(v, device) -> tuple:
    """(lo32, hi32) of a stream value given as a signed-int64 int or an int64 0-dim tensor."""
    if isinstance(v, torch.Tensor):
        return v & MASK32, (v >> 32) & MASK32
    return v & MASK32, (v >> 32) & MASK32


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors of uint32 words (keys may be ints or 0-dim tensors)."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & MASK32
        k1 = (k1 + _W1) & MASK32
    return c0, c1, c2, c3


def _stream_words(numel: int, stream: Stream, device) -> list[torch.Tensor]:
    nq = (numel + 3) // 4
    q = torch.arange(nq, dtype=torch.int64, device=device)
    seed = stream.seed_tensor if stream.seed_tensor is not None else stream.seed
    offset = stream.offset_tensor if stream.offset_tensor is not None else stream.offset
    k0, k1 = _words(seed, device)
    o0, o1 = _words(offset, device)
    zero = torch.zeros_like(q)
    return list(philox4x32_10(q & MASK32, q >> 32, zero + o0, zero + o1, k0, k1))


def _interleave(parts: list[torch.Tensor], numel: int) -> torch.Tensor:
    return torch.stack(parts, dim=1).reshape(-1)[:numel]


def reference_uniform(numel: int, stream: Stream, device) -> torch.Tensor:
    """The first `numel` uniforms of the stream, fp32, flat."""
    words = _stream_words(numel, stream, device)
    return _interleave([((r >> 9).to(torch.float32) + 0.5) * TWO_POW_M23 for r in words], numel)


def reference_normal(numel: int, stream: Stream, device) -> torch.Tensor:
    """The first `numel` normals of the stream, fp32, flat."""
    u = [((r >> 9).to(torch.float32) + 0.5) * TWO_POW_M23 for r in _stream_words(numel, stream, device)]
    two_pi = torch.tensor(TWO_PI_F32, dtype=torch.float32, device=device)
    out = []
    for a, b in ((u[0], u[1]), (u[2], u[3])):
        radius = torch.sqrt(-2.0 * torch.log(a))
        angle = two_pi * b
        out += [radius * torch.cos(angle), radius * torch.sin(angle)]
    return _interleave([out[0], out[1], out[2], out[3]], numel)


# ---------------------------------------------------------------------------------------------
# The kernel: fill a contiguous output with the stream's uniforms or normals.
# ---------------------------------------------------------------------------------------------
random_fill = Kernel("random_fill")


@random_fill.reference
def _(out: torch.Tensor, stream: Stream, normal: bool) -> None:
    draw = reference_normal if normal else reference_uniform
    out.copy_(draw(out.numel(), stream, out.device).view(out.shape))


@random_fill.compiled
def _(launch, out: torch.Tensor, stream: Stream, normal: bool) -> None:
    launch("random_fill", out.data_ptr(), out.numel(), _ext.dtype_code(out), *stream.ints(), normal)


@random_fill.triton
def _(out: torch.Tensor, stream: Stream, normal: bool) -> None:
    from genfast.triton.random import random_fill as fill

    fill(out, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor, normal)


# ---------------------------------------------------------------------------------------------
# The custom op: the backend is an argument, resolved in Python before the op (so torch.compile
# traces a constant and the op itself never consults global state).
# ---------------------------------------------------------------------------------------------
class RandomArgs(NamedTuple):
    size: list[int]
    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]
    normal: bool
    dtype: torch.dtype
    device: torch.device
    backend: str


def _random_impl(a: RandomArgs) -> torch.Tensor:
    size = _check_size(a.size)
    _check_float_dtype(a.dtype)
    stream = Stream(a.seed, a.offset, a.seed_tensor, a.offset_tensor).check(torch.device(a.device), "random")
    out = torch.empty(size, dtype=a.dtype, device=a.device)
    if out.numel():
        random_fill(a.backend, out, stream, a.normal)
    return out


random_op = custom_op("genfast::random", RandomArgs, "Tensor", _random_impl,
                      lambda a: torch.empty(a.size, dtype=a.dtype, device=a.device))


def _check_size(shape) -> list[int]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    try:
        shape = [_checks.integer(shape, "shape")]
    except TypeError:
        pass
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape: expected a sequence of ints, got {shape!r}")
    try:
        size = [_checks.integer(s, "shape") for s in shape]
    except TypeError:
        raise TypeError(f"shape: expected a sequence of ints, got {shape!r}") from None
    if any(s < 0 for s in size):
        raise ValueError(f"shape: sizes must be non-negative, got {tuple(size)}")
    return size


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    if dtype not in _ext.DTYPE_CODES:
        raise TypeError(f"dtype: genfast draws floating-point noise (float32, float16, bfloat16, float64), got {dtype}")


def _draw(shape, seed, offset, dtype, device, normal: bool) -> torch.Tensor:
    size = _check_size(shape)
    _check_float_dtype(dtype)
    # torch.empty(0).device rather than torch.get_default_device(): torch.compile traces the former
    device = torch.device(device) if device is not None else torch.empty(0).device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    stream = resolve_stream(seed, offset, device)
    backend = _backend.select_backend("random", device)
    return random_op(*RandomArgs(size, stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor, normal,
                                 dtype, device, backend))


def rand(shape: Sequence[int] | int, *, seed=None, offset=0, dtype: torch.dtype = torch.float32,
         device=None) -> torch.Tensor:
    """Uniforms in (0, 1) from genfast's stream: the same bits on every backend and device.

    seed: int in [0, 2**64), an int64 one-element tensor on `device` (read when the kernel runs, so a
    captured CUDA graph draws anew when the tensor is overwritten), or None (drawn from torch's
    default generator). offset: likewise, selects an independent sub-stream (default 0).
    """
    return _draw(shape, seed, offset, dtype, device, normal=False)


def randn(shape: Sequence[int] | int, *, seed=None, offset=0, dtype: torch.dtype = torch.float32,
          device=None) -> torch.Tensor:
    """Standard normals from genfast's stream (Box-Muller on the uniforms of `rand`)."""
    return _draw(shape, seed, offset, dtype, device, normal=True)
