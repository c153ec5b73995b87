"""Losses of generative models: GAN losses (this section) and VAE losses.

Sections are kept apart so that each can be read (and merged) on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# =============================================================================================
# GAN losses
# =============================================================================================
# Notation: D(x) is the discriminator's raw output (logit / critic score), one value per sample,
# `real` = D(x_real), `fake` = D(G(z)). Every loss returns the mean over the batch. Logit-based losses
# use the log-sigmoid identities (softplus), which are exact and never overflow:
#   -log sigmoid(t) = softplus(-t),   -log(1 - sigmoid(t)) = softplus(t).


def _scores(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor of discriminator outputs")
    if t.dim() == 2 and t.shape[1] == 1:
        t = t.squeeze(1)
    return t


def minimax_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Minimax (standard) GAN discriminator loss, Goodfellow et al. 2014, "Generative Adversarial Nets":
    L_D = -E[log D(x)] - E[log(1 - D(G(z)))] = mean softplus(-real) + mean softplus(fake)."""
    real, fake = _scores(real, "real"), _scores(fake, "fake")
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def minimax_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Minimax (saturating) generator loss, Goodfellow et al. 2014: L_G = E[log(1 - D(G(z)))]
    = -mean softplus(fake). Saturates when D rejects the samples; see `nonsaturating_g_loss`."""
    return -F.softplus(_scores(fake, "fake")).mean()


def nonsaturating_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss (Goodfellow et al. 2014, section 3): the same as the minimax
    discriminator loss, mean softplus(-real) + mean softplus(fake)."""
    return minimax_d_loss(real, fake)


def nonsaturating_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, Goodfellow et al. 2014 (section 3): L_G = -E[log D(G(z))]
    = mean softplus(-fake). Strong gradients early in training; the default of DCGAN and StyleGAN."""
    return F.softplus(-_scores(fake, "fake")).mean()


def lsgan_d_loss(real: torch.Tensor, fake: torch.Tensor, a: float = 0.0, b: float = 1.0) -> torch.Tensor:
    """Least-squares GAN discriminator loss, Mao et al. 2017, "Least Squares Generative Adversarial Networks":
    L_D = 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2] (labels a = 0 fake, b = 1 real)."""
    real, fake = _scores(real, "real"), _scores(fake, "fake")
    return 0.5 * ((real - b) ** 2).mean() + 0.5 * ((fake - a) ** 2).mean()


def lsgan_g_loss(fake: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Least-squares GAN generator loss, Mao et al. 2017: L_G = 1/2 E[(D(G(z)) - c)^2], c = 1."""
    return 0.5 * ((_scores(fake, "fake") - c) ** 2).mean()


def wgan_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein GAN critic loss, Arjovsky et al. 2017, "Wasserstein GAN": L_D = E[D(G(z))] - E[D(x)].
    The critic must be 1-Lipschitz: add genfast.ops.gradient_penalty (Gulrajani et al. 2017, WGAN-GP)."""
    return _scores(fake, "fake").mean() - _scores(real, "real").mean()


def wgan_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein GAN generator loss, Arjovsky et al. 2017: L_G = -E[D(G(z))]."""
    return -_scores(fake, "fake").mean()


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss, Lim & Ye 2017 ("Geometric GAN"), used by Miyato et al. 2018 (SN-GAN) and
    BigGAN: L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    real, fake = _scores(real, "real"), _scores(fake, "fake")
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss (Lim & Ye 2017; Miyato et al. 2018): L_G = -E[D(G(z))]."""
    return -_scores(fake, "fake").mean()


GAN_LOSSES = {
    "minimax": (minimax_d_loss, minimax_g_loss),
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss),
    "lsgan": (lsgan_d_loss, lsgan_g_loss),
    "wgan": (wgan_d_loss, wgan_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
}


def gan_losses(name: str):
    """(discriminator loss, generator loss) of `name`: minimax, nonsaturating, lsgan, wgan, hinge."""
    if name not in GAN_LOSSES:
        raise ValueError(f"name: unknown GAN loss {name!r}; choose one of {', '.join(GAN_LOSSES)}")
    return GAN_LOSSES[name]

# ============================= end of GAN losses =============================================
