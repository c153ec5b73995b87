"""DCGAN generator and discriminator (Radford, Metz & Chintala 2016, "Unsupervised Representation Learning
with Deep Convolutional Generative Adversarial Networks"), 16, 32 and 64 px, with class-conditional variants.

Generator: z -> 4x4 transposed conv -> (BatchNorm, ReLU, stride-2 transposed convs doubling the
resolution) -> Tanh. Discriminator: stride-2 4x4 convs with LeakyReLU(0.2) (BatchNorm after all but the
first) -> a 4x4 conv to one score per sample. Weights N(0, 0.02), BatchNorm weights N(1, 0.02) as the
paper prescribes. Conditional: the generator concatenates a label embedding to z; the discriminator adds
the projection term <embed(y), h> of Miyato & Koyama 2018 ("cGANs with Projection Discriminator").
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _levels(image_size: int) -> int:
    if image_size not in (16, 32, 64):
        raise ValueError(f"image_size: expected 16, 32 or 64, got {image_size}")
    return int(math.log2(image_size)) - 2  # 4x4 -> image_size in this many doublings


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN initialization: conv weights N(0, 0.02), norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z [B, nz] (or [B, nz, 1, 1]) and optional labels y [B] -> images [B, nc, S, S] in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64,
                 num_classes: int | None = None, embed_dim: int | None = None):
        super().__init__()
        levels = _levels(image_size)
        self.nz, self.image_size, self.num_classes = nz, image_size, num_classes
        in_dim = nz
        self.embed = None
        if num_classes is not None:
            embed_dim = embed_dim or nz
            self.embed = nn.Embedding(num_classes, embed_dim)
            in_dim += embed_dim
        ch = ngf * 2 ** (levels - 1)
        layers = [nn.ConvTranspose2d(in_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z = z.reshape(z.shape[0], -1)
        if self.embed is not None:
            if y is None:
                raise ValueError("y: this generator is class-conditional; pass labels y")
            z = torch.cat([z, self.embed(y).to(z.dtype)], dim=1)
        return self.net(z[:, :, None, None])


def conv_trunk(ndf: int, nc: int, image_size: int, norm: str) -> tuple[nn.Sequential, int]:
    """Stride-2 conv stack down to 4x4: returns (module, channels at 4x4). norm: batch, layer, none."""
    if norm not in ("batch", "layer", "none"):
        raise ValueError(f"norm: expected 'batch', 'layer' or 'none', got {norm!r}")
    levels = _levels(image_size)
    layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=norm == "none"), nn.LeakyReLU(0.2)]
    ch = ndf
    for _ in range(levels - 1):
        layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm == "none"))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(ch * 2))
        elif norm == "layer":  # LayerNorm over (C, H, W) of each sample, per-channel affine
            layers.append(nn.GroupNorm(1, ch * 2))
        layers.append(nn.LeakyReLU(0.2))
        ch *= 2
    return nn.Sequential(*layers), ch


class ProjectionHead(nn.Module):
    """score = w . h + b (+ <embed(y), h> when conditional), h the flattened 4x4 features."""

    def __init__(self, features: int, num_classes: int | None):
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes is not None else None

    def forward(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("y: this discriminator is class-conditional; pass labels y")
            out = out + (self.embed(y).to(h.dtype) * h).sum(1)
        return out


class DCGANDiscriminator(nn.Module):
    """images [B, nc, S, S] (+ labels y) -> one logit per sample [B]. BatchNorm as in the paper
    (norm='batch'); use WGANGPCritic for a gradient-penalty critic."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64, num_classes: int | None = None,
                 norm: str = "batch"):
        super().__init__()
        self.trunk, ch = conv_trunk(ndf, nc, image_size, norm)
        self.head = ProjectionHead(ch * 16, num_classes)
        dcgan_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1), y)
