"""SRGAN (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network") and its SRResNet generator.

Generator (SRResNet): a 9x9 conv with PReLU, residual blocks (conv-BN-PReLU-conv-BN + skip), a conv-BN
with a skip around all blocks, then per 2x of upscaling a conv to 4x the channels, PixelShuffle(2)
(sub-pixel convolution) and PReLU, and a 9x9 conv to the image (tanh: images in [-1, 1]).
Discriminator: 3x3 convs alternating stride 1 and 2 with LeakyReLU 0.2 (BatchNorm after the first),
a dense layer with LeakyReLU and one logit.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SRResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                  nn.PReLU(channels), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """low-resolution images [B, C, s, s] in [-1, 1] -> [B, C, scale s, scale s] in [-1, 1]."""

    def __init__(self, channels: int = 1, scale: int = 4, ngf: int = 32, n_blocks: int = 4):
        super().__init__()
        ups = int(round(math.log2(scale)))
        if scale < 2 or 2 ** ups != scale:
            raise ValueError(f"scale: expected a power of two >= 2, got {scale}")
        self.channels, self.scale = channels, scale
        self.head = nn.Sequential(nn.Conv2d(channels, ngf, 9, padding=4), nn.PReLU(ngf))
        self.blocks = nn.Sequential(*[SRResidualBlock(ngf) for _ in range(n_blocks)],
                                    nn.Conv2d(ngf, ngf, 3, padding=1), nn.BatchNorm2d(ngf))
        self.upsample = nn.Sequential(*[m for _ in range(ups) for m in
                                        (nn.Conv2d(ngf, 4 * ngf, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(ngf))])
        self.tail = nn.Conv2d(ngf, channels, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x: expected [B, {self.channels}, h, w], got {tuple(x.shape)}")
        h = self.head(x)
        h = h + self.blocks(h)
        return torch.tanh(self.tail(self.upsample(h)))


class SRDiscriminator(nn.Module):
    """images [B, C, S, S] -> one logit per sample [B]."""

    def __init__(self, channels: int = 1, image_size: int = 16, ndf: int = 32, dense: int = 128):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size: must be a multiple of 4, got {image_size}")
        mods, c = [], channels
        for i, (w, stride) in enumerate([(ndf, 1), (ndf, 2), (2 * ndf, 1), (2 * ndf, 2)]):
            mods.append(nn.Conv2d(c, w, 3, stride, 1, bias=i == 0))
            if i > 0:
                mods.append(nn.BatchNorm2d(w))
            mods.append(nn.LeakyReLU(0.2))
            c = w
        self.features = nn.Sequential(*mods)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * (image_size // 4) ** 2, dense), nn.LeakyReLU(0.2),
                                  nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)
