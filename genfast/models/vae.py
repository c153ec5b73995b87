"""Convolutional VAE / beta-VAE for 16, 28, 32 and 64 px images, using the fused reparameterization + KL."""
from __future__ import annotations

import torch
from torch import nn

from genfast.ops.vae import reparameterize_kl

DEFAULT_HIDDEN = {16: (32, 64), 28: (32, 64), 32: (32, 64, 128), 64: (32, 64, 128, 256)}


class ConvVAE(nn.Module):
    """Encoder: stride-2 4x4 convs (each halves the size) + a linear layer to (mu, logvar); decoder: the
    mirror image with transposed convs. 28 px -> 7x7 features, 16, 32 and 64 px -> 4x4.

    forward(x) returns (recon, mu, logvar, z, kl): recon is logits (likelihood "bernoulli", use
    BCE-with-logits) or means ("gaussian"); kl as reparameterize_kl(reduction=...) gives it.
    """

    def __init__(self, image_size: int = 28, in_channels: int = 1, latent_dim: int = 16,
                 hidden_channels: tuple[int, ...] | None = None, likelihood: str = "bernoulli"):
        super().__init__()
        if image_size not in DEFAULT_HIDDEN:
            raise ValueError(f"image_size: expected 16, 28, 32 or 64, got {image_size}")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood: expected 'bernoulli' or 'gaussian', got {likelihood!r}")
        hidden = tuple(hidden_channels) if hidden_channels is not None else DEFAULT_HIDDEN[image_size]
        if image_size % (2 ** len(hidden)) != 0:
            raise ValueError(f"hidden_channels: {len(hidden)} halvings do not divide image_size {image_size}")
        self.image_size, self.in_channels, self.latent_dim, self.likelihood = image_size, in_channels, latent_dim, likelihood
        self.feat = image_size // 2 ** len(hidden)
        enc, c = [], in_channels
        for h in hidden:
            enc += [nn.Conv2d(c, h, 4, 2, 1), nn.ReLU(inplace=True)]
            c = h
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = hidden[-1] * self.feat * self.feat
        self.to_stats = nn.Linear(flat, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        dec = []
        rev = list(reversed(hidden))
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU(inplace=True)]
        dec += [nn.ConvTranspose2d(rev[-1], in_channels, 4, 2, 1)]
        self.decoder = nn.Sequential(*dec)
        self._hidden_last = hidden[-1]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.from_latent(z)).view(z.shape[0], self._hidden_last, self.feat, self.feat)
        return self.decoder(h)

    def forward(self, x: torch.Tensor, *, seed=None, offset=0, reduction: str = "batchmean",
                free_bits: float | None = None, logvar_clamp: tuple[float, float] | None = None):
        mu, logvar = self.encode(x)
        z, kl = reparameterize_kl(mu, logvar, seed=seed, offset=offset, reduction=reduction, free_bits=free_bits,
                                  logvar_clamp=logvar_clamp)
        return self.decode(z), mu, logvar, z, kl

    @torch.no_grad()
    def sample(self, n: int, *, seed=None, device=None) -> torch.Tensor:
        """n images from the prior: probabilities (bernoulli) or means (gaussian)."""
        from genfast.ops import randn

        device = device or next(self.parameters()).device
        z = randn((n, self.latent_dim), seed=seed, device=device, dtype=next(self.parameters()).dtype)
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out
