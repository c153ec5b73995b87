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

import math

import torch
import triton
import triton.language as tl

from genfast.triton.common import cast_rne
from genfast.triton.random import load_stream_args, normal4, stream_value

MAX_TILE = 2048  # elements per tile: 16 per thread at 4 warps
MAX_GRID_Y = 65535


@triton.jit
def _tile_normals(s, o, rows, cols, c0, D, ALIGNED4: tl.constexpr, BLOCK_D: tl.constexpr):
    """Normals of the stream at the (rows x cols) tile of the (B, D) matrix, cols = c0 + arange(BLOCK_D)."""
    if ALIGNED4:
        # D % 4 == 0 and c0 % 4 == 0: each counter holds four consecutive columns of one row.
        first = c0 + 4 * tl.arange(0, BLOCK_D // 4).to(tl.int64)
        q = (rows[:, None] * D + first[None, :]) // 4
        n0, n1, n2, n3 = normal4(s, o, q)
        return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
    else:
        idx = rows[:, None] * D + cols[None, :]
        return stream_value(s, o, idx, True)


@triton.jit
def _vae_forward_kernel(mu_ptr, lv_ptr, noise_ptr, z_ptr, row_part_ptr, col_part_ptr, B, D, rows_per_prog,
                        seed, offset, seed_ptr, offset_ptr, clamp_lo, clamp_hi,
                        HAS_NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr,
                        WITH_KL: tl.constexpr, COL_SUMS: tl.constexpr, CLAMP: tl.constexpr,
                        ALIGNED4: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_d = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < D
    s, o = load_stream_args(seed, offset, seed_ptr, offset_ptr, SEED_FROM_PTR, OFFSET_FROM_PTR)
    col_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
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
            lv = tl.minimum(tl.maximum(lv, clamp_lo), clamp_hi)
        if HAS_NOISE:
            eps = tl.load(noise_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        else:
            eps = _tile_normals(s, o, rows, cols, pid_d * BLOCK_D, D, ALIGNED4, BLOCK_D)
        std = tl.exp(0.5 * lv)
        z = mu + std * eps
        tl.store(z_ptr + offs, cast_rne(z, z_ptr.dtype.element_ty), mask=ok)
        if WITH_KL:
            kl = tl.where(ok, 0.5 * (mu * mu + std * std - 1.0 - lv), 0.0)
            tl.store(row_part_ptr + pid_d * B + rows, tl.sum(kl, axis=1), mask=row_ok)
            if COL_SUMS:
                col_acc += tl.sum(kl, axis=0)
    if COL_SUMS:
        tl.store(col_part_ptr + pid_r * D + cols, col_acc, mask=col_ok)


@triton.jit
def _vae_backward_kernel(gz_ptr, grow_ptr, gcol_ptr, mu_ptr, lv_ptr, noise_ptr, gmu_ptr, glv_ptr, B, D,
                         seed, offset, seed_ptr, offset_ptr, clamp_lo, clamp_hi,
                         HAS_GZ: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr,
                         HAS_NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr,
                         CLAMP: tl.constexpr, ALIGNED4: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_d = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    rows = pid_r * ROWS + tl.arange(0, ROWS).to(tl.int64)
    col_ok = cols < D
    row_ok = rows < B
    ok = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None] * D + cols[None, :]
    mu = tl.load(mu_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    lv_raw = tl.load(lv_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    lv = lv_raw
    if CLAMP:
        lv = tl.minimum(tl.maximum(lv_raw, clamp_lo), clamp_hi)
    std = tl.exp(0.5 * lv)
    coef = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    if HAS_ROWS:
        coef += tl.load(grow_ptr + rows, mask=row_ok, other=0.0)[:, None]
    if HAS_COLS:
        coef += tl.load(gcol_ptr + cols, mask=col_ok, other=0.0)[None, :]
    g_mu = coef * mu
    g_lv = 0.5 * coef * (std * std - 1.0)
    if HAS_GZ:
        gz = tl.load(gz_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_NOISE:
            eps = tl.load(noise_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        else:
            s, o = load_stream_args(seed, offset, seed_ptr, offset_ptr, SEED_FROM_PTR, OFFSET_FROM_PTR)
            eps = _tile_normals(s, o, rows, cols, pid_d * BLOCK_D, D, ALIGNED4, BLOCK_D)
        g_mu += gz
        g_lv += 0.5 * gz * std * eps
    if CLAMP:
        g_lv = tl.where((lv_raw >= clamp_lo) & (lv_raw <= clamp_hi), g_lv, 0.0)
    tl.store(gmu_ptr + offs, cast_rne(g_mu, gmu_ptr.dtype.element_ty), mask=ok)
    tl.store(glv_ptr + offs, cast_rne(g_lv, glv_ptr.dtype.element_ty), mask=ok)


def tile_shape(b: int, d: int) -> tuple[int, int]:
    """(ROWS, BLOCK_D): BLOCK_D covers a row up to MAX_TILE columns, ROWS fills the tile with rows."""
    block_d = min(triton.next_power_of_2(max(d, 4)), MAX_TILE)
    rows = max(1, min(MAX_TILE // block_d, triton.next_power_of_2(max(b, 1))))
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


def _stream_kw(stream, dummy):
    return dict(seed=stream.seed, offset=stream.offset,
                seed_ptr=stream.seed_tensor if stream.seed_tensor is not None else dummy,
                offset_ptr=stream.offset_tensor if stream.offset_tensor is not None else dummy,
                SEED_FROM_PTR=stream.seed_tensor is not None, OFFSET_FROM_PTR=stream.offset_tensor is not None)


def vae_forward(mu, logvar, noise, stream, with_kl, col_sums, lo, hi):
    b = mu.shape[0]
    d = math.prod(mu.shape[1:])
    z = torch.empty_like(mu)
    rows, block_d = tile_shape(b, d)
    n_col, n_row, rows_per_prog = partial_layout(b, d, col_sums)
    row_part = torch.zeros((n_col if with_kl else 0, b), dtype=torch.float32, device=mu.device)
    col_part = torch.zeros((n_row if col_sums else 0, d), dtype=torch.float32, device=mu.device)
    if mu.numel() > 0:
        dummy = mu
        _vae_forward_kernel[(n_col, n_row)](
            mu, logvar, noise if noise is not None else mu, z,
            row_part if with_kl else dummy, col_part if col_sums else dummy, b, d, rows_per_prog,
            clamp_lo=0.0 if lo is None else lo, clamp_hi=0.0 if hi is None else hi,
            HAS_NOISE=noise is not None, WITH_KL=with_kl, COL_SUMS=col_sums, CLAMP=lo is not None,
            ALIGNED4=d % 4 == 0, ROWS=rows, BLOCK_D=block_d, num_warps=4, **_stream_kw(stream, dummy))
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
    grid = (triton.cdiv(d, block_d), triton.cdiv(b, rows))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"mu: batch of {b} rows exceeds the Triton backward's grid ({MAX_GRID_Y * rows} rows)")
    dummy = mu
    _vae_backward_kernel[grid](
        grad_z if grad_z is not None else dummy,
        grad_rows.float() if grad_rows is not None else dummy,
        grad_cols.float() if grad_cols is not None else dummy,
        mu, logvar, noise if noise is not None else dummy, g_mu, g_lv, b, d,
        clamp_lo=0.0 if lo is None else lo, clamp_hi=0.0 if hi is None else hi,
        HAS_GZ=grad_z is not None, HAS_ROWS=grad_rows is not None, HAS_COLS=grad_cols is not None,
        HAS_NOISE=noise is not None, CLAMP=lo is not None, ALIGNED4=d % 4 == 0, ROWS=rows, BLOCK_D=block_d,
        num_warps=4, **_stream_kw(stream, dummy))
    return g_mu, g_lv
