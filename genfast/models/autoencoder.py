"""The plain (deterministic) convolutional autoencoder: an encoder to a latent code, a decoder back, trained
on the reconstruction loss alone -- the model the VAE adds its prior and KL term to.

An autoencoder has no prior to sample from. To generate anyway (and to be compared with the generative
models), genfast fits a Gaussian to the codes of the training images (mean and the Cholesky factor of the
covariance, kept in buffers) and decodes draws from it.
"""
from __future__ import annotations

import torch
from torch import nn

from genfast.models.vae import DEFAULT_HIDDEN


class ConvAutoencoder(nn.Module):
    """Encoder: stride-2 4x4 convs + a linear layer to the code [B, latent_dim]; decoder: the mirror image.
    forward(x) -> (reconstruction logits, code); the likelihood is Bernoulli (BCE-with-logits)."""

    def __init__(self, image_size: int = 16, in_channels: int = 1, latent_dim: int = 16,
                 hidden_channels: tuple[int, ...] | None = None):
        super().__init__()
        if image_size not in DEFAULT_HIDDEN:
            raise ValueError(f"image_size: expected 16, 28, 32 or 64, got {image_size}")
        hidden = tuple(hidden_channels) if hidden_channels is not None else DEFAULT_HIDDEN[image_size]
        if image_size % (2 ** len(hidden)):
            raise ValueError(f"hidden_channels: {len(hidden)} halvings do not divide image_size {image_size}")
        self.image_size, self.in_channels, self.latent_dim = image_size, in_channels, latent_dim
        self.feat, self._last = image_size // 2 ** len(hidden), hidden[-1]
        enc, c = [], in_channels
        for h in hidden:
            enc += [nn.Conv2d(c, h, 4, 2, 1), nn.ReLU()]
            c = h
        flat = hidden[-1] * self.feat ** 2
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, latent_dim))
        self.from_latent = nn.Linear(latent_dim, flat)
        dec, rev = [], list(reversed(hidden))
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU()]
        dec.append(nn.ConvTranspose2d(rev[-1], in_channels, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("prior_mean", torch.zeros(latent_dim))
        self.register_buffer("prior_scale_tril", torch.eye(latent_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.from_latent(z)).view(z.shape[0], self._last, self.feat, self.feat)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    @torch.no_grad()
    def fit_prior(self, codes: torch.Tensor) -> None:
        """Fit N(mean, L L^T) to codes [N, latent_dim] (covariance with a small ridge for a safe Cholesky)."""
        codes = codes.double()
        mean = codes.mean(0)
        centered = codes - mean
        cov = centered.T @ centered / max(len(codes) - 1, 1)
        cov += 1e-5 * cov.diagonal().mean().clamp_min(1e-8) * torch.eye(len(mean), dtype=cov.dtype, device=cov.device)
        self.prior_mean.copy_(mean)
        self.prior_scale_tril.copy_(torch.linalg.cholesky(cov))

    def codes_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise [B, latent_dim] -> draws from the fitted Gaussian."""
        return self.prior_mean.to(noise.dtype) + noise @ self.prior_scale_tril.to(noise.dtype).T
