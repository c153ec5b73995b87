"""Image grids and PNG files, written atomically, with no imaging library needed.

A PNG is zlib-compressed scanlines in chunks (RFC 2083); 8-bit grey or RGB, filter type 0 per row is
all we need. Writing goes to a temporary file beside the target and is renamed over it, so a reader
(or an interrupted run) never sees half a picture.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1, scale: int = 1,
              pad_value: float = 1.0) -> np.ndarray:
    """images [N, C, H, W] in [0, 1] (C = 1 or 3) -> uint8 array [rows*(H+p)+p, cols*(W+p)+p, C].

    nrow: images per row (default: a near-square grid). scale: nearest-neighbour upscaling of each
    image, so 16-px samples are visible on a screen.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images: expected [N, 1 or 3, H, W] with N > 0, got {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).cpu()
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = x.shape
    cols = nrow or int(np.ceil(np.sqrt(n)))
    rows = (n + cols - 1) // cols
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return (grid * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 1|3] -> the bytes of a PNG file."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels: expected uint8 [H, W, 1 or 3], got {pixels.dtype} {pixels.shape}")
    h, w, c = pixels.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * c)], axis=1)  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + chunk(b"IEND", b""))


def check_writable(path, what: str = "--out") -> Path:
    """Fail early (before minutes of sampling or training) if `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a directory, not a file name")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".genfast-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what}: cannot write to {parent}: {exc.strerror or exc}") from None
    return path


def write_atomic(path, data: bytes) -> None:
    """Write `data` to a temporary file in the target's folder, fsync, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the result private; use what open() gives
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_grid(path, images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> None:
    """images [N, C, H, W] in [0, 1] -> a PNG grid at `path`, written atomically."""
    write_atomic(path, png_bytes(make_grid(images, nrow=nrow, scale=scale)))
