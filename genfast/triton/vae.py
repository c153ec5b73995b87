"""Triton kernels of genfast.ops.reparameterize_kl: one forward kernel, one backward kernel.

The data is viewed as a (B, D) matrix (D = elements per sample). A program owns a tile of ROWS rows by
BLOCK_D columns and loops over `rows_per_prog` rows in steps of ROWS. The forward writes z and one
fp32 KL partial sum per (column block, row) into row_part[n_col_blocks, B] and, with free bits, one
per (row group, column) into col_part[n_row_groups, D]; torch sums those few partials (no second
pass over the data, no atomics, deterministic). Noise is drawn where it is used: when D % 4 == 0 each
Philox counter's four normals are computed once and interleaved into the tile; otherwise each
element recomputes its counter's block (`stream_value`).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from genfast.triton.common import cast_rne, device_of, scaled_length
from genfast.triton.random import STREAM_WORDS, normal4, stream_key, stream_kwargs, stream_value

MAX_TILE = 1024  # elements per tile: 8 per thread at 4 warps (at 16 the fp32 backward spilled)
# Where D % 4 != 0 each element computes its own Philox block: a smaller tile keeps that in registers
# (at 2048 the kernel needed 255 registers and spilled).
MAX_TILE_UNALIGNED = 512
MAX_GRID_Y = 65535  # CUDA's limit on grid.y; more row tiles than this are looped over


@triton.jit
def _tile_normals(k0, k1, c2, c3, rows, cols, c0, D, ALIGNED4: tl.constexpr, BLOCK_D: tl.constexpr):
    """Normals of the stream at the (rows x cols) tile of the (B, D) matrix, cols = c0 + arange(BLOCK_D)."""
    if ALIGNED4:
        # D % 4 == 0 and c0 % 4 == 0: each counter holds four consecutive columns of one row.
        first = c0 + 4 * tl.arange(0, BLOCK_D // 4).to(tl.int64)
        q = (rows[:, None] * D + first[None, :]) >> 2
        n0, n1, n2, n3 = normal4(k0, k1, c2, c3, q)
        return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
    else:
        idx = rows[:, None] * D + cols[None, :]
        return stream_value(k0, k1, c2, c3, idx, True)


@triton.jit(do_not_specialize=STREAM_WORDS)
def _vae_forward_kernel(mu_ptr, lv_ptr, noise_ptr, z_ptr, row_part_ptr, col_part_ptr, B, d_units, rows_per_prog,
                        seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, clamp_lo, clamp_hi,
                        HAS_NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr,
                        WITH_KL: tl.constexpr, COL_SUMS: tl.constexpr, CLAMP: tl.constexpr,
                        ALIGNED4: tl.constexpr, D_VEC: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_d = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1).to(tl.int64)
    D = scaled_length(d_units, D_VEC)  # D_VEC > 1: rows start 16-byte aligned (vector accesses and masks)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < D
    k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR,
                                OFFSET_FROM_PTR)
    col_acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)  # reduced over rows once, after the loop
    row0 = pid_r * rows_per_prog
    for it in range(0, rows_per_prog, ROWS):
        local = it + tl.arange(0, ROWS)
        rows = row0 + local.to(tl.int64)
        row_ok = (rows < B) & (local < rows_per_prog)
        ok = row_ok[:, None] & col_ok[None, :]
        offs = rows[:, None] * D + cols[None, :]
        mu = tl.load(mu_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        lv = tl.load(lv_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if CLAMP:
            lv = tl.minimum(tl.maximum(lv, clamp_lo, propagate_nan=tl.PropagateNan.ALL), clamp_hi,
                            propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.clamp
        if HAS_NOISE:
            eps = tl.load(noise_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        else:
            eps = _tile_normals(k0, k1, c2, c3, rows, cols, pid_d * BLOCK_D, D, ALIGNED4, BLOCK_D)
        std = tl.exp(0.5 * lv)
        z = mu + std * eps
        tl.store(z_ptr + offs, cast_rne(z, z_ptr.dtype.element_ty), mask=ok)
        if WITH_KL:
            kl = tl.where(ok, 0.5 * (mu * mu + std * std - 1.0 - lv), 0.0)
            tl.store(row_part_ptr + pid_d * B + rows, tl.sum(kl, axis=1), mask=row_ok)
            if COL_SUMS:
                col_acc += kl
    if COL_SUMS:
        tl.store(col_part_ptr + pid_r * D + cols, tl.sum(col_acc, axis=0), mask=col_ok)


@triton.jit(do_not_specialize=STREAM_WORDS)
def _vae_backward_kernel(gz_ptr, grow_ptr, gcol_ptr, mu_ptr, lv_ptr, noise_ptr, gmu_ptr, glv_ptr, B, d_units,
                         row_tiles,
                         seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, clamp_lo, clamp_hi,
                         HAS_GZ: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr,
                         HAS_NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr,
                         CLAMP: tl.constexpr, ALIGNED4: tl.constexpr, D_VEC: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    # Program (pid_d, pid_r) handles row tiles pid_r, pid_r + grid.y, ... (grid.y <= 65535: any B).
    pid_d = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1)
    D = scaled_length(d_units, D_VEC)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < D
    k0, k1, c2, c3 = stream_key(seed_lo, seed_hi, offset_lo, offset_hi, seed_ptr, offset_ptr, SEED_FROM_PTR,
                                OFFSET_FROM_PTR)
    if HAS_COLS:
        gcol = tl.load(gcol_ptr + cols, mask=col_ok, other=0.0)
    for tile in range(pid_r, row_tiles, tl.num_programs(1)):
        rows = (tile + tl.zeros([ROWS], dtype=tl.int64)) * ROWS + tl.arange(0, ROWS)  # int64 (B may pass 2^31)
        row_ok = rows < B
        ok = row_ok[:, None] & col_ok[None, :]
        offs = rows[:, None] * D + cols[None, :]
        mu = tl.load(mu_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        lv_raw = tl.load(lv_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        lv = lv_raw
        if CLAMP:
            lv = tl.minimum(tl.maximum(lv_raw, clamp_lo, propagate_nan=tl.PropagateNan.ALL), clamp_hi,
                            propagate_nan=tl.PropagateNan.ALL)
        std = tl.exp(0.5 * lv)
        coef = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        if HAS_ROWS:
            coef += tl.load(grow_ptr + rows, mask=row_ok, other=0.0)[:, None]
        if HAS_COLS:
            coef += gcol[None, :]
        g_mu = coef * mu
        g_lv = 0.5 * coef * (std * std - 1.0)
        if HAS_GZ:
            gz = tl.load(gz_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            if HAS_NOISE:
                eps = tl.load(noise_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            else:
                eps = _tile_normals(k0, k1, c2, c3, rows, cols, pid_d * BLOCK_D, D, ALIGNED4, BLOCK_D)
            g_mu += gz
            g_lv += 0.5 * gz * std * eps
        if CLAMP:
            g_lv = tl.where((lv_raw >= clamp_lo) & (lv_raw <= clamp_hi), g_lv, 0.0)
        tl.store(gmu_ptr + offs, cast_rne(g_mu, gmu_ptr.dtype.element_ty), mask=ok)
        tl.store(glv_ptr + offs, cast_rne(g_lv, glv_ptr.dtype.element_ty), mask=ok)


def tile_shape(b: int, d: int) -> tuple[int, int]:
    """(ROWS, BLOCK_D): BLOCK_D covers a row up to the tile's size, ROWS fills the tile with rows."""
    tile = MAX_TILE if d % 4 == 0 else MAX_TILE_UNALIGNED
    block_d = min(triton.next_power_of_2(max(d, 4)), tile)
    rows = max(1, min(tile // block_d, triton.next_power_of_2(max(b, 1))))
    return rows, block_d


def partial_layout(b: int, d: int, col_sums: bool) -> tuple[int, int, int]:
    """(n_col_blocks, n_row_groups, rows_per_prog) of the forward grid."""
    rows, block_d = tile_shape(b, d)
    n_col = triton.cdiv(d, block_d)
    row_tiles = max(1, triton.cdiv(b, rows))
    # With free bits each row group writes D column partials: keep at most 8 groups (<= 8 * D floats).
    n_row = min(row_tiles, 8 if col_sums else MAX_GRID_Y)
    rows_per_prog = rows * triton.cdiv(row_tiles, n_row)
    return n_col, triton.cdiv(max(b, 1), rows_per_prog), rows_per_prog


def _d_vec(d: int, t: torch.Tensor) -> int:
    """Elements per 16-byte vector when every row of the (B, D) view starts 16-byte aligned, else 1."""
    vec = 16 // t.element_size()
    return vec if d % vec == 0 else 1


def _num_warps(rows: int, block_d: int, t: torch.Tensor) -> int:
    """Up to 4 warps, but at least one 16-byte vector per thread (a small tile on 4 warps would give
    each thread fewer elements than a vector holds)."""
    return max(1, min(4, rows * block_d * t.element_size() // (16 * 32)))


@functools.lru_cache(maxsize=None)
def _has_maxnreg() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "maxnreg" in getattr(CUDAOptions, "__dataclass_fields__", {})


def _register_budget(col_sums: bool) -> dict:
    """With free bits (column sums carried across the row loop) ptxas for sm_80 aims at 64 registers
    and spills where the kernel needs about 72; a budget of 96 keeps it spill-free (the codegen gate,
    tests/test_triton_codegen.py, checks every variant). Elsewhere ptxas chooses."""
    return {"maxnreg": 96} if col_sums and _has_maxnreg() else {}


def _stream_kw(stream, dummy):
    return stream_kwargs(stream.seed, stream.offset, stream.seed_tensor, stream.offset_tensor, dummy)


def vae_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    b = mu.shape[0]
    d = math.prod(mu.shape[1:])
    with device_of(mu):
        z = torch.empty_like(mu)
        rows, block_d = tile_shape(b, d)
        n_col, n_row, rows_per_prog = partial_layout(b, d, col_sums)
        row_part = torch.zeros((n_col if with_kl else 0, b), dtype=torch.float32, device=mu.device)
        col_part = torch.zeros((n_row if col_sums else 0, d), dtype=torch.float32, device=mu.device)
        if mu.numel() > 0:
            dummy = mu
            _vae_forward_kernel[(n_col, n_row)](
                mu, logvar, noise if noise is not None else mu, z,
                row_part if with_kl else dummy, col_part if col_sums else dummy, b, d // _d_vec(d, mu), rows_per_prog,
                clamp_lo=0.0 if lo is None else lo, clamp_hi=0.0 if hi is None else hi,
                HAS_NOISE=noise is not None, WITH_KL=with_kl, COL_SUMS=col_sums, CLAMP=lo is not None,
                ALIGNED4=d % 4 == 0, D_VEC=_d_vec(d, mu), ROWS=rows, BLOCK_D=block_d,
                num_warps=_num_warps(rows, block_d, mu), **_register_budget(col_sums),
                **_stream_kw(stream, dummy))
        rows_out = row_part.sum(0) if with_kl else row_part.new_empty((0,))
        cols_out = col_part.sum(0) if col_sums else col_part.new_empty((0,))
    return z, rows_out, cols_out


def vae_backward(grad_z, grad_rows, grad_cols, mu, logvar, noise, stream, lo, hi):
    b = mu.shape[0]
    g_mu = torch.empty_like(mu)
    g_lv = torch.empty_like(mu)
    if mu.numel() == 0:
        return g_mu, g_lv
    d = mu.numel() // b
    rows, block_d = tile_shape(b, d)
    row_tiles = triton.cdiv(b, rows)
    grid = (triton.cdiv(d, block_d), min(row_tiles, MAX_GRID_Y))
    dummy = mu
    with device_of(mu):
        _vae_backward_kernel[grid](
            grad_z if grad_z is not None else dummy,
            grad_rows.float() if grad_rows is not None else dummy,
            grad_cols.float() if grad_cols is not None else dummy,
            mu, logvar, noise if noise is not None else dummy, g_mu, g_lv, b, d // _d_vec(d, mu), row_tiles,
            clamp_lo=0.0 if lo is None else lo, clamp_hi=0.0 if hi is None else hi,
            HAS_GZ=grad_z is not None, HAS_ROWS=grad_rows is not None, HAS_COLS=grad_cols is not None,
            HAS_NOISE=noise is not None, CLAMP=lo is not None, ALIGNED4=d % 4 == 0, D_VEC=_d_vec(d, mu), ROWS=rows,
            BLOCK_D=block_d, num_warps=_num_warps(rows, block_d, mu), **_stream_kw(stream, dummy))
    return g_mu, g_lv
