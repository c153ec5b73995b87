"""Triton kernels of genfast.ops.gradient_penalty: interpolation with alpha drawn in-kernel, the
one-launch per-sample norm + penalty, and the penalty's elementwise backward.

Tensors are contiguous [B, row]; a program owns one (sample, chunk) tile, so the per-sample
values (alpha, norm) are scalars of the program and the row accesses are contiguous: 16-byte vectors
when a row is a whole number of them (the launchers pass the row length in vector units, ROW_VEC).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfast.triton.common import cast_rne, device_of, scaled_length
from genfast.triton.random import STREAM_WORDS, stream_key, stream_kwargs, stream_value

MODE_TWO_SIDED: tl.constexpr = tl.constexpr(0)
MODE_ONE_SIDED: tl.constexpr = tl.constexpr(1)
MODE_R1: tl.constexpr = tl.constexpr(2)


@triton.jit(do_not_specialize=STREAM_WORDS)
def _interpolate_kernel(real_ptr, fake_ptr, out_ptr, alpha_ptr, row_units, chunks, seed_lo, seed_hi, offset_lo,
                        offset_hi, seed_ptr, offset_ptr, ALPHA_FROM_PTR: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
                        OFFSET_FROM_PTR: tl.constexpr, ROW_VEC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // chunks
    c = pid - b * chunks
    row = scaled_length(row_units, ROW_VEC)  # ROW_VEC > 1: rows start 16-byte aligned (vector accesses)
    if ALPHA_FROM_PTR:
        alpha = tl.load(alpha_ptr + b).to(tl.float32)
    else:
        k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR,
                                    OFFSET_FROM_PTR)
        alpha = stream_value(k0, k1, c2, c3, b, False)  # element b of genfast.ops.rand([B])
    j = c * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = j < row
    idx = b * row + j
    r = tl.load(real_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(fake_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    x = alpha * r + (1.0 - alpha) * f
    tl.store(out_ptr + idx, cast_rne(x, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_penalty_kernel(g_ptr, partial_ptr, counter_ptr, norms_ptr, penalty_ptr, n_samples, row_units, chunks,
                         chunk_len, weight, center, MODE: tl.constexpr, ROW_VEC: tl.constexpr, BLOCK: tl.constexpr,
                         FIN_BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // chunks
    c = pid - b * chunks
    row = scaled_length(row_units, ROW_VEC)
    start = c * chunk_len
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, chunk_len, BLOCK):
        j = start + k + tl.arange(0, BLOCK).to(tl.int64)
        v = tl.load(g_ptr + b * row + j, mask=j < row, other=0.0).to(tl.float32)
        acc += v * v
    # Publish the partial at L2 (an atomic, ordered before the ticket by acq_rel), then take a ticket.
    # (the bits go through an int32 exchange: float exchange is missing from Triton's interpreter).
    partial_bits = tl.sum(acc, axis=0).to(tl.int32, bitcast=True)
    tl.atomic_xchg(partial_ptr.to(tl.pointer_type(tl.int32)) + pid, partial_bits, sem="relaxed")
    total_programs = n_samples * chunks
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if ticket == total_programs - 1:
        # The last program: add each sample's partials in chunk order (deterministic), finish.
        total = tl.zeros([FIN_BLOCK], dtype=tl.float32)
        for b0 in range(0, n_samples, FIN_BLOCK):
            bb = b0 + tl.arange(0, FIN_BLOCK).to(tl.int64)
            mb = bb < n_samples
            sq = tl.zeros([FIN_BLOCK], dtype=tl.float32)
            for cc in range(0, chunks):
                sq += tl.load(partial_ptr + bb * chunks + cc, mask=mb, other=0.0, volatile=True)
            n = tl.sqrt(sq)
            tl.store(norms_ptr + bb, n, mask=mb)
            if MODE == MODE_R1:
                term = sq
            else:
                d = n - center
                if MODE == MODE_ONE_SIDED:
                    d = tl.maximum(d, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.clamp_min
                term = d * d
            total += tl.where(mb, term, 0.0)
        mean = tl.sum(total, axis=0) / n_samples
        if MODE == MODE_R1:
            pen = 0.5 * weight * mean
        else:
            pen = weight * mean
        tl.store(penalty_ptr, cast_rne(pen, penalty_ptr.dtype.element_ty))
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed")  # zero again for the next launch


@triton.jit
def _norm_penalty_backward_kernel(go_ptr, g_ptr, norms_ptr, out_ptr, row_units, chunks, weight_over_b, center,
                                  MODE: tl.constexpr, ROW_VEC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // chunks
    c = pid - b * chunks
    row = scaled_length(row_units, ROW_VEC)
    n = tl.load(norms_ptr + b)
    go = tl.load(go_ptr).to(tl.float32)
    if MODE == MODE_R1:
        s = 1.0
    else:
        d = n - center
        if MODE == MODE_ONE_SIDED:
            d = tl.maximum(d, 0.0)
        safe_n = tl.where(n > 0.0, n, 1.0)
        s = tl.where(n > 0.0, 2.0 * d / safe_n, 0.0)  # zero row: 0, as torch's norm backward
    scale = go * weight_over_b * s
    j = c * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = j < row
    idx = b * row + j
    g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + idx, cast_rne(g * scale, out_ptr.dtype.element_ty), mask=mask)


def _block_for(row: int) -> int:
    return max(16, min(2048, triton.next_power_of_2(max(row, 1))))


def _row_vec(row: int, t: torch.Tensor) -> int:
    """Elements per 16-byte vector when every row of `t` starts 16-byte aligned, else 1 (the kernels
    take the row length in these units: see common.scaled_length)."""
    vec = 16 // t.element_size()
    return vec if row % vec == 0 else 1


def _num_warps(block: int, t: torch.Tensor) -> int:
    """Up to 4 warps, but at least one 16-byte vector per thread."""
    return max(1, min(4, block * t.element_size() // (16 * 32)))


def interpolate_launch(real: torch.Tensor, fake: torch.Tensor, out: torch.Tensor, alpha, seed: int, offset: int,
                       seed_tensor, offset_tensor) -> None:
    b = real.shape[0]
    row = real.numel() // b
    block = _block_for(row)
    chunks = triton.cdiv(row, block)
    with device_of(real):
        _interpolate_kernel[(b * chunks,)](
            real, fake, out, alpha if alpha is not None else real, row // _row_vec(row, real), chunks,
            **stream_kwargs(seed, offset, seed_tensor, offset_tensor, real),
            ALPHA_FROM_PTR=alpha is not None, ROW_VEC=_row_vec(row, real), BLOCK=block,
            num_warps=_num_warps(block, real),
        )


TARGET_PROGRAMS = 1024  # ~8 per SM on an H100: enough bytes in flight, few partials to add at the end


def norm_penalty_launch(grad: torch.Tensor, norms: torch.Tensor, penalty: torch.Tensor, counter: torch.Tensor,
                        weight: float, center: float, mode: int) -> None:
    b = grad.shape[0]
    row = grad.numel() // b
    block = _block_for(row)
    per_sample = max(1, TARGET_PROGRAMS // b)
    chunk_len = triton.cdiv(triton.cdiv(max(row, 1), per_sample), block) * block
    chunks = triton.cdiv(max(row, 1), chunk_len)
    with device_of(grad):
        partials = torch.empty(b * chunks, dtype=torch.float32, device=grad.device)
        _norm_penalty_kernel[(b * chunks,)](
            grad, partials, counter, norms, penalty, b, row // _row_vec(row, grad), chunks, chunk_len, weight, center,
            MODE=mode, ROW_VEC=_row_vec(row, grad), BLOCK=block, FIN_BLOCK=256,
            num_warps=_num_warps(block, grad),
        )


def norm_penalty_backward_launch(grad_out: torch.Tensor, grad: torch.Tensor, norms: torch.Tensor, out: torch.Tensor,
                                 weight: float, center: float, mode: int) -> None:
    b = grad.shape[0]
    row = grad.numel() // b
    block = _block_for(row)
    chunks = triton.cdiv(row, block)
    with device_of(grad):
        _norm_penalty_backward_kernel[(b * chunks,)](
            grad_out, grad, norms, out, row // _row_vec(row, grad), chunks, weight / b, center,
            MODE=mode, ROW_VEC=_row_vec(row, grad), BLOCK=block, num_warps=_num_warps(block, grad),
        )
