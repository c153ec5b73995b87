"""Losses of generative models: GAN losses and VAE losses (one section each)."""
from __future__ import annotations

import math

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


# =============================================================================================
# VAE losses
# =============================================================================================
# Conventions (per sample, summed over every non-batch element, then averaged over the batch, the
# same convention as genfast.ops.reparameterize_kl(reduction="batchmean")): the loss is the negative
# ELBO in nats, -E[log p(x|z)] + beta * KL(q(z|x) || N(0, I)).
#   Bernoulli:  -log p(x|z) = BCE-with-logits(recon_logits, x), x in [0, 1]
#   Gaussian:   -log p(x|z) = sum ((x - mean)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2)
#               (with sigma = 1 this is 0.5 * MSE-sum plus a constant; codes using plain MSE-sum weight
#               the reconstruction twice as much relative to the KL)
VAE_LIKELIHOODS = ("bernoulli", "gaussian")


def vae_reconstruction_nll(recon: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli", *,
                           sigma: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """-log p(x | z) per sample (reduction "none"), its batch mean ("batchmean") or sum ("sum").

    recon: logits (bernoulli) or means (gaussian), same shape as x (B, ...).
    """
    if likelihood not in VAE_LIKELIHOODS:
        raise ValueError(f"likelihood: expected one of {', '.join(VAE_LIKELIHOODS)}, got {likelihood!r}")
    if recon.shape != x.shape:
        raise ValueError(f"recon: shape {tuple(recon.shape)} differs from x's shape {tuple(x.shape)}")
    if reduction not in ("batchmean", "sum", "none"):
        raise ValueError(f"reduction: expected batchmean, sum or none, got {reduction!r}")
    if likelihood == "bernoulli":
        per_elem = F.binary_cross_entropy_with_logits(recon.float(), x.float(), reduction="none")
    else:
        if not sigma > 0:
            raise ValueError(f"sigma: must be > 0, got {sigma}")
        per_elem = (x.float() - recon.float()) ** 2 / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)
    per_sample = per_elem.reshape(x.shape[0], -1).sum(1)
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def vae_loss(recon: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, *, likelihood: str = "bernoulli",
             beta: float = 1.0, sigma: float = 1.0, capacity: float | None = None,
             gamma: float | None = None) -> torch.Tensor:
    """Batch-mean negative ELBO: reconstruction NLL + beta * kl (kl: batch-mean KL, e.g. from
    reparameterize_kl(..., reduction="batchmean")).

    With `capacity` (and `gamma`) the KL term is Burgess et al. 2018's gamma * |kl - capacity| instead
    of beta * kl (beta is then ignored).
    """
    rec = vae_reconstruction_nll(recon, x, likelihood, sigma=sigma)
    kl = kl.float()
    if kl.dim() != 0:
        raise ValueError(f"kl: expected the batch-mean KL (a scalar), got shape {tuple(kl.shape)}")
    if capacity is not None:
        if gamma is None:
            raise ValueError("gamma: capacity annealing needs gamma (Burgess et al. use 1000 for dSprites)")
        return rec + gamma * (kl - capacity).abs()
    return rec + beta * kl


class ConstantBeta:
    """beta(step) = beta."""

    def __init__(self, beta: float = 1.0):
        self.beta = float(beta)

    def __call__(self, step: int) -> float:
        return self.beta


class LinearWarmupBeta:
    """beta rises linearly from `start` at step 0 to `beta` at `warmup_steps`, then stays (KL annealing,
    Bowman et al. 2016)."""

    def __init__(self, beta: float = 1.0, warmup_steps: int = 10000, start: float = 0.0):
        if warmup_steps <= 0:
            raise ValueError(f"warmup_steps: must be > 0, got {warmup_steps}")
        self.beta, self.warmup_steps, self.start = float(beta), int(warmup_steps), float(start)

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0) / self.warmup_steps, 1.0)
        return self.start + (self.beta - self.start) * frac


class CyclicalBeta:
    """Cyclical annealing (Fu et al. 2019): training is split into cycles of `cycle_steps`; within each,
    beta rises linearly from 0 to `beta` over the first `ratio` of the cycle, then stays at `beta`.
    After `n_cycles` cycles (if given) beta stays at `beta`."""

    def __init__(self, beta: float = 1.0, cycle_steps: int = 10000, ratio: float = 0.5, n_cycles: int | None = None):
        if cycle_steps <= 0:
            raise ValueError(f"cycle_steps: must be > 0, got {cycle_steps}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio: must be in (0, 1], got {ratio}")
        self.beta, self.cycle_steps, self.ratio, self.n_cycles = float(beta), int(cycle_steps), float(ratio), n_cycles

    def __call__(self, step: int) -> float:
        step = max(step, 0)
        if self.n_cycles is not None and step >= self.n_cycles * self.cycle_steps:
            return self.beta
        pos = (step % self.cycle_steps) / self.cycle_steps
        return self.beta * min(pos / self.ratio, 1.0)


class CapacitySchedule:
    """Burgess et al. 2018 ("Understanding disentangling in beta-VAE"): the KL target C rises linearly
    from 0 to `c_max` nats over `steps`; the KL term is gamma * |KL - C(step)|."""

    def __init__(self, c_max: float = 25.0, steps: int = 100000, gamma: float = 1000.0):
        if steps <= 0:
            raise ValueError(f"steps: must be > 0, got {steps}")
        self.c_max, self.steps, self.gamma = float(c_max), int(steps), float(gamma)

    def __call__(self, step: int) -> float:
        """C(step) in nats."""
        return self.c_max * min(max(step, 0) / self.steps, 1.0)

    def loss(self, kl: torch.Tensor, step: int) -> torch.Tensor:
        return self.gamma * (kl - self(step)).abs()


def beta_vae_loss(recon: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, step: int, schedule, *,
                  likelihood: str = "bernoulli", sigma: float = 1.0) -> torch.Tensor:
    """vae_loss with beta (or the capacity, for a CapacitySchedule) taken from `schedule` at `step`."""
    if isinstance(schedule, CapacitySchedule):
        return vae_loss(recon, x, kl, likelihood=likelihood, sigma=sigma, capacity=schedule(step),
                        gamma=schedule.gamma)
    return vae_loss(recon, x, kl, likelihood=likelihood, sigma=sigma, beta=schedule(step))
