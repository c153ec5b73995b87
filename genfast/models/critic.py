"""WGAN-GP critic (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs"): a DCGAN-style conv
critic WITHOUT BatchNorm -- the gradient penalty is per sample, and batch statistics would couple the
samples -- with layer normalization (norm='layer', the paper's recommendation) or none. The
class-conditional variant uses the projection discriminator head (Miyato & Koyama 2018).
"""
from __future__ import annotations

import torch
from torch import nn

from genfast.models.dcgan import ProjectionHead, conv_trunk, dcgan_init


class WGANGPCritic(nn.Module):
    """images [B, nc, S, S] (S = 16, 32 or 64) and optional labels y [B] -> one score per sample [B]."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64, norm: str = "layer",
                 num_classes: int | None = None):
        super().__init__()
        if norm == "batch":
            raise ValueError("norm: a WGAN-GP critic must not use BatchNorm (Gulrajani et al. 2017); use 'layer' or 'none'")
        self.trunk, ch = conv_trunk(ndf, nc, image_size, norm)
        self.head = ProjectionHead(ch * 16, num_classes)
        dcgan_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1), y)
