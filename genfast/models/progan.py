"""ProGAN (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and Variation").

The generator starts at 4x4 and grows by one resolution block at a time (4 -> 8 -> 16 ...). A new block
is faded in: while alpha rises from 0 to 1 the output is lerp(upsample(to_rgb_old(h_old)),
to_rgb_new(block(h_old)), alpha), and the critic mirrors it (from_rgb of the average-pooled image
blended with the new block's output). Upsampling is nearest-neighbour, downsampling 2x2 average
pooling. The generator normalizes every pixel's feature vector (pixel norm), the critic appends the
minibatch standard deviation as one more channel before its last block, and every layer uses the
equalized learning rate: weights are stored N(0, 1) and scaled at each forward by the He constant
sqrt(2 / fan_in) (the output layers by 1 / sqrt(fan_in)).

These three layers are plain PyTorch: measured on the development CPU they are a few percent of a
training step (benchmarks/RESULTS.md, "ProGAN's custom layers").

The stage (level = index of the newest block, alpha = its fade-in weight) lives in two buffers set
with `set_stage`, so a network called as `net(x)` -- by the gradient penalty, by DDP -- runs at the
stage the trainer chose, and a checkpoint remembers it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class EqualizedConv2d(nn.Module):
    """Conv2d with the equalized learning rate: weight ~ N(0, 1), scaled by gain / sqrt(fan_in) per call."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 gain: float = math.sqrt(2.0)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Linear with the equalized learning rate."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2.0)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit mean square over channels (dim 1)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, eps: float = 1e-8) -> torch.Tensor:
    """x [B, C, H, W] -> [B, C + 1, H, W]: the extra channel is, for each group of samples, the standard
    deviation over the group of every feature and pixel, averaged to one number. Sample b belongs to
    group b % (B / G), G the largest divisor of B not above group_size."""
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.float().reshape(g, b // g, c, h, w)
    std = (y.var(dim=0, unbiased=False) + eps).sqrt().mean(dim=(1, 2, 3))  # [B / G]
    channel = std.repeat(g).to(x.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
    return torch.cat([x, channel], dim=1)


def _levels(image_size: int, channels: Sequence[int]) -> int:
    levels = len(channels)
    if image_size != 4 * 2 ** (levels - 1):
        raise ValueError(f"image_size: {len(channels)} channel entries grow 4x4 to {4 * 2 ** (levels - 1)} px, "
                         f"not {image_size}")
    return levels


class _Staged(nn.Module):
    """The (level, alpha) buffers shared by the generator and the critic."""

    def _init_stage(self, levels: int) -> None:
        self.levels = levels
        self.register_buffer("level", torch.tensor(levels - 1, dtype=torch.int64))
        self.register_buffer("alpha", torch.tensor(1.0))

    def set_stage(self, level: int, alpha: float = 1.0) -> None:
        if not 0 <= level < self.levels:
            raise ValueError(f"level: expected 0..{self.levels - 1}, got {level}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a fade-in weight in [0, 1], got {alpha}")
        self.level.fill_(level)
        self.alpha.fill_(alpha)

    def stage(self) -> tuple[int, float]:
        return int(self.level), float(self.alpha)

    @property
    def resolution(self) -> int:
        return 4 * 2 ** int(self.level)


class ProGANGenerator(_Staged):
    """z [B, nz] -> images [B, nc, R, R] at the current stage's resolution R (linear output, ~[-1, 1]).

    channels: feature channels per resolution, 4x4 first (len 3 -> 4, 8, 16 px).
    """

    def __init__(self, nz: int = 64, channels: Sequence[int] = (64, 64, 32), nc: int = 1, image_size: int = 16):
        super().__init__()
        levels = _levels(image_size, channels)
        self.nz, self.nc, self.image_size, self.channels = nz, nc, image_size, list(channels)
        c0 = channels[0]
        self.input = EqualizedLinear(nz, c0 * 16, gain=math.sqrt(2.0) / 4)  # as the paper: a 4x4 "conv" on z
        self.input_conv = EqualizedConv2d(c0, c0, 3, padding=1)
        self.blocks = nn.ModuleList()
        for k in range(1, levels):
            self.blocks.append(nn.ModuleList([EqualizedConv2d(channels[k - 1], channels[k], 3, padding=1),
                                              EqualizedConv2d(channels[k], channels[k], 3, padding=1)]))
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c, nc, 1, gain=1.0) for c in channels])
        self._init_stage(levels)

    def _block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        for conv in self.blocks[k - 1]:
            h = pixel_norm(F.leaky_relu(conv(h), 0.2))
        return h

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        level, alpha = self.stage()
        z = z.reshape(z.shape[0], -1)
        h = pixel_norm(F.leaky_relu(self.input(pixel_norm(z)), 0.2).view(z.shape[0], -1, 4, 4))
        h = pixel_norm(F.leaky_relu(self.input_conv(h), 0.2))
        for k in range(1, level):
            h = self._block(k, h)
        if level == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[level](self._block(level, h))
        if alpha >= 1.0:
            return new
        old = F.interpolate(self.to_rgb[level - 1](h), scale_factor=2, mode="nearest")
        return torch.lerp(old, new, alpha)


