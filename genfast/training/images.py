"""Image grids, written with Pillow in the format the file name asks for, and atomic file writes.

Writing goes to a temporary file beside the target and is renamed over it, so a reader (or an
interrupted run) never sees half a file. Only regular files are replaced that way: a symlink is
followed (the link stays, its target is replaced), a device such as /dev/null is written in place, and
a FIFO with a reader is written in place; anything else that is not a regular file is refused.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
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


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError("writing images needs Pillow: pip install pillow") from None
    return Image


def image_format(path) -> str:
    """Pillow's format name for the file name's extension (.png -> PNG, .jpg -> JPEG, ...)."""
    suffix = Path(path).suffix.lower()
    fmt = _pil().registered_extensions().get(suffix)
    if fmt is None or fmt not in _pil().SAVE:
        raise ValueError(f"{path}: cannot tell an image format Pillow writes from the extension {suffix or '(none)'!r}; "
                         "use .png, .jpg, .webp, .bmp, .tif, ...")
    return fmt


def image_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 [H, W] or [H, W, 1|3] -> the bytes of an image file in Pillow format `fmt`."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels: expected uint8 [H, W, 1 or 3], got {pixels.dtype} {pixels.shape}")
    image = _pil().fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    lossless = {"WEBP": {"lossless": True}, "JPEG": {"quality": 95, "subsampling": 0}}.get(fmt.upper(), {})
    image.save(buf, format=fmt, **lossless)
    return buf.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    return image_bytes(pixels, "PNG")


def _kind(path: Path) -> str:
    """'missing', 'file', 'dir', or 'special' (a device or FIFO: written in place), after symlinks."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # missing (or under a file): the probe reports why
        return "missing"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        return "special"
    return "other"  # a socket


def check_writable(path, what: str = "--out", image: bool = False) -> Path:
    """Fail early (before minutes of sampling or training) if `path` cannot be written; with
    image=True also if its extension names no image format."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    kind = _kind(real)
    if kind == "dir":
        raise ValueError(f"{what}: {path} is a directory, not a file name")
    if kind == "other":
        raise ValueError(f"{what}: {path} exists and is neither a regular file nor a device; refusing to replace it")
    if image:
        try:
            image_format(path)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if kind == "special":
        if not os.access(real, os.W_OK):
            raise ValueError(f"{what}: cannot write to {path}: permission denied")
        return path
    parent = real.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".genfast-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what}: cannot write to {parent}: {exc.strerror or exc}") from None
    if kind == "file" and not os.access(real, os.W_OK):
        raise ValueError(f"{what}: cannot write to {path}: permission denied")
    return path


def _write_in_place(path: Path, data: bytes) -> None:
    try:  # a FIFO without a reader would block forever: refuse instead
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, f"{path} is a FIFO with no reader") from None
        raise
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_atomic(path, data: bytes) -> None:
    """Write `data` to `path`: for a regular (or new) file, through a temporary file in its folder,
    fsync and a rename over it, keeping an existing file's permissions (a new one gets what open()
    gives). A symlink is followed; a device or FIFO is written in place; a socket is refused."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    kind = _kind(real)
    if kind == "special":
        _write_in_place(real, data)
        return
    if kind in ("dir", "other"):
        raise OSError(errno.EISDIR if kind == "dir" else errno.EINVAL,
                      f"{path} is {'a directory' if kind == 'dir' else 'not a regular file'}; refusing to replace it")
    real.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        mode = stat.S_IMODE(os.stat(real).st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # mkstemp's 0600 would make the result private; use what open() gives
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, real)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_grid(path, images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> None:
    """images [N, C, H, W] in [0, 1] -> an image grid at `path` in the format its extension names,
    written atomically."""
    write_atomic(path, image_bytes(make_grid(images, nrow=nrow, scale=scale), image_format(path)))
