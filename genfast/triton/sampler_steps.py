"""Triton kernel of genfast.ops' sampler steps (the math of kernels/sampler_steps.cuh).

Each program owns BLOCK_R rows of VEC = 4 * CPR consecutive elements (CPR = Philox counters per row: 1
for fp32, 2 for fp16/bf16, so a row is one 16-byte access). A row draws its noise with CPR Philox calls
(genfast's stream: one call per four elements). The coefficients arrive as scalars computed on the host.
Every program but the last covers a whole block and accesses memory unmasked (16-byte accesses for any
size); the seed and offset travel as int32 words that the kernel never specializes on. The sample index
(thresholding scale, a learned-variance output's batch stride) costs one scalar division per program and
an fp32 estimate per element (genfast.triton.diffusion's `_sample_of`).
"""
from __future__ import annotations

import triton
import triton.language as tl

from genfast.triton.common import cast_rne, device_of, load_tile, store_tile
from genfast.triton.diffusion import _sample_of
from genfast.triton.random import STREAM_WORDS, normal4, stream_key, stream_kwargs


@triton.jit
def _clamp_torch(v, lo, hi):
    # torch.clamp(v, lo, hi) = min(max(v, lo), hi), NaN kept
    a = tl.where(v < lo, lo, v)
    a = tl.where(a > hi, hi, a)
    return tl.where(v != v, v, a)


@triton.jit(do_not_specialize=STREAM_WORDS)
def _sampler_step_kernel(
    out_ptr, aux_ptr, sample_ptr, model_ptr, cond_ptr, h1_ptr, h2_ptr, noise_ptr, lo_ptr, hi_ptr,
    n, inner, inv_inner, model_stride, guidance_scale, pre_noise, conv_x, conv_m, thresh_weight, thresh_max,
    to_x0_x, to_x0_c, from_x0_x, from_x0_c, c_x, c_0, c_1, c_2, c_noise,
    seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr,
    HISTORY: tl.constexpr, GUIDANCE: tl.constexpr, STRIDED: tl.constexpr, THRESH: tl.constexpr,
    NOISE_SRC: tl.constexpr, WRITE_AUX: tl.constexpr, ABS_X0: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
    OFFSET_FROM_PTR: tl.constexpr, CPR: tl.constexpr, BLOCK_R: tl.constexpr,
):
    VEC: tl.constexpr = 4 * CPR
    BLOCK: tl.constexpr = BLOCK_R * VEC
    pid = tl.program_id(0).to(tl.int64)
    start = pid * BLOCK
    row = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    col = tl.arange(0, VEC)
    idx = row[:, None] * VEC + col[None, :]
    mask = idx < n
    full = start + BLOCK <= n  # every program but the last: unmasked, 16-byte accesses for any n
    if STRIDED or THRESH:
        b = _sample_of(idx, start, inner, inv_inner)
    else:
        b = 0
    if STRIDED:
        midx = b * model_stride + (idx - b * inner)
    else:
        midx = idx

    x = load_tile(sample_ptr + idx, mask, full, 0.0).to(tl.float32)
    m = load_tile(model_ptr + midx, mask, full, 0.0).to(tl.float32)
    if GUIDANCE:
        c = load_tile(cond_ptr + midx, mask, full, 0.0).to(tl.float32)
        m = m + guidance_scale * (c - m)

    z = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
    if NOISE_SRC == 1:
        z = load_tile(noise_ptr + idx, mask, full, 0.0).to(tl.float32)
    elif NOISE_SRC == 2:
        k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR,
                                    OFFSET_FROM_PTR)
        for cpr in tl.static_range(CPR):
            n0, n1, n2, n3 = normal4(k0, k1, c2, c3, row * CPR + cpr)
            z = tl.where(col[None, :] == 4 * cpr + 0, n0[:, None], z)
            z = tl.where(col[None, :] == 4 * cpr + 1, n1[:, None], z)
            z = tl.where(col[None, :] == 4 * cpr + 2, n2[:, None], z)
            z = tl.where(col[None, :] == 4 * cpr + 3, n3[:, None], z)

    xs = x + pre_noise * z
    conv = conv_x * xs + conv_m * m
    if ABS_X0:
        store_tile(out_ptr + idx, tl.abs(to_x0_x * xs + to_x0_c * conv), mask, full)
    else:
        if THRESH:
            lo = load_tile(lo_ptr + b, mask, full, 1.0)
            hi = load_tile(hi_ptr + b, mask, full, 1.0)
            q = tl.where(thresh_weight < 0.5, lo + thresh_weight * (hi - lo), hi - (hi - lo) * (1.0 - thresh_weight))
            s = _clamp_torch(q, 1.0, thresh_max)
            x0 = to_x0_x * xs + to_x0_c * conv
            x0 = _clamp_torch(x0, -s, s) / s
            conv = from_x0_x * xs + from_x0_c * x0
        prev = c_x * xs + c_0 * conv
        if HISTORY >= 1:
            h1 = load_tile(h1_ptr + idx, mask, full, 0.0).to(tl.float32)
            prev = prev + c_1 * (conv - h1)
            if HISTORY >= 2:
                h2 = load_tile(h2_ptr + idx, mask, full, 0.0).to(tl.float32)
                prev = prev + c_2 * (h1 - h2)
        prev = prev + c_noise * z
        store_tile(out_ptr + idx, cast_rne(prev, out_ptr.dtype.element_ty), mask, full)
        if WRITE_AUX:
            store_tile(aux_ptr + idx, cast_rne(conv, aux_ptr.dtype.element_ty), mask, full)


def sampler_step_triton(a, out, out_aux, thresh, threshold_weight, abs_x0=False) -> None:
    """Launch the kernel for genfast.ops.sampler_steps.SamplerStepArgs `a` (contiguous tensors)."""
    sample = a.sample
    n = sample.numel()
    if n == 0:
        return
    B = sample.shape[0]
    inner = n // B
    cpr = 1 if sample.element_size() >= 4 else 2
    block_r = 256 // cpr
    grid = (triton.cdiv(n, block_r * 4 * cpr),)
    stream = a.stream
    src = a.noise_src
    from_stream = src == 2
    with device_of(sample):
        _sampler_step_kernel[grid](
            out, out_aux if out_aux is not None else out, sample, a.model_output,
            a.cond_output if a.cond_output is not None else a.model_output,
            a.history1 if a.history1 is not None else sample, a.history2 if a.history2 is not None else sample,
            a.noise if src == 1 else sample, thresh[0] if thresh else sample, thresh[1] if thresh else sample,
            n, inner, 1.0 / inner, a.model_stride, float(a.guidance_scale), float(a.pre_noise), float(a.conv_x),
            float(a.conv_m), float(threshold_weight), float(a.threshold_max), float(a.to_x0_x), float(a.to_x0_c),
            float(a.from_x0_x), float(a.from_x0_c), float(a.c_x), float(a.c_0), float(a.c_1), float(a.c_2),
            float(a.c_noise),
            **stream_kwargs(stream.seed if from_stream else 0, stream.offset if from_stream else 0,
                            stream.seed_tensor if from_stream else None, stream.offset_tensor if from_stream else None,
                            sample),
            HISTORY=a.history, GUIDANCE=a.cond_output is not None, STRIDED=a.model_stride != inner,
            THRESH=thresh is not None and not abs_x0, NOISE_SRC=src, WRITE_AUX=out_aux is not None and not abs_x0,
            ABS_X0=bool(abs_x0), CPR=cpr, BLOCK_R=block_r, num_warps=4,
        )
