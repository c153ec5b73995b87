"""The models the `genfast` command trains and samples from, and the checkpoints that ship inside the package.

Each kind names its networks, builds them from a JSON-able config (so a checkpoint rebuilds its model
without code), and samples images in [0, 1]:

  ddpm      class-conditional U-Net, DDIM or DDPM sampling with classifier-free guidance (fused step)
  dcgan     DCGAN generator (+ BatchNorm discriminator for training)
  wgan-gp   DCGAN generator + layer-norm critic trained with the fused gradient penalty
  vae       conv VAE with the fused reparameterization + KL; beta-vae: the same with beta > 1

`load_model(kind)` loads the embedded checkpoint (genfast/weights/<kind>.safetensors), trained on
scikit-learn's digits at 16 px by the commands in the README; `load_model(kind, path)` a user's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genfast.training.checkpoint import CheckpointError, load_checkpoint, unprefixed

MODEL_KINDS = ("ddpm", "dcgan", "wgan-gp", "vae", "beta-vae")
EMBEDDED = ("ddpm", "dcgan", "wgan-gp", "vae")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # genfast/weights
LATENT_OFFSET = 1 << 41  # stream offset of the starting noise / latents (see GenerativeModel.latent_noise)

# The diffusion schedule of the DDPM kind: cosine betas suit small images (Nichol & Dhariwal 2021);
# trailing spacing keeps 10-step DDIM usable (Lin et al. 2024). Any diffusers DDIM/DDPM config key.
DDPM_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
                 "clip_sample": True, "clip_sample_range": 1.0, "timestep_spacing": "trailing",
                 "variance_type": "fixed_small"}


def default_config(kind: str, channels: int, image_size: int, num_classes: int | None) -> dict[str, Any]:
    """Constructor arguments of the networks of `kind`, for images [channels, image_size, image_size]."""
    if kind == "ddpm":
        levels = 3 if image_size % 4 == 0 else 1
        return {"unet": {"in_channels": channels, "base_channels": 32, "channel_mults": [1, 2, 2][:levels],
                         "num_res_blocks": 1, "attention_levels": [levels - 1], "attention_heads": 4,
                         "num_classes": num_classes, "dropout": 0.1},
                "schedule": dict(DDPM_SCHEDULE), "p_uncond": 0.1}
    if kind in ("dcgan", "wgan-gp"):
        gen = {"nz": 64, "ngf": 64, "nc": channels, "image_size": image_size}
        critic = {"ndf": 64, "nc": channels, "image_size": image_size}
        if kind == "wgan-gp":
            critic["norm"] = "layer"
        return {"generator": gen, "critic": critic}
    if kind in ("vae", "beta-vae"):
        return {"vae": {"image_size": image_size, "in_channels": channels, "latent_dim": 16,
                        "likelihood": "bernoulli"}, "beta": 4.0 if kind == "beta-vae" else 1.0}
    raise ValueError(f"--model: unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def build_networks(kind: str, config: dict[str, Any]) -> dict[str, nn.Module]:
    """The networks of `kind` by name (the first one is what sampling uses)."""
    from genfast.models import ConvVAE, DCGANDiscriminator, DCGANGenerator, UNet, WGANGPCritic

    if kind == "ddpm":
        return {"unet": UNet(**config["unet"])}
    if kind == "dcgan":
        return {"generator": DCGANGenerator(**config["generator"]), "critic": DCGANDiscriminator(**config["critic"])}
    if kind == "wgan-gp":
        return {"generator": DCGANGenerator(**config["generator"]), "critic": WGANGPCritic(**config["critic"])}
    if kind in ("vae", "beta-vae"):
        return {"vae": ConvVAE(**config["vae"])}
    raise ValueError(f"--model: unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def sampling_network(kind: str) -> str:
    return {"ddpm": "unet", "dcgan": "generator", "wgan-gp": "generator"}.get(kind, "vae")


@dataclass
class GenerativeModel:
    """A trained network of one kind, ready to sample."""

    kind: str
    net: nn.Module
    config: dict[str, Any]
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int | None:
        return self.config["unet"].get("num_classes") if self.kind == "ddpm" else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        data = self.meta.get("data", {})
        return data.get("channels", 1), data.get("image_size", 16), data.get("image_size", 16)

    def to(self, device) -> "GenerativeModel":
        self.net.to(device)
        return self

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, labels: torch.Tensor | None = None, sampler: str = "ddim",
               steps: int | None = None, eta: float = 0.0, guidance_scale: float | None = None,
               progress: bool = False, graph: bool = False, init_noise: torch.Tensor | None = None) -> torch.Tensor:
        """n images [n, C, S, S] in [0, 1]. seed: genfast's stream seed. init_noise: the starting noise
        (DDPM) or latent z (GAN, VAE), to draw it elsewhere (e.g. sliced from a bigger batch)."""
        from genfast.training.data import from_signed

        device = next(self.net.parameters()).device
        self.net.eval()
        z = init_noise if init_noise is not None else self.latent_noise(n, seed)
        if self.kind == "ddpm":
            from genfast.samplers import sample_ddim, sample_ddpm

            kw = dict(seed=seed, progress=progress, graph=graph)
            if self.num_classes is not None:
                if labels is None:
                    labels = torch.arange(n, device=device) % self.num_classes
                kw.update(class_labels=labels.to(device), guidance_scale=guidance_scale)
            elif labels is not None or guidance_scale is not None:
                raise ValueError("--label/--guidance-scale: this DDPM model is unconditional")
            schedule = self.config["schedule"]
            if sampler == "ddim":
                x = sample_ddim(self.net, z, schedule, steps=steps or 50, eta=eta, **kw)
            elif sampler == "ddpm":
                x = sample_ddpm(self.net, z, schedule, steps=steps, **kw)
            else:  # euler, euler-a, dpm++2m, dpm++2m-sde (genfast.samplers.sigma.NAMED_SAMPLERS)
                from genfast.samplers.sigma import sample_named

                x = sample_named(sampler, self.net, z, schedule, steps=steps, **kw)
            return from_signed(x.float())
        if labels is not None or guidance_scale is not None:
            raise ValueError(f"--label/--guidance-scale: the {self.kind} model is unconditional")
        if self.kind in ("dcgan", "wgan-gp"):
            return from_signed(self.net(z).float())
        out = self.net.decode(z)
        return torch.sigmoid(out) if self.net.likelihood == "bernoulli" else out.clamp(0, 1)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        if self.kind == "ddpm":
            return (n, *self.image_shape)
        return (n, self.net.nz if self.kind in ("dcgan", "wgan-gp") else self.net.latent_dim)

    def latent_noise(self, n: int, seed: int) -> torch.Tensor:
        """The starting noise (DDPM) or latent z (GAN, VAE) of n samples: genfast's stream at
        LATENT_OFFSET, away from the offsets 0..steps-1 of the sampler's per-step noise."""
        from genfast.ops import randn

        return randn(self.latent_shape(n), seed=seed, offset=LATENT_OFFSET, device=next(self.net.parameters()).device)


