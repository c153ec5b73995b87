"""Triton kernel of the backward of genfast.ops.ddim_step / ddpm_step (the math of
kernels/diffusion_backward.cuh).

One elementwise pass laid out as the forward's kernel (genfast/triton/diffusion.py): each program owns
BLOCK_R rows of VEC = 4 * CPR consecutive elements, one 16-byte access per row for every tensor read or
written. It reads the sample, the model output(s) and the incoming gradients, and writes the requested
gradients (sample, model output in its own layout, cond, noise). The noise is regenerated from the
stream (the forward's Philox counters) only where the gradient needs its values: the learned variance
types, whose std depends on the predicted variance. Dynamic thresholding and alpha gradients are not
here: genfast/ops/diffusion.py computes those by a vjp through the reference.
"""
from __future__ import annotations

import triton
import triton.language as tl

from genfast.triton.common import cast_rne, load_tile, store_tile
from genfast.triton.diffusion import _alpha_mode, _load_alpha, _sample_of, _sqrt
from genfast.triton.random import STREAM_WORDS, normal4, stream_key, stream_kwargs


@triton.jit(do_not_specialize=STREAM_WORDS)
def _diffusion_step_backward_kernel(
    gx_ptr, gm_ptr, gc_ptr, gz_ptr, gp_ptr, gx0_ptr, sample_ptr, model_ptr, cond_ptr, noise_ptr, at_ptr, ap_ptr,
    n, inner, alpha_t, alpha_prev, eta, guidance_scale, clip_range,
    seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr,
    KIND: tl.constexpr, PRED: tl.constexpr, VT: tl.constexpr, NOISE_MODE: tl.constexpr, WITH_NOISE: tl.constexpr,
    NEED_Z: tl.constexpr, NOISE_SRC: tl.constexpr, AT_MODE: tl.constexpr, AP_MODE: tl.constexpr,
    GUIDANCE: tl.constexpr, LEARNED: tl.constexpr, CLIP: tl.constexpr, USE_CLIPPED: tl.constexpr,
    HAS_GX0: tl.constexpr, WANT_X: tl.constexpr, WANT_M: tl.constexpr, WANT_Z: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr, CPR: tl.constexpr, BLOCK_R: tl.constexpr,
):
    VEC: tl.constexpr = 4 * CPR
    BLOCK: tl.constexpr = BLOCK_R * VEC
    pid = tl.program_id(0).to(tl.int64)
    row = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    col = tl.arange(0, VEC)
    idx = row[:, None] * VEC + col[None, :]
    mask = idx < n
    full = pid * BLOCK + BLOCK <= n  # every program but the last: unmasked, 16-byte accesses for any n
    PER_SAMPLE: tl.constexpr = AT_MODE == 2 or AP_MODE == 2 or LEARNED
    if PER_SAMPLE:  # idx // inner without a division per element (one per program)
        b = _sample_of(idx, pid * BLOCK_R * VEC, inner, 1.0 / inner.to(tl.float32))
    else:
        b = 0

    x = load_tile(sample_ptr + idx, mask, full, 0.0).to(tl.float32)
    gp = load_tile(gp_ptr + idx, mask, full, 0.0).to(tl.float32)
    if HAS_GX0:
        gx0 = load_tile(gx0_ptr + idx, mask, full, 0.0).to(tl.float32)
    else:
        gx0 = 0.0
    if LEARNED:
        midx = idx + b * inner  # b * 2 * inner + (idx - b * inner)
    else:
        midx = idx
    m = load_tile(model_ptr + midx, mask, full, 0.0).to(tl.float32)
    if GUIDANCE:
        c = load_tile(cond_ptr + midx, mask, full, 0.0).to(tl.float32)
        m = m + guidance_scale * (c - m)

    a_t = _load_alpha(alpha_t, at_ptr, b, mask, full, AT_MODE)
    a_p = _load_alpha(alpha_prev, ap_ptr, b, mask, full, AP_MODE)
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

    g_x = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
    g_m = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
    g_v = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
    g_z = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
    if KIND == 0:
        var = (1.0 - a_p) / beta_t * (1.0 - a_t / a_p)
        std = eta * _sqrt(var)
        direction = _sqrt(1.0 - a_p - std * std)
        if USE_CLIPPED:  # eps = (x - sa * x0c) / sb
            g_x0c = gp * (sap - direction * sa / sb) + gx0
            g_x = gp * direction / sb
        else:
            g_x0c = gp * sap + gx0
            g_eps = gp * direction
            if PRED == 0:
                g_m = g_eps
            elif PRED == 1:
                g_x = g_eps / sb
                g_m = -g_eps * sa / sb
            else:
                g_m = g_eps * sa
                g_x = g_eps * sb
        if WITH_NOISE:
            g_z = gp * std
    else:
        if NOISE_MODE == 2:
            noise_mask = tl.where(a_p < 1.0, 1.0, 0.0)
        else:
            noise_mask = 1.0
        cur_alpha = a_t / a_p
        cur_beta = 1.0 - cur_alpha
        c_x0 = (sap * cur_beta) / beta_t
        c_x = _sqrt(cur_alpha) * (1.0 - a_p) / beta_t
        g_x0c = gp * c_x0 + gx0
        g_x = gp * c_x
        if WITH_NOISE:
            var = (1.0 - a_p) / beta_t * cur_beta
            var = tl.where(var < 1e-20, 1e-20, var)
            if VT == 0:
                std = _sqrt(var) * noise_mask
            elif VT == 1:
                std = tl.exp(0.5 * tl.log(var)) * noise_mask
            elif VT == 2 or VT == 3:
                std = _sqrt(cur_beta) * noise_mask
            else:
                if GUIDANCE:
                    v = load_tile(cond_ptr + midx + inner, mask, full, 1.0).to(tl.float32)
                else:
                    v = load_tile(model_ptr + midx + inner, mask, full, 1.0).to(tl.float32)
                if NEED_Z:
                    if NOISE_SRC == 1:
                        z = load_tile(noise_ptr + idx, mask, full, 0.0).to(tl.float32)
                    else:
                        k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr,
                                                    SEED_FROM_PTR, OFFSET_FROM_PTR)
                        z = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
                        for cpr in tl.static_range(CPR):
                            n0, n1, n2, n3 = normal4(k0, k1, c2, c3, row * CPR + cpr)
                            z = tl.where(col[None, :] == 4 * cpr + 0, n0[:, None], z)
                            z = tl.where(col[None, :] == 4 * cpr + 1, n1[:, None], z)
                            z = tl.where(col[None, :] == 4 * cpr + 2, n2[:, None], z)
                            z = tl.where(col[None, :] == 4 * cpr + 3, n3[:, None], z)
                else:
                    z = tl.zeros((BLOCK_R, VEC), dtype=tl.float32)
                if VT == 4:  # std = sqrt(v) * mask
                    r = _sqrt(v)
                    std = r * noise_mask
                    g_v = gp * z * noise_mask * 0.5 / r
                else:  # learned_range: std = exp((frac lb + (1 - frac) lv) / 2) * mask
                    log_var = tl.log(var)
                    log_beta = tl.log(cur_beta)
                    frac = (v + 1.0) / 2.0
                    e = tl.exp(0.5 * (frac * log_beta + (1.0 - frac) * log_var))
                    std = e * noise_mask
                    g_v = gp * z * noise_mask * e * 0.25 * (log_beta - log_var)
            g_z = gp * std

    # torch.clamp's gradient: passed where lo <= x0 <= hi (bounds included), zero elsewhere and for NaN
    if CLIP:
        g_x0 = tl.where((x0 >= -clip_range) & (x0 <= clip_range), g_x0c, 0.0)
    else:
        g_x0 = g_x0c
    if PRED == 0:
        g_x = g_x + g_x0 / sa
        g_m = g_m - g_x0 * sb / sa
    elif PRED == 1:
        g_m = g_m + g_x0
    else:
        g_x = g_x + g_x0 * sa
        g_m = g_m - g_x0 * sb

    if WANT_X:
        store_tile(gx_ptr + idx, cast_rne(g_x, gx_ptr.dtype.element_ty), mask, full)
    if WANT_Z:
        store_tile(gz_ptr + idx, cast_rne(g_z, gz_ptr.dtype.element_ty), mask, full)
    if WANT_M:
        dt = gm_ptr.dtype.element_ty
        if GUIDANCE:  # d m / d uncond = 1 - w, d m / d cond = w
            store_tile(gm_ptr + midx, cast_rne((1.0 - guidance_scale) * g_m, dt), mask, full)
            store_tile(gc_ptr + midx, cast_rne(guidance_scale * g_m, dt), mask, full)
            if LEARNED:  # the variance channels come from cond
                store_tile(gm_ptr + midx + inner, cast_rne(tl.zeros((BLOCK_R, VEC), dtype=tl.float32), dt), mask, full)
                store_tile(gc_ptr + midx + inner, cast_rne(g_v, dt), mask, full)
        else:
            store_tile(gm_ptr + midx, cast_rne(g_m, dt), mask, full)
            if LEARNED:
                store_tile(gm_ptr + midx + inner, cast_rne(g_v, dt), mask, full)


