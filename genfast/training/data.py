"""Training data for `genfast train` and `genfast compare`: scikit-learn's handwritten digits (the default,
shipped with scikit-learn, no download), a folder of images, or an .npz array.

Every data set becomes float images in [0, 1], [N, C, S, S], plus labels [N] (or None). Models that
work in [-1, 1] (DDPM, GANs) rescale with `to_signed`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageData:
    images: torch.Tensor          # [N, C, S, S] float32 in [0, 1]
    labels: torch.Tensor | None   # [N] int64, or None
    num_classes: int | None
    name: str

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def describe(self) -> dict:
        return {"name": self.name, "size": len(self.images), "channels": self.channels,
                "image_size": self.image_size, "num_classes": self.num_classes}


def to_signed(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


def from_signed(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    # antialiased bilinear: the 8x8 digits upsample smoothly, large photos downsample without aliasing
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > size).clamp(0, 1)


def load_digits_data(image_size: int = 16) -> ImageData:
    """The 1,797 8x8 digits of scikit-learn (UCI optical recognition), upsampled to image_size."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("--data digits: needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return ImageData(_resize(images, image_size), torch.as_tensor(bunch.target, dtype=torch.int64), 10, "digits")


def _from_array(x: np.ndarray, what: str) -> torch.Tensor:
    """[N, H, W], [N, H, W, C] or [N, C, H, W] (uint8 0..255 or float 0..1) -> float [N, C, H, W]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"{what}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3, "
                         f"got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: expected uint8 or float images, got {x.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if t.min() < 0 or t.max() > 1:
        raise ValueError(f"{what}: float images must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]")
    return t


def load_npz(path: Path, image_size: int) -> ImageData:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--data: {path} is not a readable .npz file ({exc})") from None
    keys = list(arrays.keys())
    image_key = next((k for k in ("images", "x", "X", "data", "arr_0") if k in keys), None)
    if image_key is None:
        raise ValueError(f"--data: {path} has no array named images, x, data or arr_0 (has {keys})")
    images = _from_array(arrays[image_key], f"--data {path}[{image_key!r}]")
    label_key = next((k for k in ("labels", "y", "Y", "targets", "arr_1") if k in keys), None)
    labels, num_classes = None, None
    if label_key is not None:
        y = np.asarray(arrays[label_key]).reshape(-1)
        if len(y) != len(images) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(f"--data: {path}[{label_key!r}] must hold {len(images)} non-negative integer labels")
        labels, num_classes = torch.as_tensor(y, dtype=torch.int64), int(y.max()) + 1
    return ImageData(_resize(images, image_size), labels, num_classes, path.name)


def load_folder(path: Path, image_size: int) -> ImageData:
    """Images anywhere under `path`; if they sit in subfolders, each subfolder is a class."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--data: no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("--data: reading an image folder needs Pillow (pip install pillow)") from None
    pictures = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                pictures.append(im.resize((image_size, image_size), Image.Resampling.BICUBIC))
        except OSError as exc:
            raise ValueError(f"--data: cannot read image {f}: {exc}") from None
    arrays = np.stack([np.asarray(p, dtype=np.uint8) for p in pictures])  # [N, S, S, 3]
    grey = bool((arrays[..., :1] == arrays).all())
    images = _from_array(arrays[..., :1] if grey else arrays, f"--data {path}")
    classes = sorted({f.parent.relative_to(path).as_posix() for f in files})
    labels, num_classes = None, None
    if len(classes) > 1 or classes != ["."]:
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[f.parent.relative_to(path).as_posix()] for f in files], dtype=torch.int64)
        num_classes = len(classes)
    return ImageData(images, labels, num_classes, path.name)


def load_data(spec: str, image_size: int = 16) -> ImageData:
    """`digits`, a folder of images or an .npz file -> ImageData at image_size x image_size."""
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"--image-size: expected an int >= 4, got {image_size!r}")
    if spec == "digits":
        return load_digits_data(image_size)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--data: {spec} is neither 'digits' nor an existing folder or .npz file")
    if path.is_dir():
        return load_folder(path, image_size)
    if path.suffix.lower() == ".npz":
        return load_npz(path, image_size)
    raise ValueError(f"--data: {spec} is not a folder or an .npz file")


# ------------------------------------------------------------------------------------------------------
# Held-out split and the image-to-image tasks derived from any image data (digits, a folder, an .npz)
# ------------------------------------------------------------------------------------------------------
HOLDOUT_FRACTION = 0.1


def holdout_split(data: ImageData, fraction: float = HOLDOUT_FRACTION) -> tuple[ImageData, ImageData]:
    """(train, test): a fixed permutation (seed 0) of the images, the last `fraction` of it held out.
    The image-to-image models train on `train` and `genfast sample` shows them `test`; the classifier
    reports its accuracy on `test`."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    n = len(data.images)
    held = max(1, int(round(n * fraction)))
    if n - held < 1:
        raise ValueError(f"--data: {n} images are too few to hold {held} out for testing")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    parts = []
    for name, idx in (("train", perm[:n - held]), ("test", perm[n - held:])):
        labels = data.labels[idx] if data.labels is not None else None
        parts.append(ImageData(data.images[idx], labels, data.num_classes, f"{data.name}[{name}]"))
    return parts[0], parts[1]


def _dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _erode(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def edges(x: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """pix2pix's input: the binary outline of images [B, C, S, S] in [0, 1] -- where the morphological
    gradient (3x3 dilation minus erosion) of the grey level exceeds `threshold`."""
    grey = x.mean(dim=1, keepdim=True)
    return ((_dilate(grey) - _erode(grey)) > threshold).to(x.dtype).expand_as(x).contiguous()


def bold_ink_on_paper(x: torch.Tensor) -> torch.Tensor:
    """CycleGAN's domain B: strokes thickened by a 3x3 dilation and drawn dark on white (1 - dilation);
    domain A is the images as they are."""
    return 1.0 - _dilate(x)


def downsample(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """SRGAN's input: images average-pooled by `factor` (16x16 -> 4x4)."""
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"--image-size: {x.shape[-1]} px is not divisible by the super-resolution factor {factor}")
    return F.avg_pool2d(x, factor)
