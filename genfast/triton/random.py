"""genfast's random stream in Triton: the Philox4x32-10 block, uniforms and Box-Muller normals.

`philox_block`, `uniform4` and `normal4` are jit helpers that the other Triton kernels (diffusion
step noise, WGAN-GP alpha, VAE eps) call, so every kernel draws the same stream as genfast.ops.randn.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfast.triton.common import cast_rne

PHILOX_M0: tl.constexpr = tl.constexpr(0xD2511F53)
PHILOX_M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)
TWO_PI_F32: tl.constexpr = tl.constexpr(6.28318548202514648438)  # fp32(2*pi), the same on every backend
TWO_POW_M23: tl.constexpr = tl.constexpr(1.1920928955078125e-07)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 counter words (c0..c3) with key (k0, k1)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = c0 * PHILOX_M0
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = c2 * PHILOX_M1
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def philox_block(seed, offset, q):
    """The four words of counters `q` (int64 tensor) of stream (seed, offset) (int64 scalars holding
    the bits of the unsigned values)."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = (q & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((q >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tl.zeros_like(c0)
    c2 = zero + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def word_to_uniform(r):
    """((r >> 9) + 0.5) * 2^-23: in (0, 1) and exact in fp32."""
    return ((r >> 9).to(tl.float32) + 0.5) * TWO_POW_M23


@triton.jit
def uniform4(seed, offset, q):
    r0, r1, r2, r3 = philox_block(seed, offset, q)
    return word_to_uniform(r0), word_to_uniform(r1), word_to_uniform(r2), word_to_uniform(r3)


@triton.jit
def normal4(seed, offset, q):
    u0, u1, u2, u3 = uniform4(seed, offset, q)
    rad01 = tl.sqrt(-2.0 * tl.log(u0))
    rad23 = tl.sqrt(-2.0 * tl.log(u2))
    a01 = TWO_PI_F32 * u1
    a23 = TWO_PI_F32 * u3
    return rad01 * tl.cos(a01), rad01 * tl.sin(a01), rad23 * tl.cos(a23), rad23 * tl.sin(a23)


@triton.jit
def stream_value(seed, offset, idx, NORMAL: tl.constexpr):
    """Element `idx` (int64 tensor, row-major element index) of the stream: recomputes its counter's
    block, so use it where elements of one counter are spread over threads (gathers, odd layouts)."""
    q = idx // 4
    k = idx % 4
    if NORMAL:
        v0, v1, v2, v3 = normal4(seed, offset, q)
    else:
        v0, v1, v2, v3 = uniform4(seed, offset, q)
    return tl.where(k == 0, v0, tl.where(k == 1, v1, tl.where(k == 2, v2, v3)))


@triton.jit
def load_stream_args(seed, offset, seed_ptr, offset_ptr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr):
    """Seed and offset as int64: the scalars given, or read from device tensors (graph replay)."""
    if SEED_FROM_PTR:
        s = tl.load(seed_ptr)
    else:
        s = seed.to(tl.int64)
    if OFFSET_FROM_PTR:
        o = tl.load(offset_ptr)
    else:
        o = offset.to(tl.int64)
    return s, o


@triton.jit
def _select4(k, v0, v1, v2, v3):
    return tl.where(k == 0, v0, tl.where(k == 1, v1, tl.where(k == 2, v2, v3)))


@triton.jit
def _random_fill_kernel(out_ptr, n, seed, offset, seed_ptr, offset_ptr, SEED_FROM_PTR: tl.constexpr,
                        OFFSET_FROM_PTR: tl.constexpr, NORMAL: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    # Each row of the [BLOCK_ROWS, 8] tile holds two consecutive Philox blocks (8 elements), so that
    # fp16/bf16 rows go out in one 16-byte store and fp32 rows in two.
    s, o = load_stream_args(seed, offset, seed_ptr, offset_ptr, SEED_FROM_PTR, OFFSET_FROM_PTR)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    if NORMAL:
        a0, a1, a2, a3 = normal4(s, o, 2 * rows)
        b0, b1, b2, b3 = normal4(s, o, 2 * rows + 1)
    else:
        a0, a1, a2, a3 = uniform4(s, o, 2 * rows)
        b0, b1, b2, b3 = uniform4(s, o, 2 * rows + 1)
    col = tl.arange(0, 8)[None, :]
    k = col % 4
    first = _select4(k, a0[:, None], a1[:, None], a2[:, None], a3[:, None])
    second = _select4(k, b0[:, None], b1[:, None], b2[:, None], b3[:, None])
    vals = tl.where(col < 4, first, second)
    idx = rows[:, None] * 8 + col
    tl.store(out_ptr + idx, cast_rne(vals, out_ptr.dtype.element_ty), mask=idx < n)


def random_fill(out: torch.Tensor, seed: int, offset: int, seed_tensor: torch.Tensor | None,
                offset_tensor: torch.Tensor | None, normal: bool, block_rows: int = 256) -> None:
    """Fill contiguous `out` with the stream. seed/offset: signed-int64 bit patterns of the u64 values."""
    n = out.numel()
    if n == 0:
        return
    grid = (triton.cdiv(triton.cdiv(n, 8), block_rows),)
    _random_fill_kernel[grid](
        out, n, seed, offset,
        seed_tensor if seed_tensor is not None else out,
        offset_tensor if offset_tensor is not None else out,
        SEED_FROM_PTR=seed_tensor is not None, OFFSET_FROM_PTR=offset_tensor is not None,
        NORMAL=normal, BLOCK_ROWS=block_rows, num_warps=4,
    )