def diffusion_step_backward_triton(a, grad_prev, grad_x0, g_sample, g_model, g_cond, g_noise):
    """a: the forward's StepArgs (contiguous tensors, no thresholding); the g_* outputs (None: not wanted)
    are contiguous, in the sample's dtype, g_model/g_cond shaped like model_output."""
    sample = a.sample
    n = sample.numel()
    if n == 0:
        return
    inner = n // sample.shape[0]
    cpr = 1 if sample.element_size() >= 4 else 2
    block_r = 256 // cpr
    grid = (triton.cdiv(n, block_r * 4 * cpr),)
    learned = a.kind == 1 and a.variance_type in (4, 5)
    with_noise = a.noise_mode != 0 and a.noise_src != 0
    want_m = g_model is not None
    need_z = with_noise and learned and want_m
    stream = a.stream if need_z and a.noise_src == 2 else None
    _diffusion_step_backward_kernel[grid](
        g_sample if g_sample is not None else sample, g_model if want_m else sample,
        g_cond if g_cond is not None else sample, g_noise if g_noise is not None else sample,
        grad_prev, grad_x0 if grad_x0 is not None else grad_prev, sample, a.model_output,
        a.cond_output if a.cond_output is not None else a.model_output,
        a.noise if need_z and a.noise_src == 1 else sample,
        a.alpha_t_tensor if a.alpha_t_tensor is not None else sample,
        a.alpha_prev_tensor if a.alpha_prev_tensor is not None else sample,
        n, inner, float(a.alpha_t), float(a.alpha_prev), float(a.eta), float(a.guidance_scale),
        float(a.clip_range or 0.0),
        **stream_kwargs(stream.seed if stream else 0, stream.offset if stream else 0,
                        stream.seed_tensor if stream else None, stream.offset_tensor if stream else None, sample),
        KIND=a.kind, PRED=a.prediction_type, VT=a.variance_type, NOISE_MODE=a.noise_mode, WITH_NOISE=with_noise,
        NEED_Z=need_z, NOISE_SRC=a.noise_src if need_z else 0, AT_MODE=_alpha_mode(a.alpha_t_tensor),
        AP_MODE=_alpha_mode(a.alpha_prev_tensor), GUIDANCE=a.cond_output is not None, LEARNED=learned,
        CLIP=a.clip_range is not None, USE_CLIPPED=bool(a.use_clipped) and a.kind == 0, HAS_GX0=grad_x0 is not None,
        WANT_X=g_sample is not None, WANT_M=want_m, WANT_Z=g_noise is not None,
        CPR=cpr, BLOCK_R=block_r, num_warps=4,
    )
