"""The models the `genfast` command trains and samples from, and the checkpoints that ship inside the package.

Each kind names its networks, builds them from a JSON-able config (so a checkpoint rebuilds its model
without code), and samples images in [0, 1]:

  ddpm      class-conditional U-Net, DDIM or DDPM sampling with classifier-free guidance (fused step)
  dcgan     DCGAN generator (+ BatchNorm discriminator for training)
  wgan-gp   DCGAN generator + layer-norm critic trained with the fused gradient penalty
  vae       conv VAE with the fused reparameterization + KL; beta-vae: the same with beta > 1
  lsgan     the DCGAN networks trained with the least-squares loss
  ae        plain conv autoencoder; samples decode draws from a Gaussian fitted to its codes
  progan    progressively grown generator/critic, WGAN-GP (fused penalty) + drift, averaged generator
  ldm       latent diffusion: KL autoencoder (fused reparameterization) + U-Net on its latents
  distill   progressive distillation of the DDPM: a student DDIM sampler with half the steps per stage
  pix2pix   U-Net generator + PatchGAN on (edges -> digit) pairs
  cyclegan  two ResNet generators + two PatchGANs on unpaired (digit, bold ink-on-paper digit) images
  srgan     SRResNet generator + discriminator, content loss on the digit classifier's features (4x SR)
  srresnet  the same generator trained on the pixel MSE alone
  classifier  (train only) the digit classifier behind SRGAN's content loss and the quality measure

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

MODEL_KINDS = ("ddpm", "dcgan", "wgan-gp", "vae", "beta-vae", "lsgan", "ae", "progan", "ldm", "distill", "pix2pix",
               "cyclegan", "srgan", "srresnet")
TRAIN_KINDS = MODEL_KINDS + ("classifier",)  # the classifier trains and ships, but samples nothing
GAN_KINDS = ("dcgan", "wgan-gp", "lsgan")    # DCGAN generator, one z per image
TRANSLATION_KINDS = ("pix2pix", "cyclegan", "srgan", "srresnet")  # image in, image out
HOLDOUT_KINDS = TRANSLATION_KINDS + ("classifier",)  # train on 90% of the data, show/test on the rest
EMBEDDED = ("ddpm", "dcgan", "wgan-gp", "vae", "lsgan", "ae", "progan", "ldm", "distill", "pix2pix", "cyclegan",
            "srgan", "srresnet")
# kinds shipped as several files: --steps picks the distilled student (the first is the default)
EMBEDDED_VARIANTS = {"distill": (3, 6)}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # genfast/weights
LATENT_OFFSET = 1 << 41  # stream offset of the starting noise / latents (see GenerativeModel.latent_noise)
ENCODE_OFFSET = LATENT_OFFSET + 1  # img2img: the posterior draw of the latent diffusion encoder

# The diffusion schedule of the DDPM kind: cosine betas suit small images (Nichol & Dhariwal 2021);
# trailing spacing keeps 10-step DDIM usable (Lin et al. 2024). Any diffusers DDIM/DDPM config key.
DDPM_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
                 "clip_sample": True, "clip_sample_range": 1.0, "timestep_spacing": "trailing",
                 "variance_type": "fixed_small"}
# Latents are unit-variance, not images in [-1, 1]: no clipping, and Stable Diffusion's scaled-linear betas,
# whose last cumulative alpha (0.0047) keeps the first DDIM step's x0 = (x - sqrt(1 - a) eps) / sqrt(a) within
# 15x of the noise prediction's error; the cosine schedule's last alpha (~2e-9) would amplify it 2e4 times,
# which the pixel-space DDPM survives only because it clips x0 to [-1, 1].
LDM_SCHEDULE = {**DDPM_SCHEDULE, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "clip_sample": False}
# Distilled students predict v (Salimans & Ho 2022): x0 = sqrt(a) x - sqrt(1 - a) v stays well-posed at the
# first, almost pure-noise step where an epsilon prediction divides by sqrt(a) ~ 5e-5. No clipping: the
# student's step must reproduce its teacher's two steps exactly.
DISTILL_SCHEDULE = {**DDPM_SCHEDULE, "prediction_type": "v_prediction", "clip_sample": False}
DISTILL_STAGES = (25, 12, 6, 3)  # student steps per stage, from a 50-step teacher


def _progan_channels(image_size: int) -> list[int]:
    levels = 1
    while 4 * 2 ** (levels - 1) < image_size:
        levels += 1
    if 4 * 2 ** (levels - 1) != image_size:
        raise ValueError(f"--image-size: ProGAN grows 4x4 by doublings; {image_size} is not 4 * 2^k")
    return [64, 32] + [16] * (levels - 2) if levels > 1 else [64]


def default_config(kind: str, channels: int, image_size: int, num_classes: int | None) -> dict[str, Any]:
    """Constructor arguments of the networks of `kind`, for images [channels, image_size, image_size]."""
    if kind == "ddpm":
        levels = 3 if image_size % 4 == 0 else 1
        return {"unet": {"in_channels": channels, "base_channels": 32, "channel_mults": [1, 2, 2][:levels],
                         "num_res_blocks": 1, "attention_levels": [levels - 1], "attention_heads": 4,
                         "num_classes": num_classes, "dropout": 0.1},
                "schedule": dict(DDPM_SCHEDULE), "p_uncond": 0.1}
    if kind in GAN_KINDS:
        gen = {"nz": 64, "ngf": 64, "nc": channels, "image_size": image_size}
        critic = {"ndf": 64, "nc": channels, "image_size": image_size}
        if kind == "wgan-gp":
            critic["norm"] = "layer"
            return {"generator": gen, "critic": critic}
        # R1 (Mescheder et al. 2018: weight/2 * E||grad D(real)||^2, genfast's fused penalty) keeps the
        # BatchNorm discriminator from ignoring the generator's low-amplitude background artifacts: on the
        # digits it took the Frechet distance from ~950 to ~385 (DCGAN) and ~680 to ~385 (LSGAN)
        return {"generator": gen, "critic": critic, "r1_weight": 1.0}
    if kind in ("vae", "beta-vae"):
        return {"vae": {"image_size": image_size, "in_channels": channels, "latent_dim": 16,
                        "likelihood": "bernoulli"}, "beta": 4.0 if kind == "beta-vae" else 1.0}
    if kind == "ae":
        return {"ae": {"image_size": image_size, "in_channels": channels, "latent_dim": 16}}
    if kind == "progan":
        ch = _progan_channels(image_size)
        return {"generator": {"nz": 64, "channels": ch, "nc": channels, "image_size": image_size},
                "critic": {"channels": ch, "nc": channels, "image_size": image_size},
                "phase_steps": None, "drift": 1e-3, "penalty_weight": 10.0, "ema_decay": 0.999}
    if kind == "ldm":
        if image_size % 4:
            raise ValueError(f"--image-size: latent diffusion downsamples by 4; {image_size} is not a multiple of 4")
        latent = image_size // 4
        levels = 2 if latent % 2 == 0 else 1
        return {"ldm": {"autoencoder": {"in_channels": channels, "image_size": image_size, "latent_channels": 4,
                                        "hidden": [32, 64]},
                        "unet": {"in_channels": 4, "base_channels": 32, "channel_mults": [1, 2][:levels],
                                 "num_res_blocks": 1, "attention_levels": [levels - 1], "attention_heads": 4,
                                 "num_classes": num_classes, "dropout": 0.1}},
                "schedule": dict(LDM_SCHEDULE), "p_uncond": 0.1, "kl_weight": 1e-3, "autoencoder_steps": None}
    if kind == "distill":  # the networks are the teacher's: finalize_config reads them from its checkpoint
        return {"unet": None, "schedule": dict(DISTILL_SCHEDULE), "teacher": None, "teacher_schedule": None,
                "teacher_steps": 2 * DISTILL_STAGES[0], "stages": list(DISTILL_STAGES), "teacher_guidance": 2.0,
                "stage_steps": None}
    if kind == "pix2pix":
        return {"generator": {"in_channels": channels, "out_channels": channels, "image_size": image_size, "base": 16,
                              "max_mult": 4, "dropout": 0.5, "dropout_layers": 2},
                "discriminator": {"in_channels": 2 * channels, "base": 32, "layers": 2},
                "task": "edges", "l1_weight": 100.0}
    if kind == "cyclegan":
        return {"cyclegan": {"channels": channels, "ngf": 16, "n_blocks": 3},
                "discriminator": {"in_channels": channels, "base": 32, "layers": 2, "norm": "instance"},
                "pool": 50, "image_size": image_size, "task": "bold-ink-on-paper", "cycle_weight": 10.0,
                # the identity loss (|G(b) - b|, weight identity_weight * cycle_weight) keeps colours in the
                # paper's photo <-> painting tasks; here B is A inverted, so it pulls against the task: off
                "identity_weight": 0.0}
    if kind in ("srgan", "srresnet"):
        config = {"generator": {"channels": channels, "scale": 4, "ngf": 32, "n_blocks": 4}, "task": "downsample-4"}
        if kind == "srgan":
            config.update(discriminator={"channels": channels, "image_size": image_size, "ndf": 32, "dense": 128},
                          adversarial_weight=1e-3, pretrain_steps=None)
        return config
    if kind == "classifier":
        if num_classes is None:
            raise ValueError("--data: the classifier needs labelled data (digits, class subfolders or .npz labels)")
        return {"classifier": {"in_channels": channels, "image_size": image_size, "num_classes": num_classes,
                               "width": 32, "feature_dim": 64}}
    raise ValueError(f"--model: unknown model {kind!r}; choose one of {', '.join(TRAIN_KINDS)}")


def finalize_config(kind: str, config: dict[str, Any], steps: int, data, extra: dict | None = None) -> dict[str, Any]:
    """Settle what depends on the run, before the first step: phase lengths from --steps, and (distill)
    the teacher's networks. A resumed run takes the finished config from its checkpoint instead."""
    extra = extra or {}
    if kind == "progan":
        levels = len(config["generator"]["channels"])
        config["phase_steps"] = max(1, steps // (2 * levels - 1))  # stable 4x4, then fade-in + stable per level
    elif kind == "ldm":
        config["autoencoder_steps"] = max(1, int(round(0.3 * steps)))
    elif kind == "srgan":
        config["pretrain_steps"] = steps // 4  # SRResNet-MSE initialization, as the paper's
    elif kind == "distill":
        if extra.get("stages"):
            config["stages"] = [int(v) for v in extra["stages"]]
            config["teacher_steps"] = 2 * config["stages"][0]
        stages = config["stages"]
        if any(b >= a for a, b in zip(stages, stages[1:])) or min(stages) < 1:
            raise ValueError(f"--stages: expected decreasing positive step counts, got {stages}")
        teacher = extra.get("teacher")
        path = Path(teacher) if teacher else embedded_path("ddpm")
        _, meta = load_checkpoint(path, "--teacher" if teacher else "embedded ddpm model")
        if meta.get("model") != "ddpm":
            raise CheckpointError(f"--teacher: {path} holds a {meta.get('model')} model, not a ddpm to distill")
        tdata = meta.get("data", {})
        if (tdata.get("channels"), tdata.get("image_size")) != (data.channels, data.image_size):
            raise ValueError(f"--data: the teacher was trained on {tdata.get('channels')}x{tdata.get('image_size')} px "
                             f"images, this data is {data.channels}x{data.image_size} px")
        if meta["config"]["unet"].get("num_classes") not in (None, data.num_classes):
            raise ValueError(f"--data: the teacher has {meta['config']['unet']['num_classes']} classes, "
                             f"the data {data.num_classes}")
        config["unet"] = dict(meta["config"]["unet"])
        config["teacher_schedule"] = dict(meta["config"]["schedule"])
        config["teacher"] = str(path) if teacher else None
        if config["unet"].get("num_classes") is None:
            config["teacher_guidance"] = None
        config["stage_steps"] = max(1, steps // len(stages))
    return config


def build_networks(kind: str, config: dict[str, Any]) -> dict[str, nn.Module]:
    """The networks of `kind` by name (sampling_network(kind) names the one sampling uses)."""
    from genfast import models as m

    if kind == "ddpm":
        return {"unet": m.UNet(**config["unet"])}
    if kind in ("dcgan", "lsgan"):
        return {"generator": m.DCGANGenerator(**config["generator"]), "critic": m.DCGANDiscriminator(**config["critic"])}
    if kind == "wgan-gp":
        return {"generator": m.DCGANGenerator(**config["generator"]), "critic": m.WGANGPCritic(**config["critic"])}
    if kind in ("vae", "beta-vae"):
        return {"vae": m.ConvVAE(**config["vae"])}
    if kind == "ae":
        return {"ae": m.ConvAutoencoder(**config["ae"])}
    if kind == "progan":
        g = config["generator"]
        return {"sampler": m.ProGAN(g["nz"], g["channels"], g["nc"], g["image_size"]),
                "generator": m.ProGANGenerator(**g), "critic": m.ProGANCritic(**config["critic"])}
    if kind == "ldm":
        return {"ldm": m.LatentDiffusion(**config["ldm"]), "ema": m.UNet(**config["ldm"]["unet"])}
    if kind == "distill":
        return {"student": m.UNet(**config["unet"]), "teacher": m.UNet(**config["unet"])}
    if kind == "pix2pix":
        return {"generator": m.UNetGenerator(**config["generator"]),
                "discriminator": m.PatchDiscriminator(**config["discriminator"])}
    if kind == "cyclegan":
        c = config["cyclegan"]["channels"]
        shape = (c, config["image_size"], config["image_size"])
        return {"cyclegan": m.CycleGAN(**config["cyclegan"]), "disc_a": m.PatchDiscriminator(**config["discriminator"]),
                "disc_b": m.PatchDiscriminator(**config["discriminator"]),
                "pool_a": m.ImagePool(config["pool"], shape), "pool_b": m.ImagePool(config["pool"], shape)}
    if kind in ("srgan", "srresnet"):
        nets = {"generator": m.SRResNet(**config["generator"])}
        if kind == "srgan":
            nets["discriminator"] = m.SRDiscriminator(**config["discriminator"])
        return nets
    if kind == "classifier":
        return {"classifier": m.DigitClassifier(**config["classifier"])}
    raise ValueError(f"--model: unknown model {kind!r}; choose one of {', '.join(TRAIN_KINDS)}")


_SAMPLING_NETWORK = {"ddpm": "unet", "dcgan": "generator", "wgan-gp": "generator", "lsgan": "generator",
                     "vae": "vae", "beta-vae": "vae", "ae": "ae", "progan": "sampler", "ldm": "ldm",
                     "distill": "student", "pix2pix": "generator", "cyclegan": "cyclegan", "srgan": "generator",
                     "srresnet": "generator", "classifier": "classifier"}


def sampling_network(kind: str) -> str:
    return _SAMPLING_NETWORK[kind]


def task_pair(kind: str, x: torch.Tensor, direction: str = "b2a") -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) images in [0, 1] of an image-to-image kind, derived from images x in [0, 1]:
    pix2pix edges -> image, srgan/srresnet 4x average-pooled -> image, cyclegan a2b image -> bold
    ink-on-paper image, b2a the reverse."""
    from genfast.training.data import bold_ink_on_paper, downsample, edges

    if kind == "pix2pix":
        return edges(x), x
    if kind in ("srgan", "srresnet"):
        return downsample(x, 4), x
    if kind == "cyclegan":
        b = bold_ink_on_paper(x)
        return (x, b) if direction == "a2b" else (b, x)
    raise ValueError(f"kind: {kind} is not an image-to-image model")


@dataclass
class GenerativeModel:
    """A trained network of one kind, ready to sample."""

    kind: str
    net: nn.Module
    config: dict[str, Any]
    meta: dict[str, Any]
    data_spec: str | None = None  # image-to-image kinds: where their inputs come from (None: the training data)

    @property
    def num_classes(self) -> int | None:
        if self.kind in ("ddpm", "distill"):
            return self.config["unet"].get("num_classes")
        if self.kind == "ldm":
            return self.config["ldm"]["unet"].get("num_classes")
        return None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        data = self.meta.get("data", {})
        return data.get("channels", 1), data.get("image_size", 16), data.get("image_size", 16)

    @property
    def default_steps(self) -> int | None:
        """The sampler's step count when none is asked for: a distilled student's own, DDIM's 50."""
        if self.kind == "distill":
            return int(self.meta.get("student_steps") or self.config["stages"][-1])
        return 50 if self.kind in ("ddpm", "ldm") else None

    def to(self, device) -> "GenerativeModel":
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, labels: torch.Tensor | None = None, sampler: str = "ddim",
               steps: int | None = None, eta: float = 0.0, guidance_scale: float | None = None,
               progress: bool = False, graph: bool = False, init_noise: torch.Tensor | None = None,
               resolution: int | None = None, init_images: torch.Tensor | None = None,
               strength: float = 1.0) -> torch.Tensor:
        """n images [n, C, S, S] in [0, 1]. seed: genfast's stream seed. init_noise: the starting noise
        (DDPM) or latent z (GAN, VAE), to draw it elsewhere (e.g. sliced from a bigger batch).

        resolution (progan): sample a grown resolution natively (default: the final one; a generator
        still growing is upsampled to S). init_images + strength (ddpm, ldm): img2img from images in
        [0, 1] ([n or 1, C, S, S]) noised to `strength`. Image-to-image kinds translate n held-out
        examples of their data (see `examples`)."""
        from genfast.training.data import from_signed

        self.net.eval()
        if self.kind not in ("progan",) and resolution is not None:
            raise ValueError(f"--resolution: only progan grows; the {self.kind} model samples at one resolution")
        if init_images is not None and self.kind not in ("ddpm", "ldm"):
            raise ValueError(f"--init-image: img2img needs a diffusion model (ddpm, ldm), not {self.kind}")
        if init_images is None and strength != 1.0:
            raise ValueError("--strength: img2img needs --init-image")
        if self.kind in ("ddpm", "ldm", "distill"):
            return self._sample_diffusion(n, seed, labels, sampler, steps, eta, guidance_scale, progress, graph,
                                          init_noise, init_images, strength)
        if labels is not None or guidance_scale is not None:
            raise ValueError(f"--label/--guidance-scale: the {self.kind} model is unconditional")
        if self.kind in TRANSLATION_KINDS:
            source, _, _ = self.examples(n, seed)
            return self.translate(source, seed=seed)
        z = init_noise if init_noise is not None else self.latent_noise(n, seed)
        if self.kind in GAN_KINDS:
            return from_signed(self.net(z).float())
        if self.kind == "progan":
            out = from_signed(self.net(z, resolution).float())
            size = self.image_shape[-1]
            if resolution is None and out.shape[-1] != size:  # still growing: show it at the data's size
                out = torch.nn.functional.interpolate(out, size=(size, size), mode="nearest")
            return out
        if self.kind == "ae":
            return torch.sigmoid(self.net.decode(self.net.codes_from_noise(z)).float())
        out = self.net.decode(z)
        return torch.sigmoid(out) if self.net.likelihood == "bernoulli" else out.clamp(0, 1)

    def _sample_diffusion(self, n, seed, labels, sampler, steps, eta, guidance_scale, progress, graph, init_noise,
                          init_images, strength):
        from genfast.samplers import sample_ddim, sample_ddpm
        from genfast.training.data import from_signed, to_signed

        device = self.device
        kw = dict(seed=seed, progress=progress, graph=graph)
        if self.num_classes is not None:
            if labels is None:
                labels = torch.arange(n, device=device) % self.num_classes
            kw["class_labels"] = labels.to(device)
            if self.kind == "distill":
                if guidance_scale is not None:
                    raise ValueError("--guidance-scale: the distilled student has its teacher's guidance built in")
            else:
                kw["guidance_scale"] = guidance_scale
        elif labels is not None or guidance_scale is not None:
            raise ValueError(f"--label/--guidance-scale: this {self.kind} model is unconditional")
        if init_images is not None:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"--strength: must lie in (0, 1], got {strength}")
            init_images = init_images.to(device=device, dtype=torch.float32)
            if init_images.shape[1:] != self.image_shape or init_images.shape[0] not in (1, n):
                raise ValueError(f"--init-image: expected [1 or {n}, {', '.join(map(str, self.image_shape))}] images, "
                                 f"got {tuple(init_images.shape)}")
            init_images = init_images.expand(n, *self.image_shape)
            if self.kind == "ldm":
                z = self.net.encode_latents(init_images, seed=seed, offset=ENCODE_OFFSET)
            else:
                z = to_signed(init_images)
            kw["strength"] = strength
        else:
            z = init_noise if init_noise is not None else self.latent_noise(n, seed)
        schedule = self.config["schedule"]
        if sampler == "ddim":
            x = sample_ddim(self.net, z, schedule, steps=steps or self.default_steps, eta=eta, **kw)
        elif self.kind == "distill":  # the student learned DDIM's 2-steps-in-one jumps, nothing else
            raise ValueError(f"--sampler: the distilled student samples with ddim only, got {sampler!r}")
        elif sampler == "ddpm":
            x = sample_ddpm(self.net, z, schedule, steps=steps, **kw)  # None: every training timestep
        else:  # euler, euler-a, dpm++2m, dpm++2m-sde (genfast.samplers.sigma.NAMED_SAMPLERS)
            from genfast.samplers.sigma import NAMED_SAMPLERS, sample_named

            if sampler not in NAMED_SAMPLERS:
                raise ValueError(f"--sampler: expected one of ddim, ddpm, {', '.join(NAMED_SAMPLERS)}, got {sampler!r}")
            x = sample_named(sampler, self.net, z, schedule, steps=steps, **kw)
        if self.kind == "ldm":
            return self.net.decode_latents(x.float()).float()
        return from_signed(x.float())

    # ---- image-to-image kinds ------------------------------------------------------------------------
    def translate(self, source: torch.Tensor, *, seed: int = 0, direction: str = "b2a") -> torch.Tensor:
        """Images in [0, 1] through the generator (cyclegan: `direction`, by default b2a: bold ink-on-paper
        to plain digits). pix2pix's dropout noise is drawn from torch's generator seeded with `seed`."""
        from genfast.training.data import from_signed, to_signed

        self.net.eval()
        x = to_signed(source.to(self.device, torch.float32))
        with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = self.net(x, direction) if self.kind == "cyclegan" else self.net(x)
        return from_signed(out.float())

    def examples(self, n: int | None, seed: int = 0, direction: str = "b2a"):
        """(source, target, labels) of n held-out examples of the data the model was trained on (or
        `data_spec`), in an order drawn from `seed`; fewer held-out images than n repeat; n=None: each
        held-out image once."""
        from genfast.training.data import holdout_split, load_data

        spec = self.data_spec or self.meta.get("settings", {}).get("data", "digits")
        data = load_data(spec, self.image_shape[-1])
        if data.channels != self.image_shape[0]:
            raise ValueError(f"--data: {spec} has {data.channels}-channel images, the model {self.image_shape[0]}")
        _, test = holdout_split(data)
        order = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))
        n = len(order) if n is None else n
        idx = order.repeat(-(-n // len(order)))[:n]
        x = test.images[idx]
        source, target = task_pair(self.kind, x, direction)
        return source, target, (test.labels[idx] if test.labels is not None else None)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        if self.kind in ("ddpm", "distill"):
            return (n, *self.image_shape)
        if self.kind == "ldm":
            return (n, *self.net.latent_shape)
        if self.kind in GAN_KINDS or self.kind == "progan":
            return (n, self.net.nz)
        if self.kind in TRANSLATION_KINDS:
            raise ValueError(f"the {self.kind} model translates images; it draws no latent noise")
        return (n, self.net.latent_dim)

    def latent_noise(self, n: int, seed: int) -> torch.Tensor:
        """The starting noise (DDPM) or latent z (GAN, VAE) of n samples: genfast's stream at
        LATENT_OFFSET, away from the offsets 0..steps-1 of the sampler's per-step noise."""
        from genfast.ops import randn

        return randn(self.latent_shape(n), seed=seed, offset=LATENT_OFFSET, device=self.device)


def preview(model: GenerativeModel, n: int, seed: int = 0, **sample_kw) -> tuple[torch.Tensor, int]:
    """The images of a sample grid and its images per row. Image-to-image kinds: bands of three rows per
    (up to) 8 examples -- source, output, target (cyclegan: b -> a, then a -> b)."""
    if model.kind not in TRANSLATION_KINDS:
        return model.sample(n, seed=seed, **sample_kw), 8
    rows = []
    directions = ("b2a", "a2b") if model.kind == "cyclegan" else ("b2a",)
    per_direction = max(1, n // len(directions))
    for direction in directions:
        source, target, _ = model.examples(per_direction, seed, direction)
        out = model.translate(source, seed=seed, direction=direction)
        if source.shape[-1] != out.shape[-1]:  # super-resolution: show the input at the output's size
            source = torch.nn.functional.interpolate(source, size=out.shape[-2:], mode="nearest")
        for i in range(0, per_direction, 8):
            rows += [source[i:i + 8].cpu(), out[i:i + 8].cpu(), target[i:i + 8].cpu()]
    width = min(8, per_direction)
    rows = [torch.cat([r, torch.ones(width - len(r), *r.shape[1:])]) if len(r) < width else r for r in rows]
    return torch.cat(rows), width


def embedded_path(kind: str, variant: int | None = None) -> Path:
    if kind not in EMBEDDED:
        raise ValueError(f"--model: no embedded {kind} model (embedded: {', '.join(EMBEDDED)}); "
                         f"train one with `genfast train {kind}` and pass --checkpoint")
    variants = EMBEDDED_VARIANTS.get(kind)
    if variants is None:
        if variant is not None:
            raise ValueError(f"--steps: the embedded {kind} model comes in one version")
        return WEIGHTS_DIR / f"{kind}.safetensors"
    variant = variants[0] if variant is None else variant
    if variant not in variants:
        raise ValueError(f"--steps: the embedded {kind} students sample in {' or '.join(map(str, variants))} steps, "
                         f"not {variant}")
    return WEIGHTS_DIR / f"{kind}-{variant}.safetensors"


def load_model(kind: str | None, checkpoint=None, device="cpu", variant: int | None = None) -> GenerativeModel:
    """The embedded model of `kind` (variant: which of several, e.g. the distilled student's steps), or
    the one in `checkpoint` (whose kind must match, if given)."""
    path = Path(checkpoint) if checkpoint is not None else embedded_path(kind, variant)
    tensors, meta = load_checkpoint(path, "--checkpoint" if checkpoint is not None else f"embedded {kind} model")
    found = meta.get("model")
    if kind is not None and found != kind:
        raise CheckpointError(f"--checkpoint: {path} holds a {found} model, not {kind}")
    config = meta.get("config")
    if found not in MODEL_KINDS or not isinstance(config, dict):
        raise CheckpointError(f"--checkpoint: {path} does not say which model it holds"
                              + (" (a classifier: it samples nothing)" if found == "classifier" else ""))
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
