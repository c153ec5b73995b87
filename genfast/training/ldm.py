"""Latent diffusion training in two stages within one run (Rombach et al. 2022):

1. steps [0, autoencoder_steps): the KL autoencoder, Bernoulli reconstruction NLL + kl_weight * KL, the
   latent drawn by genfast's fused reparameterize_kl;
2. then, once: latent_scale = 1 / std of the training set's latent means; from there on the U-Net learns
   to predict the noise of noised latents (encoder frozen, latents drawn from the posterior by the fused
   reparameterization), with label dropout for classifier-free guidance, AdamW with a 200-step warm-up,
   gradient clipping and an EMA of the U-Net, as the pixel-space DDPM kind.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genfast.losses import vae_loss
from genfast.ops import randn


class LDMTrainer:
    default_lr = 5e-4
    autoencoder_lr = 1e-3

    def __init__(self, nets, config, lr, ddp, data):
        from genfast.samplers import NoiseSchedule

        self.ldm, self.ema = nets["ldm"], nets["ema"]
        self.ema.load_state_dict(self.ldm.unet.state_dict())
        self.ema.eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.autoencoder = ddp(self.ldm.autoencoder)
        self.unet = ddp(self.ldm.unet)
        self.opt_ae = torch.optim.Adam(self.ldm.autoencoder.parameters(), lr=self.autoencoder_lr)
        self.opt = torch.optim.AdamW(self.ldm.unet.parameters(), lr=lr or self.default_lr, weight_decay=0.0)
        self.lr = lr or self.default_lr
        self.config = config
        self.images = data.images  # to measure the latent scale over the whole training set
        device = next(self.ldm.parameters()).device
        self.alphas_cumprod = NoiseSchedule.from_config(**config["schedule"]).alphas_cumprod.to(device)
        self.step_count = 0

    def optimizers(self):
        return {"opt_ae": self.opt_ae, "opt": self.opt}

    def networks(self):
        return {"ldm": self.ldm, "ema": self.ema}

    def sampling_state(self):
        state = self.ldm.state_dict()
        state.update({f"unet.{k}": v for k, v in self.ema.state_dict().items()})
        return state

    @torch.no_grad()
    def preview(self, n: int):
        """During the autoencoder stage (no latent scale yet, nothing to sample): training images above
        their reconstructions (decoder means), rows of up to 8 -> (images, per row). Afterwards None."""
        if float(self.ldm.latent_scale) != 0.0:
            return None
        was = self.ldm.autoencoder.training
        self.ldm.autoencoder.eval()
        x = self.images[:max(1, n // 2)].to(self.ldm.latent_scale.device)
        mu, _ = self.ldm.autoencoder.encode(x)
        recon = torch.sigmoid(self.ldm.autoencoder.decode(mu))
        self.ldm.autoencoder.train(was)
        width = min(8, len(x))
        rows = [t for i in range(0, len(x), width) for t in (x[i:i + width], recon[i:i + width])]
        return torch.cat(rows).cpu(), width

    def train_step(self, source) -> dict:
        if self.step_count < self.config["autoencoder_steps"]:
            out = self._autoencoder_step(source)
        else:
            out = self._diffusion_step(source)
        self.step_count += 1
        return out

    def _autoencoder_step(self, source) -> dict:
        x, _ = source.next()
        recon, mu, logvar, z, kl = self.autoencoder(x)
        loss = vae_loss(recon, x, kl, beta=self.config["kl_weight"])
        self.opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_ae.step()
        return {"ae_loss": loss.detach(), "kl": kl.detach()}

    def _diffusion_step(self, source) -> dict:
        if float(self.ldm.latent_scale) == 0.0:  # first diffusion step: the encoder is final now
            self.ldm.autoencoder.eval()
            self.ldm.measure_latent_scale(self.images.to(self.ldm.latent_scale.device))
        self.ldm.autoencoder.eval()  # frozen from here on
        x, y = source.next()
        with torch.no_grad():
            z0 = self.ldm.encode_latents(x)
        b = z0.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (b,), device=z0.device)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noise = randn(z0.shape, device=z0.device)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        kw = {}
        unet = self.ldm.unet
        if unet.num_classes is not None and y is not None:
            drop = torch.rand(b, device=z0.device) < self.config.get("p_uncond", 0.1)
            kw["class_labels"] = torch.where(drop, torch.full_like(y, unet.num_classes), y)
        loss = F.mse_loss(self.unet(zt, t, **kw), noise)
        step = self.step_count - self.config["autoencoder_steps"]
        for g in self.opt.param_groups:
            g["lr"] = self.lr * min(1.0, (step + 1) / 200)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        self.opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
            for e, p in zip(self.ema.buffers(), unet.buffers()):
                e.copy_(p)
        return {"loss": loss.detach()}
