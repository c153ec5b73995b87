"""pix2pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"): a U-Net
generator and a PatchGAN discriminator that sees the input next to the output.

Generator: stride-2 4x4 convs down to 1x1 (LeakyReLU 0.2, BatchNorm except on the outermost and the
innermost layer), transposed convs back up (ReLU, BatchNorm), and a skip connection from encoder layer i
to decoder layer n - i (concatenated channels). There is no z: dropout (0.5, on the innermost decoder
layers) is the only noise, and it stays on at test time as in the paper.
Discriminator: a few stride-2 convs ending in a map of logits, one per overlapping patch of the image
("PatchGAN"); its input is the source image and the (real or generated) target, concatenated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _depth(image_size: int) -> int:
    depth = int(round(math.log2(image_size)))
    if image_size < 4 or 2 ** depth != image_size:
        raise ValueError(f"image_size: expected a power of two >= 4, got {image_size}")
    return depth


class UNetGenerator(nn.Module):
    """source [B, in_channels, S, S] in [-1, 1] -> target [B, out_channels, S, S] in [-1, 1] (tanh).

    base: channels of the outermost layer, doubling per level up to base * max_mult. dropout: the rate
    on the `dropout_layers` innermost decoder layers, applied in training and at test time alike.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, image_size: int = 16, base: int = 16,
                 max_mult: int = 4, dropout: float = 0.5, dropout_layers: int = 2):
        super().__init__()
        depth = _depth(image_size)
        widths = [base * min(2 ** i, max_mult) for i in range(depth)]
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.dropout, self.dropout_layers = dropout, dropout_layers
        self.down = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            norm = 0 < i < depth - 1
            self.down.append(nn.Sequential(*([] if i == 0 else [nn.LeakyReLU(0.2)]),
                                           nn.Conv2d(c, w, 4, 2, 1, bias=not norm),
                                           *([nn.BatchNorm2d(w)] if norm else [])))
            c = w
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            out = widths[i - 1] if i > 0 else out_channels
            cin = c if i == depth - 1 else 2 * c  # the innermost layer has no skip to concatenate
            last = i == 0
            self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, out, 4, 2, 1, bias=last),
                                         *([] if last else [nn.BatchNorm2d(out)])))
            c = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size:
            raise ValueError(f"x: expected [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")
        skips = []
        h = x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        skips.pop()  # the innermost output feeds the decoder directly
        for j, layer in enumerate(self.up):
            if j > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h)
            if j < self.dropout_layers and self.dropout > 0:
                h = F.dropout(h, self.dropout, training=True)  # the generator's only noise, also at test time
        return torch.tanh(h)


class PatchDiscriminator(nn.Module):
    """images [B, in_channels, S, S] (for pix2pix: source and target concatenated) -> patch logits
    [B, 1, S / 2^layers, S / 2^layers]: stride-2 4x4 convs (LeakyReLU 0.2, BatchNorm or InstanceNorm after
    all but the first), then a 3x3 conv to one logit per patch."""

    def __init__(self, in_channels: int = 2, base: int = 32, layers: int = 2, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm: expected 'batch' or 'instance', got {norm!r}")
        mods, c = [], in_channels
        for i in range(layers):
            w = base * 2 ** i
            mods.append(nn.Conv2d(c, w, 4, 2, 1, bias=i == 0))
            if i > 0:
                mods.append(nn.BatchNorm2d(w) if norm == "batch" else nn.InstanceNorm2d(w, affine=True))
            mods.append(nn.LeakyReLU(0.2))
            c = w
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
