"""Triton kernel of genfast.ops.ddim_step / ddpm_step (the math of kernels/diffusion.cuh).

Each program owns BLOCK_R rows of VEC = 4 * CPR consecutive elements (CPR = Philox counters per row: 1
for fp32, 2 for fp16/bf16, so every row is one 16-byte access). A row draws its noise with CPR Philox
calls, each giving the four normals of elements 4q..4q+3 (genfast's stream), so noise costs one Philox
call per four elements. Alphas come as scalars (host floats), from a 0-dim device tensor or per sample;
the coefficients are computed in the kernel (no host sync, no extra launch).

Every program but the last covers a whole block and accesses memory unmasked, so the bulk of any
tensor moves in 16-byte accesses whatever its size (Triton vectorizes a masked access only when it
can prove the mask constant per vector). Per-sample values (alphas, threshold bounds, the learned
variance's half of the model output) need the sample index b = i // inner: it costs one scalar
division per program and an fp32 estimate per element (`_sample_of`), or per row of VEC elements
when inner % VEC == 0 -- then the launcher passes inner in units of VEC (`inner_units`), which also
tells the compiler that the rows of a [B, 2, inner] model output start 16-byte aligned.
"""
from __future__ import annotations

import triton
import triton.language as tl

from genfast.triton.common import device_of, load_tile, scaled_length, store_tile
from genfast.triton.random import STREAM_WORDS, normal4, stream_key, stream_kwargs


@triton.jit
def _sqrt(v):
    return tl.sqrt(v)


@triton.jit
def _clamp_nan(v, lo, hi):
    # torch.clamp: max with lo, then min with hi (lo > hi gives hi everywhere); NaN stays NaN
    t = tl.where(v < lo, lo, v)
    return tl.where(t > hi, hi, t)


@triton.jit
def _load_alpha(value, ptr, b, mask, full, MODE: tl.constexpr):
    # MODE 0: the scalar argument; 1: a 0-dim device tensor; 2: per sample [B]
    if MODE == 0:
        a = value
    elif MODE == 1:
        a = tl.load(ptr).to(tl.float32)
    else:
        a = load_tile(ptr + b, mask, full, 0.5).to(tl.float32)
    return a


@triton.jit
def _sample_of(idx, start, inner, inv_inner):
    """idx // inner without a division per element: one scalar division per program (the sample b0 of
    the program's first element), then, per element, an fp32 estimate of the quotient of the rest
    (< inner + BLOCK, so the estimate is off by at most one) and one correction step."""
    b0 = start // inner
    rest = idx - b0 * inner
    q = (rest.to(tl.float32) * inv_inner).to(tl.int64)
    r = rest - q * inner
    q = tl.where(r < 0, q - 1, tl.where(r >= inner, q + 1, q))
    return b0 + q


