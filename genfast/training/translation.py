"""Training of the image-to-image models on tasks derived from any image data (genfast.training.zoo.task_pair):

  pix2pix   edges -> image. Discriminator: BCE on PatchGAN logits of (source, target) vs (source, G(source)),
            halved (Isola et al.); generator: non-saturating BCE + l1_weight * |G(source) - target|_1.
  cyclegan  A (images as they are) <-> B (bold ink on paper), unpaired: A and B come from two different
            batches. Generators: least-squares GAN loss on both, cycle_weight * (|F(G(a)) - a|_1 +
            |G(F(b)) - b|_1) + the optional identity loss identity_weight * cycle_weight * (|G(b) - b|_1 +
            |F(a) - a|_1) (off by default: domain B is domain A inverted, and it pulls towards no change); each
            discriminator: least-squares loss, halved, on real images vs fakes from a history pool of 50.
  srresnet  4x average-pooled -> image, pixel MSE (the SRResNet-MSE baseline of Ledig et al.).
  srgan     the same for its first pretrain_steps steps (the paper initializes SRGAN from SRResNet), then
            content loss = MSE between the digit classifier's last conv features of G(source) and of the
            target, plus adversarial_weight * the non-saturating generator loss; discriminator: BCE.

Adam (2e-4, betas (0.5, 0.999)) for pix2pix and CycleGAN as the papers; 1e-4, betas (0.9, 0.999) for SRGAN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genfast.losses import lsgan_d_loss, lsgan_g_loss
from genfast.training.data import from_signed, to_signed
from genfast.training.zoo import task_pair


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class _Frozen:
    """Parameters of `modules` with requires_grad off for the block (the generator's step)."""

    def __init__(self, *modules):
        self.params = [p for m in modules for p in m.parameters()]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


class Pix2PixTrainer:
    default_lr = 2e-4

    def __init__(self, nets, config, lr, ddp):
        self.generator, self.discriminator = nets["generator"], nets["discriminator"]
        self.g, self.d = ddp(self.generator), ddp(self.discriminator)
        lr = lr or self.default_lr
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.l1_weight = config["l1_weight"]

    def optimizers(self):
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def networks(self):
        return {"generator": self.generator, "discriminator": self.discriminator}

    def sampling_state(self):
        return self.generator.state_dict()

    def train_step(self, source) -> dict:
        x, _ = source.next()
        src, tgt = (to_signed(v) for v in task_pair("pix2pix", x))
        fake = self.g(src)
        d_loss = 0.5 * (_bce(self.d(torch.cat([src, tgt], 1)), True) +
                        _bce(self.d(torch.cat([src, fake.detach()], 1)), False))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        with _Frozen(self.discriminator):
            adv = _bce(self.discriminator(torch.cat([src, fake], 1)), True)
        l1 = (fake - tgt).abs().mean()
        g_loss = adv + self.l1_weight * l1
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d_loss": d_loss.detach(), "g_adv": adv.detach(), "l1": l1.detach()}


class CycleGANTrainer:
    default_lr = 2e-4

    def __init__(self, nets, config, lr, ddp):
        self.cyclegan, self.disc_a, self.disc_b = nets["cyclegan"], nets["disc_a"], nets["disc_b"]
        self.pool_a, self.pool_b = nets["pool_a"], nets["pool_b"]
        self.g_ab, self.g_ba = ddp(self.cyclegan.a_to_b), ddp(self.cyclegan.b_to_a)
        self.d_a, self.d_b = ddp(self.disc_a), ddp(self.disc_b)
        lr = lr or self.default_lr
        self.opt_g = torch.optim.Adam(self.cyclegan.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(list(self.disc_a.parameters()) + list(self.disc_b.parameters()), lr=lr,
                                      betas=(0.5, 0.999))
        self.config = config

    def optimizers(self):
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def networks(self):
        return {"cyclegan": self.cyclegan, "disc_a": self.disc_a, "disc_b": self.disc_b, "pool_a": self.pool_a,
                "pool_b": self.pool_b}

    def sampling_state(self):
        return self.cyclegan.state_dict()

    def train_step(self, source) -> dict:
        # unpaired: domain A from one batch, domain B made from the images of the next
        a = to_signed(source.next()[0])
        b = to_signed(task_pair("cyclegan", source.next()[0], "a2b")[1])
        lam, lam_id = self.config["cycle_weight"], self.config["identity_weight"] * self.config["cycle_weight"]
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        with _Frozen(self.disc_a, self.disc_b):
            adv = lsgan_g_loss(self.disc_b(fake_b).flatten()) + lsgan_g_loss(self.disc_a(fake_a).flatten())
        cycle = (self.g_ba(fake_b) - a).abs().mean() + (self.g_ab(fake_a) - b).abs().mean()
        g_loss = adv + lam * cycle
        if lam_id > 0:
            g_loss = g_loss + lam_id * ((self.g_ab(b) - b).abs().mean() + (self.g_ba(a) - a).abs().mean())
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()

        old_b, old_a = self.pool_b.query(fake_b.detach()), self.pool_a.query(fake_a.detach())
        d_loss = 0.5 * (lsgan_d_loss(self.d_b(b).flatten(), self.d_b(old_b).flatten()) +
                        lsgan_d_loss(self.d_a(a).flatten(), self.d_a(old_a).flatten()))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return {"d_loss": d_loss.detach(), "g_adv": adv.detach(), "cycle": cycle.detach()}


class SRTrainer:
    """srresnet (pixel MSE) and srgan (content + adversarial after a pixel-MSE warm-up)."""

    default_lr = 1e-4

    def __init__(self, kind, nets, config, lr, ddp):
        self.kind = kind
        self.generator = nets["generator"]
        self.g = ddp(self.generator)
        lr = lr or self.default_lr
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.9, 0.999))
        self.discriminator = nets.get("discriminator")
        self.config = config
        self.step_count = 0
        if self.discriminator is not None:
            from genfast.training.quality import load_classifier

            self.d = ddp(self.discriminator)
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.9, 0.999))
            self.features = load_classifier(next(self.generator.parameters()).device)

    def optimizers(self):
        opts = {"opt_g": self.opt_g}
        if self.discriminator is not None:
            opts["opt_d"] = self.opt_d
        return opts

    def networks(self):
        nets = {"generator": self.generator}
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    def sampling_state(self):
        return self.generator.state_dict()

    def train_step(self, source) -> dict:
        x, _ = source.next()
        src, hr = (to_signed(v) for v in task_pair(self.kind, x))
        adversarial = self.discriminator is not None and self.step_count >= self.config["pretrain_steps"]
        self.step_count += 1
        sr = self.g(src)
        if not adversarial:
            loss = F.mse_loss(sr, hr)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            return {"mse": loss.detach()}
        d_loss = _bce(self.d(hr), True) + _bce(self.d(sr.detach()), False)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        with torch.no_grad():
            target_features = self.features.feature_maps(from_signed(hr))
        content = F.mse_loss(self.features.feature_maps((sr + 1) / 2), target_features)
        with _Frozen(self.discriminator):
            adv = _bce(self.discriminator(sr), True)
        g_loss = content + self.config["adversarial_weight"] * adv
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d_loss": d_loss.detach(), "content": content.detach(), "g_adv": adv.detach()}
