"""genfast's random stream in Triton: the Philox4x32-10 block, uniforms and Box-Muller normals.

`philox_block`, `uniform4` and `normal4` are jit helpers that the other Triton kernels (diffusion
step noise, WGAN-GP alpha, VAE eps) call, so every kernel draws the same stream as genfast.ops.randn.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfast.triton.common import cast_rne, device_of, store_tile

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
def philox_block(k0, k1, c2, c3, q):
    """The four words of counters `q` (int64 tensor) of the stream whose key is (k0, k1) and whose
    offset words are (c2, c3) (uint32 scalars, from `stream_key`)."""
    c0 = (q & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((q >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tl.zeros_like(c0)
    return philox4x32_10(c0, c1, zero + c2, zero + c3, k0, k1)


@triton.jit
def word_to_uniform(r):
    """((r >> 9) + 0.5) * 2^-23: in (0, 1) and exact in fp32."""
    return ((r >> 9).to(tl.float32) + 0.5) * TWO_POW_M23


@triton.jit
def uniform4(k0, k1, c2, c3, q):
    r0, r1, r2, r3 = philox_block(k0, k1, c2, c3, q)
    return word_to_uniform(r0), word_to_uniform(r1), word_to_uniform(r2), word_to_uniform(r3)


@triton.jit
def box_muller(ua, ub):
    """The pair of normals of uniforms (ua, ub): sqrt(-2 ln ua) * (cos, sin)(2 pi ub)."""
    rad = tl.sqrt(-2.0 * tl.log(ua))
    angle = TWO_PI_F32 * ub
    return rad * tl.cos(angle), rad * tl.sin(angle)


@triton.jit
def normal4(k0, k1, c2, c3, q):
    u0, u1, u2, u3 = uniform4(k0, k1, c2, c3, q)
    n0, n1 = box_muller(u0, u1)
    n2, n3 = box_muller(u2, u3)
    return n0, n1, n2, n3


@triton.jit
def stream_value(k0, k1, c2, c3, idx, NORMAL: tl.constexpr):
    """Element `idx` (int64 tensor, row-major element index) of the stream, for layouts where the four
    elements of one counter are spread over threads (gathers, odd row lengths). Costs one Philox call per
    element, but only one Box-Muller pair (the one holding the element), so that a tile of these keeps
    few values live."""
    q = idx >> 2
    k = (idx & 3).to(tl.int32)
    r0, r1, r2, r3 = philox_block(k0, k1, c2, c3, q)
    if NORMAL:
        # element 4q + k is n_k: the pair (u0, u1) for k < 2, (u2, u3) otherwise; cos for even k.
        ua = word_to_uniform(tl.where(k < 2, r0, r2))
        ub = word_to_uniform(tl.where(k < 2, r1, r3))
        rad = tl.sqrt(-2.0 * tl.log(ua))
        angle = TWO_PI_F32 * ub
        v = rad * tl.where((k & 1) == 0, tl.cos(angle), tl.sin(angle))
    else:
        v = word_to_uniform(tl.where(k == 0, r0, tl.where(k == 1, r1, tl.where(k == 2, r2, r3))))
    return v


@triton.jit
def stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR: tl.constexpr,
               OFFSET_FROM_PTR: tl.constexpr):
    """(k0, k1, c2, c3): the Philox key words and the offset's counter words (uint32 scalars), from the
    int32 bit patterns the launchers pass (`stream_words`) or from int64 device tensors (graph replay)."""
    if SEED_FROM_PTR:
        s = tl.load(seed_ptr)
        k0 = (s & 0xFFFFFFFF).to(tl.uint32)
        k1 = ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    else:
        k0 = seed_lo.to(tl.uint32, bitcast=True)
        k1 = seed_hi.to(tl.uint32, bitcast=True)
    if OFFSET_FROM_PTR:
        o = tl.load(offset_ptr)
        c2 = (o & 0xFFFFFFFF).to(tl.uint32)
        c3 = ((o >> 32) & 0xFFFFFFFF).to(tl.uint32)
    else:
        c2 = offset_lo.to(tl.uint32, bitcast=True)
        c3 = offset_hi.to(tl.uint32, bitcast=True)
    return k0, k1, c2, c3


def _int32_bits(word: int) -> int:
    return word - (1 << 32) if word >= (1 << 31) else word


def stream_words(value: int) -> tuple[int, int]:
    """(lo, hi) 32-bit words of a stream value (a seed or offset as the ops carry it: the signed int64
    with the bits of the u64), each as the int32 with the same bits.

    The kernels take these four words instead of two 64-bit ints because Triton types a Python int
    argument by its value: i32 in [-2^31, 2^31), i64 above, u64 from 2^63, a constant if it equals 1. Its
    interpreter even stores [2^31, 2^32) as a uint32 array behind an i64 type, whose high word then came
    out as 0xFFFFFFFF: the stream differed for such seeds. Words in int32 range are i32 on every version,
    in the interpreter too, and the kernels mark them do_not_specialize (a word equal to 1 must not
    become a constant; a seed never deserves its own compile)."""
    u = value & 0xFFFFFFFFFFFFFFFF
    return _int32_bits(u & 0xFFFFFFFF), _int32_bits(u >> 32)


def stream_kwargs(seed: int, offset: int, seed_tensor, offset_tensor, dummy) -> dict:
    """The stream arguments of every noisy kernel (seed_lo .. OFFSET_FROM_PTR) for a launcher call."""
    seed_lo, seed_hi = stream_words(seed if seed_tensor is None else 0)
    offset_lo, offset_hi = stream_words(offset if offset_tensor is None else 0)
    return dict(seed_lo=seed_lo, seed_hi=seed_hi, offset_lo=offset_lo, offset_hi=offset_hi,
                seed_ptr=seed_tensor if seed_tensor is not None else dummy,
                offset_ptr=offset_tensor if offset_tensor is not None else dummy,
                SEED_FROM_PTR=seed_tensor is not None, OFFSET_FROM_PTR=offset_tensor is not None)


STREAM_WORDS = ["seed_lo", "seed_hi", "offset_lo", "offset_hi"]  # the do_not_specialize list of noisy kernels


@triton.jit
def _select4(k, v0, v1, v2, v3):
    return tl.where(k == 0, v0, tl.where(k == 1, v1, tl.where(k == 2, v2, v3)))


@triton.jit(do_not_specialize=STREAM_WORDS)
def _random_fill_kernel(out_ptr, n, seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr,
                        SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr, NORMAL: tl.constexpr,
                        BLOCK_ROWS: tl.constexpr):
    # Each row of the [BLOCK_ROWS, 8] tile holds two consecutive Philox blocks (8 elements), so that
    # fp16/bf16 rows go out in one 16-byte store and fp32 rows in two; at 128 rows on 4 warps a thread
    # owns one row (two rows spilled registers in fp32 normals). Programs wholly inside the
    # tensor store unmasked (16-byte stores whatever n is); only the last one masks.
    k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR,
                                OFFSET_FROM_PTR)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    if NORMAL:
        a0, a1, a2, a3 = normal4(k0, k1, c2, c3, 2 * rows)
        b0, b1, b2, b3 = normal4(k0, k1, c2, c3, 2 * rows + 1)
    else:
        a0, a1, a2, a3 = uniform4(k0, k1, c2, c3, 2 * rows)
        b0, b1, b2, b3 = uniform4(k0, k1, c2, c3, 2 * rows + 1)
    col = tl.arange(0, 8)[None, :]
    k = col % 4
    first = _select4(k, a0[:, None], a1[:, None], a2[:, None], a3[:, None])
    second = _select4(k, b0[:, None], b1[:, None], b2[:, None], b3[:, None])
    vals = cast_rne(tl.where(col < 4, first, second), out_ptr.dtype.element_ty)
    idx = rows[:, None] * 8 + col
    store_tile(out_ptr + idx, vals, idx < n, (pid + 1) * (BLOCK_ROWS * 8) <= n)


def random_fill(out: torch.Tensor, seed: int, offset: int, seed_tensor: torch.Tensor | None,
                offset_tensor: torch.Tensor | None, normal: bool, block_rows: int = 128) -> None:
    """Fill contiguous `out` with the stream. seed/offset: signed-int64 bit patterns of the u64 values."""
    n = out.numel()
    if n == 0:
        return
    grid = (triton.cdiv(triton.cdiv(n, 8), block_rows),)
    with device_of(out):
        _random_fill_kernel[grid](
            out, n, **stream_kwargs(seed, offset, seed_tensor, offset_tensor, out),
            NORMAL=normal, BLOCK_ROWS=block_rows, num_warps=4,
        )