@triton.jit(do_not_specialize=STREAM_WORDS)
def _diffusion_step_kernel(
    out_ptr, x0_ptr, sample_ptr, model_ptr, cond_ptr, noise_ptr, at_ptr, ap_ptr, lo_ptr, hi_ptr,
    n, inner_units, inv_inner, alpha_t, alpha_prev, eta, guidance_scale, clip_range, thresh_weight, thresh_max,
    seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr,
    KIND: tl.constexpr, PRED: tl.constexpr, VT: tl.constexpr, NOISE_MODE: tl.constexpr, NOISE_SRC: tl.constexpr,
    AT_MODE: tl.constexpr, AP_MODE: tl.constexpr, GUIDANCE: tl.constexpr, LEARNED: tl.constexpr,
    CLIP: tl.constexpr, THRESH: tl.constexpr, USE_CLIPPED: tl.constexpr, WRITE_X0: tl.constexpr,
    ABS_X0: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr,
    INNER_VEC: tl.constexpr, CPR: tl.constexpr, BLOCK_R: tl.constexpr,
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
    PER_SAMPLE: tl.constexpr = AT_MODE == 2 or AP_MODE == 2 or THRESH or LEARNED
    if PER_SAMPLE:
        if INNER_VEC:
            # inner % VEC == 0 (the launcher checked): a row of VEC elements lies in one sample, so the
            # sample index and its coefficients are computed once per row, and [B, 2, inner] rows align.
            inner = scaled_length(inner_units, VEC)
            b = _sample_of(row * VEC, start, inner, inv_inner)[:, None]
            b_mask = (row * VEC < n)[:, None]
        else:
            inner = scaled_length(inner_units, 1)
            b = _sample_of(idx, start, inner, inv_inner)
            b_mask = mask
    else:
        b = 0
        b_mask = mask

    x = load_tile(sample_ptr + idx, mask, full, 0.0).to(tl.float32)
    if LEARNED:
        midx = idx + b * inner  # b * 2 * inner + (idx - b * inner)
    else:
        midx = idx
    m = load_tile(model_ptr + midx, mask, full, 0.0).to(tl.float32)
    if GUIDANCE:
        c = load_tile(cond_ptr + midx, mask, full, 0.0).to(tl.float32)
        m = m + guidance_scale * (c - m)

    # per-sample coefficients (diffusers' expressions, fp32)
    a_t = _load_alpha(alpha_t, at_ptr, b, b_mask, full, AT_MODE)
    a_p = _load_alpha(alpha_prev, ap_ptr, b, b_mask, full, AP_MODE)
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
        store_tile(out_ptr + idx, tl.abs(x0), mask, full)
    else:
        if THRESH:
            lo = load_tile(lo_ptr + b, b_mask, full, 1.0)
            hi = load_tile(hi_ptr + b, b_mask, full, 1.0)
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
                    v = load_tile(cond_ptr + midx + inner, mask, full, 1.0).to(tl.float32)
                else:
                    v = load_tile(model_ptr + midx + inner, mask, full, 1.0).to(tl.float32)
                if VT == 4:
                    std = _sqrt(v)
                else:
                    frac = (v + 1.0) / 2.0
                    std = tl.exp(0.5 * (frac * tl.log(cur_beta) + (1.0 - frac) * tl.log(var)))
            std = std * noise_mask

        if NOISE_SRC == 1:
            z = load_tile(noise_ptr + idx, mask, full, 0.0).to(tl.float32)
            prev = prev + std * z
        elif NOISE_SRC == 2:
            k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR,
                                        OFFSET_FROM_PTR)
            z = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
            for cpr in tl.static_range(CPR):
                n0, n1, n2, n3 = normal4(k0, k1, c2, c3, row * CPR + cpr)
                z = tl.where(col[None, :] == 4 * cpr + 0, n0[:, None], z)
                z = tl.where(col[None, :] == 4 * cpr + 1, n1[:, None], z)
                z = tl.where(col[None, :] == 4 * cpr + 2, n2[:, None], z)
                z = tl.where(col[None, :] == 4 * cpr + 3, n3[:, None], z)
            prev = prev + std * z

        store_tile(out_ptr + idx, prev.to(out_ptr.dtype.element_ty), mask, full)
        if WRITE_X0:
            store_tile(x0_ptr + idx, x0c.to(x0_ptr.dtype.element_ty), mask, full)


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
    from_stream = src == 2
    thresh_on = thresh is not None and not mode_abs_x0
    per_sample = (_alpha_mode(alpha_t_tensor) == 2 or _alpha_mode(alpha_prev_tensor) == 2 or thresh_on or learned)
    inner_vec = per_sample and inner % (4 * cpr) == 0  # then the kernel takes inner in rows of 4 * cpr
    with device_of(sample):
        _diffusion_step_kernel[grid](
            out, out_x0 if out_x0 is not None else out, sample, model, cond if cond is not None else model,
            noise if src == 1 else sample,
            alpha_t_tensor if alpha_t_tensor is not None else sample,
            alpha_prev_tensor if alpha_prev_tensor is not None else sample,
            thresh[0] if thresh else sample, thresh[1] if thresh else sample,
            n, inner // (4 * cpr) if inner_vec else inner, 1.0 / inner, float(alpha_t), float(alpha_prev),
            float(eta), float(guidance_scale), float(clip_range or 0.0), float(threshold_weight),
            float(threshold_max),
            **stream_kwargs(stream.seed if from_stream else 0, stream.offset if from_stream else 0,
                            stream.seed_tensor if from_stream else None, stream.offset_tensor if from_stream else None,
                            sample),
            KIND=kind, PRED=prediction_type, VT=variance_type, NOISE_MODE=noise_mode, NOISE_SRC=src,
            AT_MODE=_alpha_mode(alpha_t_tensor), AP_MODE=_alpha_mode(alpha_prev_tensor), GUIDANCE=cond is not None,
            LEARNED=learned, CLIP=clip_range is not None, THRESH=thresh_on,
            USE_CLIPPED=bool(use_clipped) and kind == 0, WRITE_X0=out_x0 is not None, ABS_X0=bool(mode_abs_x0),
            INNER_VEC=inner_vec, CPR=cpr, BLOCK_R=block_r, num_warps=4,
        )
