"""A small class-conditional U-Net for DDPM/DDIM (Ho et al. 2020; Dhariwal & Nichol 2021 conditioning).

`UNet(x, t, class_labels=None)` predicts a tensor shaped like x (2x channels with learn_sigma=True, for
DDPM's learned variance). The class embedding has one extra row, the null class (index
`num_classes`), used for unconditional samples and for classifier-free guidance: labels equal to
`null_class` (or `class_labels=None`) mean "no class". The defaults are small enough for CPU tests.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of timesteps t ([B] or 0-dim, int or float)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().reshape(-1, 1) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the (time + class) embedding added between the convs."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention_heads: {heads} does not divide the {channels} channels")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        y = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Class-conditional U-Net.

    in_channels / out_channels: image channels (out defaults to in; doubled with learn_sigma).
    base_channels, channel_mults: widths per resolution level (each level after the first halves H, W).
    num_res_blocks: res blocks per level. attention_levels: level indices with self-attention
    (level 0 = full resolution). num_classes: None for an unconditional model; else class labels in
    [0, num_classes) and the null class `num_classes` for classifier-free guidance.
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (1,), attention_heads: int = 4, num_classes: int | None = None,
                 dropout: float = 0.0, groups: int = 8, learn_sigma: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels * (2 if learn_sigma else 1)
        self.num_classes = num_classes
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        skips = [base_channels]
        ch = base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, width, emb_dim, groups, dropout))
                ch = width
                if level in attention_levels:
                    blocks.append(SelfAttention(ch, attention_heads, groups))
                skips.append(ch)
            if level + 1 < len(widths):
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
            self.down.append(blocks)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, groups, dropout), SelfAttention(ch, attention_heads, groups),
                                  ResBlock(ch, ch, emb_dim, groups, dropout)])

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), width, emb_dim, groups, dropout))
                ch = width
                if level in attention_levels:
                    blocks.append(SelfAttention(ch, attention_heads, groups))
            if level > 0:
                blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
            self.up.append(blocks)

        self.head = nn.Sequential(_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1))
        self.downsample_factor = 2 ** (len(widths) - 1)

    @property
    def null_class(self) -> int | None:
        """The class index meaning "unconditional" (for classifier-free guidance)."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % self.downsample_factor or x.shape[-2] % self.downsample_factor:
            raise ValueError(f"x: H and W must be multiples of {self.downsample_factor}, got {tuple(x.shape[-2:])}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t: expected a scalar or [{b}] timesteps, got shape {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            if class_labels.shape != (b,):
                raise ValueError(f"class_labels: expected [{b}] labels, got shape {tuple(class_labels.shape)}")
            emb = emb + self.class_embedding(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels: this U-Net was built with num_classes=None (unconditional)")

        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb) if isinstance(block, ResBlock) else block(h)
                if not isinstance(block, SelfAttention):
                    hs.append(h)
                else:
                    hs[-1] = h
        for block in self.mid:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for blocks in self.up:
            for block in blocks:
                if isinstance(block, ResBlock):
                    h = block(torch.cat([h, hs.pop()], dim=1), emb)
                else:
                    h = block(h)
        return self.head(h)