class ProGANCritic(_Staged):
    """images [B, nc, R, R] at the current stage's resolution -> one score per sample [B]."""

    def __init__(self, channels: Sequence[int] = (64, 64, 32), nc: int = 1, image_size: int = 16,
                 group_size: int = 4):
        super().__init__()
        levels = _levels(image_size, channels)
        self.group_size = group_size
        self.from_rgb = nn.ModuleList([EqualizedConv2d(nc, c, 1) for c in channels])
        self.blocks = nn.ModuleList()
        for k in range(1, levels):
            self.blocks.append(nn.ModuleList([EqualizedConv2d(channels[k], channels[k], 3, padding=1),
                                              EqualizedConv2d(channels[k], channels[k - 1], 3, padding=1)]))
        c0 = channels[0]
        self.final_conv = EqualizedConv2d(c0 + 1, c0, 3, padding=1)
        self.final_4x4 = EqualizedConv2d(c0, c0, 4)
        self.out = EqualizedLinear(c0, 1, gain=1.0)
        self._init_stage(levels)

    def _block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[k - 1]:
            h = F.leaky_relu(conv(h), 0.2)
        return F.avg_pool2d(h, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ValueError("y: the ProGAN critic is unconditional")
        level, alpha = self.stage()
        size = 4 * 2 ** level
        if x.shape[-2:] != (size, size):
            raise ValueError(f"x: the critic is at {size}x{size} (level {level}), got {tuple(x.shape[-2:])}")
        h = F.leaky_relu(self.from_rgb[level](x), 0.2)
        if level > 0:
            h = self._block(level, h)
            if alpha < 1.0:
                old = F.leaky_relu(self.from_rgb[level - 1](F.avg_pool2d(x, 2)), 0.2)
                h = torch.lerp(old, h, alpha)
            for k in range(level - 1, 0, -1):
                h = self._block(k, h)
        h = F.leaky_relu(self.final_conv(minibatch_stddev(h, self.group_size)), 0.2)
        h = F.leaky_relu(self.final_4x4(h), 0.2)
        return self.out(h.flatten(1)).squeeze(1)


class ProGAN(nn.Module):
    """What ProGAN samples from: the averaged (EMA) generator, plus a snapshot of it at the end of each
    lower resolution's training (ProGAN discards the low-resolution output layers as it grows; the
    snapshots keep each grown resolution's generator as it was when that resolution was done).

    sample(z, resolution=None): the final generator at its current stage, or a finished snapshot.
    """

    def __init__(self, nz: int = 64, channels: Sequence[int] = (64, 64, 32), nc: int = 1, image_size: int = 16):
        super().__init__()
        self.generator = ProGANGenerator(nz, channels, nc, image_size)
        self.snapshots = nn.ModuleList([ProGANGenerator(nz, channels[:k + 1], nc, 4 * 2 ** k)
                                        for k in range(len(channels) - 1)])
        self.register_buffer("snapshot_done", torch.zeros(len(channels) - 1, dtype=torch.bool))
        self.nz = nz

    def resolutions(self) -> list[int]:
        """Resolutions this model can sample now: the finished snapshots and the generator's current one."""
        done = [4 * 2 ** k for k in range(len(self.snapshots)) if bool(self.snapshot_done[k])]
        return sorted(set(done + [self.generator.resolution]))

    def take_snapshot(self, level: int) -> None:
        """Copy the generator's layers up to `level` into that level's snapshot (weights it shares by name)."""
        snap = self.snapshots[level]
        own = self.generator.state_dict()
        with torch.no_grad():
            for name, t in snap.state_dict().items():
                if name not in ("level", "alpha"):
                    t.copy_(own[name])
        snap.set_stage(level, 1.0)
        self.snapshot_done[level] = True

    def forward(self, z: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        if resolution is None or resolution == self.generator.resolution:
            return self.generator(z)
        allowed = self.resolutions()
        if resolution not in allowed:
            raise ValueError(f"--resolution: this ProGAN samples at {', '.join(map(str, allowed))} px, not {resolution}")
        return self.snapshots[int(math.log2(resolution)) - 2](z)