def embedded_path(kind: str) -> Path:
    if kind not in EMBEDDED:
        raise ValueError(f"--model: no embedded {kind} model (embedded: {', '.join(EMBEDDED)}); "
                         f"train one with `genfast train {kind}` and pass --checkpoint")
    return WEIGHTS_DIR / f"{kind}.safetensors"


def load_model(kind: str | None, checkpoint=None, device="cpu") -> GenerativeModel:
    """The embedded model of `kind`, or the one in `checkpoint` (whose kind must match, if given)."""
    path = Path(checkpoint) if checkpoint is not None else embedded_path(kind)
    tensors, meta = load_checkpoint(path, "--checkpoint" if checkpoint is not None else f"embedded {kind} model")
    found = meta.get("model")
    if kind is not None and found != kind:
        raise CheckpointError(f"--checkpoint: {path} holds a {found} model, not {kind}")
    config = meta.get("config")
    if found not in MODEL_KINDS or not isinstance(config, dict):
        raise CheckpointError(f"--checkpoint: {path} does not say which model it holds")
    name = sampling_network(found)
    net = build_networks(found, config)[name]
    state = {k: v.float() if v.is_floating_point() else v for k, v in unprefixed("model.", tensors).items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"--checkpoint: {path}: weights do not fit the {found} model "
                              f"({str(exc).splitlines()[0]})") from None
    return GenerativeModel(found, net.to(device).eval(), config, meta)


def ema_copy(net: nn.Module) -> nn.Module:
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
