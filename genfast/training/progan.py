"""ProGAN training (Karras et al. 2018): WGAN-GP with the drift term, one critic step per generator step,
Adam (lr 1e-3, betas (0, 0.99)), an exponential moving average of the generator for sampling (decay
0.999, warmed up as min(0.999, (1 + step) / (10 + step))), and the
resolution schedule: `phase_steps` steps at 4x4, then for each new resolution `phase_steps` steps of
fade-in (alpha rising linearly from 0 to 1) and `phase_steps` steps stable. The stage is a function of
the step alone, so --resume continues exactly. The real images are average-pooled to the current
resolution and, during a fade-in, blended with their 2x-coarser version as the generator's output is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genfast.losses import wgan_d_loss, wgan_g_loss
from genfast.ops import randn
from genfast.ops.gradient_penalty import gradient_penalty, reference_gradient_penalty
from genfast.training.data import to_signed


def stage_at(step: int, phase_steps: int, levels: int) -> tuple[int, float]:
    """(level, alpha) at `step`: phase 0 stable at 4x4, then fade-in / stable pairs per level."""
    phase = min(step // phase_steps, 2 * levels - 2)
    level = (phase + 1) // 2
    if phase % 2 == 1:  # fading level in
        return level, min(1.0, (step - phase * phase_steps) / phase_steps)
    return level, 1.0


def real_at_stage(x: torch.Tensor, level: int, alpha: float, levels: int) -> torch.Tensor:
    """Real images (full size) at the stage's resolution, faded like the generator's output."""
    factor = 2 ** (levels - 1 - level)
    x = F.avg_pool2d(x, factor) if factor > 1 else x
    if alpha < 1.0:
        coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(coarse, x, alpha)
    return x


class ProGANTrainer:
    default_lr = 1e-3

    def __init__(self, nets, config, lr, ddp, penalty_impl: str = "genfast"):
        self.generator, self.critic, self.sampler = nets["generator"], nets["critic"], nets["sampler"]
        self.sampler.generator.load_state_dict(self.generator.state_dict())  # the average starts at G
        for p in self.sampler.parameters():
            p.requires_grad_(False)
        # the blocks of resolutions not reached yet get no gradient: DDP must not wait for them
        self.g = ddp(self.generator, find_unused_parameters=True)
        self.d = ddp(self.critic, find_unused_parameters=True)
        lr = lr or self.default_lr
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        self.config = config
        self.levels = len(config["generator"]["channels"])
        self.phase_steps = int(config["phase_steps"])
        self.penalty_fn = gradient_penalty if penalty_impl == "genfast" else reference_gradient_penalty
        self.step_count = 0

    def optimizers(self):
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def networks(self):
        return {"generator": self.generator, "critic": self.critic, "sampler": self.sampler}

    def sampling_state(self):
        return self.sampler.state_dict()

    def train_step(self, source) -> dict:
        level, alpha = stage_at(self.step_count, self.phase_steps, self.levels)
        for lv in range(min(level, self.levels - 1)):  # lower resolutions are done: keep their generator
            if self.step_count >= (2 * lv + 1) * self.phase_steps and not bool(self.sampler.snapshot_done[lv]):
                self.sampler.take_snapshot(lv)
        for net in (self.generator, self.critic, self.sampler.generator):
            net.set_stage(level, alpha)
        x, _ = source.next()
        real = real_at_stage(to_signed(x), level, alpha, self.levels)
        b, nz = real.shape[0], self.generator.nz

        # critic: E[D(fake)] - E[D(real)] + gradient penalty (genfast's fused op) + drift * E[D(real)^2]
        with torch.no_grad():
            fake = self.generator(randn([b, nz], device=real.device))
        d_real, d_fake = self.d(real), self.d(fake)
        penalty = self.penalty_fn(self.d, real, fake, weight=self.config["penalty_weight"], mode="two-sided")
        d_loss = wgan_d_loss(d_real, d_fake) + penalty + self.config["drift"] * d_real.square().mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        # generator, against the frozen critic (unwrapped under DDP: its reducer would wait for gradients)
        critic = self.critic
        for p in critic.parameters():
            p.requires_grad_(False)
        try:
            g_loss = wgan_g_loss(critic(self.g(randn([b, nz], device=real.device))))
        finally:
            for p in critic.parameters():
                p.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()

        # warmed-up decay (as the DDPM kind's EMA): short runs would otherwise sample near the initial weights
        decay = min(self.config["ema_decay"], (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for e, p in zip(self.sampler.generator.parameters(), self.generator.parameters()):
                e.lerp_(p, 1 - decay)
        self.step_count += 1
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "penalty": penalty.detach(),
                "level": torch.tensor(float(level)), "alpha": torch.tensor(alpha)}


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
