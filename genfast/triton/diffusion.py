"""Triton kernel of genfast.ops.ddim_step / ddpm_step (the math of kernels/diffusion.cuh).

Each program owns BLOCK_R rows of VEC = 4 * CPR consecutive elements (CPR = Philox counters per row: 1
for fp32, 2 for fp16/bf16, so every row is one 16-byte access). A row draws its noise with CPR Philox
calls, each giving the four normals of elements 4q..4q+3 (genfast's stream), so noise costs one Philox
call per four elements. Alphas come as scalars (host floats), from a 0-dim device tensor or per sample;
the coefficients are computed in the kernel (no host sync, no extra launch).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfast.triton.random import load_stream_args, normal4


@triton.jit
def _sqrt(v):
    return tl.sqrt(v)


@triton.jit
def _clamp_nan(v, lo, hi):
    return tl.where(v < lo, lo, tl.where(v > hi, hi, v))


@triton.jit
def _load_alpha(value, ptr, b, mask, MODE: tl.constexpr):
    # MODE 0: the scalar argument; 1: a 0-dim device tensor; 2: per sample [B]
    if MODE == 0:
        a = value
    elif MODE == 1:
        a = tl.load(ptr).to(tl.float32)
    else:
        a = tl.load(ptr + b, mask=mask, other=0.5).to(tl.float32)
    return a


@triton.jit
def _diffusion_step_kernel(
    out_ptr, x0_ptr, sample_ptr, model_ptr, cond_ptr, noise_ptr, at_ptr, ap_ptr, lo_ptr, hi_ptr,
    n, inner, alpha_t, alpha_prev, eta, guidance_scale, clip_range, thresh_weight, thresh_max,
    seed, offset, seed_ptr, offset_ptr,
    KIND: tl.constexpr, PRED: tl.constexpr, VT: tl.constexpr, NOISE_MODE: tl.constexpr, NOISE_SRC: tl.constexpr,
    AT_MODE: tl.constexpr, AP_MODE: tl.constexpr, GUIDANCE: tl.constexpr, LEARNED: tl.constexpr,
    CLIP: tl.constexpr, THRESH: tl.constexpr, USE_CLIPPED: tl.constexpr, WRITE_X0: tl.constexpr,
    ABS_X0: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr,
    CPR: tl.constexpr, BLOCK_R: tl.constexpr,
):
    VEC: tl.constexpr = 4 * CPR
    pid = tl.program_id(0).to(tl.int64)
    row = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    col = tl.arange(0, VEC)
    idx = row[:, None] * VEC + col[None, :]
    mask = idx < n
    PER_SAMPLE: tl.constexpr = AT_MODE == 2 or AP_MODE == 2 or THRESH or LEARNED
    if PER_SAMPLE:
        b = idx // inner
    else:
        b = 0

    x = tl.load(sample_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if LEARNED:
        midx = idx + b * inner  # b * 2 * inner + (idx - b * inner)
    else:
        midx = idx
    m = tl.load(model_ptr + midx, mask=mask, other=0.0).to(tl.float32)
    if GUIDANCE:
        c = tl.load(cond_ptr + midx, mask=mask, other=0.0).to(tl.float32)
        m = m + guidance_scale * (c - m)

    # per-sample coefficients (diffusers' expressions, fp32)
    a_t = _load_alpha(alpha_t, at_ptr, b, mask, AT_MODE)
    a_p = _load_alpha(alpha_prev, ap_ptr, b, mask, AP_MODE)
    beta_t = 1.0 - a_t
    sa = _sqrt(a_t)
    sb = _sqrt(beta_t)
    sap = _sqrt(a_p)

    if PRED == 0:
        x0 = (x - sb * m) / sa
    elif PRED == 1:
        x0 = m
    else:
        x0 = sa * x - sb * m

    if ABS_X0:
        tl.store(out_ptr + idx, tl.abs(x0), mask=mask)
    else:
        if THRESH:
            lo = tl.load(lo_ptr + b, mask=mask, other=1.0)
            hi = tl.load(hi_ptr + b, mask=mask, other=1.0)
            q = tl.where(thresh_weight < 0.5, lo + thresh_weight * (hi - lo), hi - (hi - lo) * (1.0 - thresh_weight))
            s = _clamp_nan(q, 1.0, thresh_max)
            x0c = _clamp_nan(x0, -s, s) / s
        elif CLIP:
            x0c = _clamp_nan(x0, -clip_range, clip_range)
        else:
            x0c = x0

        if NOISE_MODE == 2:
            noise_mask = tl.where(a_p < 1.0, 1.0, 0.0)
        else:
            noise_mask = 1.0
        if KIND == 0:
            var = (1.0 - a_p) / beta_t * (1.0 - a_t / a_p)
            std = eta * _sqrt(var)
            direction = _sqrt(1.0 - a_p - std * std)
            if USE_CLIPPED:
                eps = (x - sa * x0c) / sb
            elif PRED == 0:
                eps = m
            elif PRED == 1:
                eps = (x - sa * x0) / sb
            else:
                eps = sa * m + sb * x
            prev = sap * x0c + direction * eps
        else:
            cur_alpha = a_t / a_p
            cur_beta = 1.0 - cur_alpha
            c_x0 = (sap * cur_beta) / beta_t
            c_x = _sqrt(cur_alpha) * (1.0 - a_p) / beta_t
            prev = c_x0 * x0c + c_x * x
            var = (1.0 - a_p) / beta_t * cur_beta
            var = tl.where(var < 1e-20, 1e-20, var)
            if VT == 0:
                std = _sqrt(var)
            elif VT == 1:
                std = tl.exp(0.5 * tl.log(var))
            elif VT == 2 or VT == 3:
                std = _sqrt(cur_beta)
            else:
                if GUIDANCE:
                    v = tl.load(cond_ptr + midx + inner, mask=mask, other=1.0).to(tl.float32)
                else:
                    v = tl.load(model_ptr + midx + inner, mask=mask, other=1.0).to(tl.float32)
                if VT == 4:
                    std = _sqrt(v)
                else:
                    frac = (v + 1.0) / 2.0
                    std = tl.exp(0.5 * (frac * tl.log(cur_beta) + (1.0 - frac) * tl.log(var)))
            std = std * noise_mask

        if NOISE_SRC == 1:
            z = tl.load(noise_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            prev = prev + std * z
        elif NOISE_SRC == 2:
            s_seed, s_off = load_stream_args(seed, offset, seed_ptr, offset_ptr, SEED_FROM_PTR, OFFSET_FROM_PTR)
            z = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
            for cpr in tl.static_range(CPR):
                n0, n1, n2, n3 = normal4(s_seed, s_off, row * CPR + cpr)
                z = tl.where(col[None, :] == 4 * cpr + 0, n0[:, None], z)
                z = tl.where(col[None, :] == 4 * cpr + 1, n1[:, None], z)
                z = tl.where(col[None, :] == 4 * cpr + 2, n2[:, None], z)
                z = tl.where(col[None, :] == 4 * cpr + 3, n3[:, None], z)
            prev = prev + std * z

        tl.store(out_ptr + idx, prev.to(out_ptr.dtype.element_ty), mask=mask)
        if WRITE_X0:
            tl.store(x0_ptr + idx, x0c.to(x0_ptr.dtype.element_ty), mask=mask)


def _alpha_mode(t) -> int:
    if t is None:
        return 0
    return 2 if t.dim() == 1 else 1


def diffusion_step_triton(kind, out, out_x0, sample, model, cond, guidance_scale, alpha_t, alpha_prev, alpha_t_tensor,
                          alpha_prev_tensor, eta, prediction_type, clip_range, thresh, threshold_weight,
                          threshold_max, use_clipped, variance_type, noise_mode, noise_src, noise, stream,
                          mode_abs_x0=False):
    n = sample.numel()
    if n == 0:
        return
    B = sample.shape[0]
    inner = n // B
    cpr = 1 if sample.element_size() >= 4 else 2
    block_r = 256 // cpr
    grid = (triton.cdiv(n, block_r * 4 * cpr),)
    use_noise = (not mode_abs_x0) and noise_mode != 0 and noise_src != 0
    src = noise_src if use_noise else 0
    learned = kind == 1 and variance_type in (4, 5)
    _diffusion_step_kernel[grid](
        out, out_x0 if out_x0 is not None else out, sample, model, cond if cond is not None else model,
        noise if src == 1 else sample,
        alpha_t_tensor if alpha_t_tensor is not None else sample,
        alpha_prev_tensor if alpha_prev_tensor is not None else sample,
        thresh[0] if thresh else sample, thresh[1] if thresh else sample,
        n, inner, float(alpha_t), float(alpha_prev), float(eta), float(guidance_scale), float(clip_range or 0.0),
        float(threshold_weight), float(threshold_max),
        stream.seed if src == 2 else 0, stream.offset if src == 2 else 0,
        stream.seed_tensor if src == 2 and stream.seed_tensor is not None else sample,
        stream.offset_tensor if src == 2 and stream.offset_tensor is not None else sample,
        KIND=kind, PRED=prediction_type, VT=variance_type, NOISE_MODE=noise_mode, NOISE_SRC=src,
        AT_MODE=_alpha_mode(alpha_t_tensor), AP_MODE=_alpha_mode(alpha_prev_tensor), GUIDANCE=cond is not None,
        LEARNED=learned, CLIP=clip_range is not None, THRESH=thresh is not None and not mode_abs_x0,
        USE_CLIPPED=bool(use_clipped) and kind == 0, WRITE_X0=out_x0 is not None, ABS_X0=bool(mode_abs_x0),
        SEED_FROM_PTR=src == 2 and stream.seed_tensor is not None,
        OFFSET_FROM_PTR=src == 2 and stream.offset_tensor is not None,
        CPR=cpr, BLOCK_R=block_r, num_warps=4,
    )
