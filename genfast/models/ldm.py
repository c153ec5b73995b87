"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"):
a KL-regularized autoencoder maps images to a small spatial latent, and a DDPM (genfast.models.UNet)
is trained and sampled in that latent space; samples are decoded back to images.

The first stage (LatentAutoencoder) uses genfast's fused reparameterization + KL; the latents are
multiplied by `latent_scale` (1 / their standard deviation over the training set, the role of Stable
Diffusion's 0.18215) so the diffusion sees unit-variance data. img2img: encode the image, noise its
latent to a strength, denoise, decode.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from genfast.models.unet import UNet
from genfast.ops.vae import reparameterize, reparameterize_kl


class LatentAutoencoder(nn.Module):
    """images [B, C, S, S] in [0, 1] <-> latents [B, latent_channels, S / 2^len(hidden), ...].

    Encoder: 3x3 conv, then per entry of `hidden` a stride-2 4x4 conv (SiLU), then a 3x3 conv to the mean and
    log-variance of the latent; decoder: the mirror image with transposed convs, ending in Bernoulli logits.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, latent_channels: int = 4,
                 hidden: Sequence[int] = (32, 64)):
        super().__init__()
        hidden = list(hidden)
        if image_size % 2 ** len(hidden):
            raise ValueError(f"hidden: {len(hidden)} halvings do not divide image_size {image_size}")
        self.in_channels, self.image_size, self.latent_channels = in_channels, image_size, latent_channels
        self.latent_size = image_size // 2 ** len(hidden)
        enc = [nn.Conv2d(in_channels, hidden[0], 3, padding=1), nn.SiLU()]
        c = hidden[0]
        for h in hidden:
            enc += [nn.Conv2d(c, h, 4, 2, 1), nn.SiLU()]
            c = h
        enc.append(nn.Conv2d(c, 2 * latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent_channels, hidden[-1], 3, padding=1), nn.SiLU()]
        c = hidden[-1]
        for h in reversed(hidden):
            dec += [nn.ConvTranspose2d(c, h, 4, 2, 1), nn.SiLU()]
            c = h
        dec.append(nn.Conv2d(c, in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size:
            raise ValueError(f"x: expected [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, *, seed=None, offset=0):
        """-> (reconstruction logits, mu, logvar, z, batch-mean KL), z drawn by the fused op."""
        mu, logvar = self.encode(x)
        z, kl = reparameterize_kl(mu, logvar, seed=seed, offset=offset, logvar_clamp=(-30.0, 20.0))
        return self.decode(z), mu, logvar, z, kl


class LatentDiffusion(nn.Module):
    """The first stage and the latent U-Net. encode_latents / decode_latents convert between images in
    [0, 1] and the scaled latents the U-Net denoises."""

    def __init__(self, autoencoder: dict, unet: dict):
        super().__init__()
        self.autoencoder = LatentAutoencoder(**autoencoder)
        self.unet = UNet(**unet)
        if self.unet.in_channels != self.autoencoder.latent_channels:
            raise ValueError(f"unet: in_channels {self.unet.in_channels} differs from the autoencoder's "
                             f"{self.autoencoder.latent_channels} latent channels")
        self.register_buffer("latent_scale", torch.tensor(0.0))  # 0: not measured yet

    @property
    def num_classes(self) -> int | None:
        return self.unet.num_classes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        a = self.autoencoder
        return a.latent_channels, a.latent_size, a.latent_size

    @torch.no_grad()
    def measure_latent_scale(self, images: torch.Tensor, batch: int = 256) -> float:
        """Set latent_scale = 1 / std of the latent means of `images` (the whole training set)."""
        mus = torch.cat([self.autoencoder.encode(images[i:i + batch])[0] for i in range(0, len(images), batch)])
        std = float(mus.float().std())
        self.latent_scale.fill_(1.0 / std if std > 0 and math.isfinite(std) else 1.0)
        return float(self.latent_scale)

    def _scale(self) -> float:
        s = float(self.latent_scale)
        if s <= 0:
            raise ValueError("latent_scale: the latent diffusion model has not measured its latent scale yet")
        return s

    def encode_latents(self, x: torch.Tensor, *, seed=None, offset=0) -> torch.Tensor:
        """images [B, C, S, S] in [0, 1] -> a draw from the posterior, scaled (fused reparameterization)."""
        mu, logvar = self.autoencoder.encode(x)
        return reparameterize(mu, logvar.clamp(-30.0, 20.0), seed=seed, offset=offset) * self._scale()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """scaled latents -> images in [0, 1]."""
        return torch.sigmoid(self.autoencoder.decode(z / self._scale()))

    def forward(self, z: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's noise prediction on scaled latents (what the samplers call)."""
        return self.unet(z, t, class_labels=class_labels)

    @property
    def null_class(self) -> int | None:
        return self.unet.null_class
