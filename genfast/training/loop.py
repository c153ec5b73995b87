"""`genfast train`: every model kind (see genfast.training.zoo) on digits, an image folder or an .npz array.

Every step is a pure function of (seed, step): the data order comes from a per-epoch permutation seeded
by (seed, epoch), and torch's default generator is re-seeded from (seed, step, rank) before each step
(genfast's ops draw their seeds from it). So `--resume` continues exactly where the run stopped, and a
run interrupted and resumed ends with the same weights as one that was not.

Checkpoints (`<out-dir>/last.safetensors`, atomic) hold the sampling weights under "model." and the
networks and optimizers under "train.". Ctrl-C or SIGTERM finishes the current step, writes a checkpoint
and exits; a second Ctrl-C stops at once, and the last checkpoint (atomic) is still whole.
Under torchrun the networks are wrapped in DistributedDataParallel and each rank takes its slice of
every global batch; rank 0 writes the files.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genfast.training import distributed as dist_util
from genfast.training.checkpoint import (CheckpointError, first_non_finite, flatten_optimizer, load_checkpoint,
                                         prefixed, save_checkpoint, unflatten_optimizer, unprefixed)
from genfast.training.data import ImageData, holdout_split, load_data, to_signed
from genfast.training.images import save_grid
from genfast.training.zoo import (GAN_KINDS, HOLDOUT_KINDS, TRAIN_KINDS, GenerativeModel, build_networks, default_config,
                                  ema_copy, finalize_config, preview, sampling_network)


@dataclass
class TrainSettings:
    model: str
    data: str = "digits"
    image_size: int = 16
    steps: int = 2000
    batch_size: int = 64
    lr: float | None = None          # None: the kind's default
    seed: int = 0
    out_dir: str | None = None       # None: runs/<model>
    save_every: int = 500
    sample_every: int = 500
    sample_images: int = 64
    resume: bool = False
    export: str | None = None        # also write sampling-only fp16 weights here at the end
    device: str = "cpu"
    progress: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.model}")


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 1) % (1 << 63)


class BatchSource:
    """Global batches in a per-epoch shuffled order; this rank's slice of each. Counts batches taken."""

    def __init__(self, data: ImageData, batch_size: int, seed: int, device, rank: int, world: int, taken: int = 0):
        if batch_size % world:
            raise ValueError(f"--batch-size: {batch_size} does not split evenly over {world} processes")
        if batch_size > len(data.images):
            raise ValueError(f"--batch-size: {batch_size} exceeds the {len(data.images)} images of the data set")
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.rank, self.world, self.taken = rank, world, taken
        self.per_epoch = len(data.images) // batch_size  # drop_last: every batch has the same shape
        self._epoch, self._perm = -1, None

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        epoch, k = divmod(self.taken, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.data.images), generator=g)
        idx = self._perm[k * self.batch_size:(k + 1) * self.batch_size]
        local = self.batch_size // self.world
        idx = idx[self.rank * local:(self.rank + 1) * local]
        self.taken += 1
        x = self.data.images[idx].to(self.device)
        y = self.data.labels[idx].to(self.device) if self.data.labels is not None else None
        return x, y


# ------------------------------------------------------------------------------------------------------
# one trainer per kind: networks, optimizers, one training step
# ------------------------------------------------------------------------------------------------------
class DDPMTrainer:
    """Epsilon-prediction DDPM (Ho et al. 2020) with label dropout for classifier-free guidance and an EMA."""

    default_lr = 5e-4

    def __init__(self, nets, config, lr, ddp):
        from genfast.samplers import NoiseSchedule

        self.unet = nets["unet"]
        self.model = ddp(self.unet)
        self.ema = ema_copy(self.unet)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=0.0)
        self.lr = lr
        self.config = config
        device = next(self.unet.parameters()).device  # the table lives where the steps run: no copy per step
        self.alphas_cumprod = NoiseSchedule.from_config(**config["schedule"]).alphas_cumprod.to(device)
        self.step_count = 0

    def optimizers(self):
        return {"opt": self.opt}

    def networks(self):
        return {"unet": self.unet, "ema": self.ema}

    def sampling_state(self):
        return self.ema.state_dict()

    def train_step(self, source: BatchSource) -> dict:
        from genfast.ops import randn

        x, y = source.next()
        x0 = to_signed(x)
        b = x0.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (b,), device=x0.device)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noise = randn(x0.shape, device=x0.device)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        kw = {}
        if self.unet.num_classes is not None and y is not None:
            drop = torch.rand(b, device=x0.device) < self.config.get("p_uncond", 0.1)
            kw["class_labels"] = torch.where(drop, torch.full_like(y, self.unet.num_classes), y)
        loss = F.mse_loss(self.model(xt, t, **kw), noise)
        for g in self.opt.param_groups:  # linear warm-up over the first 200 steps
            g["lr"] = self.lr * min(1.0, (self.step_count + 1) / 200)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        decay = min(0.999, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.unet.parameters()):
                e.lerp_(p, 1 - decay)
            for e, p in zip(self.ema.buffers(), self.unet.buffers()):
                e.copy_(p)
        self.step_count += 1
        return {"loss": loss.detach()}


class GANKindTrainer:
    """DCGAN (non-saturating loss, BatchNorm discriminator), LSGAN (the same networks, least-squares loss of
    Mao et al. 2017) or WGAN-GP (5 critic steps, fused penalty), through genfast.training.GANTrainer.
    One step = n_critic critic updates + one generator update."""

    def __init__(self, kind, nets, config, lr, ddp, penalty_impl="genfast"):
        from genfast.training.gan import GANTrainer

        self.generator, self.critic = nets["generator"], nets["critic"]
        nz = config["generator"]["nz"]
        if kind in ("dcgan", "lsgan"):
            r1 = float(config.get("r1_weight", 0.0))  # checkpoints from before R1 have none: train as they did
            kw = dict(lr_g=lr or 2e-4, lr_d=lr or 2e-4, betas=(0.5, 0.999), n_critic=1,
                      loss="nonsaturating" if kind == "dcgan" else "lsgan", penalty="r1" if r1 > 0 else None,
                      penalty_weight=r1, penalty_impl=penalty_impl)
        else:
            kw = dict(lr_g=lr or 1e-4, lr_d=lr or 1e-4, betas=(0.0, 0.9), n_critic=5, loss="wgan",
                      penalty="two-sided", penalty_impl=penalty_impl)
        self.gan = GANTrainer(ddp(self.generator), ddp(self.critic), nz=nz, **kw)
        # GANTrainer built its Adam over the (possibly DDP-wrapped) modules: same parameters

    def optimizers(self):
        return {"opt_g": self.gan.opt_g, "opt_d": self.gan.opt_d}

    def networks(self):
        return {"generator": self.generator, "critic": self.critic}

    def sampling_state(self):
        return self.generator.state_dict()

    def train_step(self, source: BatchSource) -> dict:
        def batches():
            while True:
                yield to_signed(source.next()[0])

        out = self.gan.train_step(batches())
        return {"d_loss": out["critic_loss"], "g_loss": out["generator_loss"]}


class VAETrainer:
    """Negative ELBO with a Bernoulli likelihood; beta-VAE (Higgins et al. 2017) weighs the KL by beta."""

    default_lr = 1e-3

    def __init__(self, nets, config, lr, ddp):
        self.vae = nets["vae"]
        self.model = ddp(self.vae)
        self.beta = float(config.get("beta", 1.0))
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=lr)

    def optimizers(self):
        return {"opt": self.opt}

    def networks(self):
        return {"vae": self.vae}

    def sampling_state(self):
        return self.vae.state_dict()

    def train_step(self, source: BatchSource) -> dict:
        from genfast.losses import vae_loss

        x, _ = source.next()
        recon, mu, logvar, z, kl = self.model(x)
        loss = vae_loss(recon, x, kl, likelihood=self.vae.likelihood, beta=self.beta)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "kl": kl.detach()}


def make_trainer(kind: str, nets: dict, config: dict, lr: float | None, ddp: Callable, penalty_impl="genfast",
                 data: ImageData | None = None, test_data: ImageData | None = None):
    """The trainer of `kind`. ddp(module, **kw) wraps a network for torchrun (the identity otherwise);
    data: the training images (latent diffusion measures its latent scale on them, the autoencoder fits
    its Gaussian); test_data: the held-out split (the classifier reports its accuracy on it)."""
    if kind == "ddpm":
        return DDPMTrainer(nets, config, lr or DDPMTrainer.default_lr, ddp)
    if kind in GAN_KINDS:
        return GANKindTrainer(kind, nets, config, lr, ddp, penalty_impl)
    if kind in ("vae", "beta-vae"):
        return VAETrainer(nets, config, lr or VAETrainer.default_lr, ddp)
    if kind == "progan":
        from genfast.training.progan import ProGANTrainer
        return ProGANTrainer(nets, config, lr, ddp, penalty_impl)
    if kind == "ldm":
        from genfast.training.ldm import LDMTrainer
        return LDMTrainer(nets, config, lr, ddp, data)
    if kind == "distill":
        from genfast.training.distill import DistillTrainer
        return DistillTrainer(nets, config, lr, ddp)
    if kind == "pix2pix":
        from genfast.training.translation import Pix2PixTrainer
        return Pix2PixTrainer(nets, config, lr, ddp)
    if kind == "cyclegan":
        from genfast.training.translation import CycleGANTrainer
        return CycleGANTrainer(nets, config, lr, ddp)
    if kind in ("srgan", "srresnet"):
        from genfast.training.translation import SRTrainer
        return SRTrainer(kind, nets, config, lr, ddp)
    if kind == "ae":
        from genfast.training.basic import AETrainer
        return AETrainer(nets, config, lr, ddp, data)
    if kind == "classifier":
        from genfast.training.basic import ClassifierTrainer
        return ClassifierTrainer(nets, config, lr, ddp, test_data)
    raise ValueError(f"--model: unknown model {kind!r}; choose one of {', '.join(TRAIN_KINDS)}")


# ------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------
def checkpoint_tensors(trainer, with_training_state: bool, half: bool = False):
    tensors = prefixed("model.", trainer.sampling_state())
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    optim_meta = {}
    if with_training_state:
        for name, net in trainer.networks().items():
            tensors.update(prefixed(f"train.{name}.", net.state_dict()))
        for name, opt in trainer.optimizers().items():
            t, rest = flatten_optimizer(f"optim.{name}.", opt.state_dict())
            tensors.update(t)
            optim_meta[name] = rest
    return tensors, optim_meta


def restore(trainer, tensors: dict, optim_meta: dict) -> None:
    for name, net in trainer.networks().items():
        net.load_state_dict(unprefixed(f"train.{name}.", tensors))
    for name, opt in trainer.optimizers().items():
        opt.load_state_dict(unflatten_optimizer(f"optim.{name}.", tensors, optim_meta[name]))


# ------------------------------------------------------------------------------------------------------
class _StopRequest:
    """SIGINT/SIGTERM while training: finish the step, checkpoint, exit. A second SIGINT raises at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _metrics_text(metrics: dict) -> str:
    return " ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())


def train(s: TrainSettings, log: Callable[[str], None] = print) -> dict:
    """Runs `genfast train`; returns a summary: final step, checkpoint path, last metrics, seconds and the
    trained networks by name."""
    if s.model not in TRAIN_KINDS:
        raise ValueError(f"--model: unknown model {s.model!r}; choose one of {', '.join(TRAIN_KINDS)}")
    for name in ("steps", "batch_size", "save_every", "sample_every", "sample_images"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be a positive integer, got {v!r}")
    if s.lr is not None and not (math.isfinite(s.lr) and s.lr > 0):
        raise ValueError(f"--lr: must be a positive number, got {s.lr!r}")
    ctx = dist_util.context(s.device)
    device = ctx.device
    data = load_data(s.data, s.image_size)
    test_data = None
    if s.model in HOLDOUT_KINDS:  # image-to-image models and the classifier keep 10% of the data unseen
        data, test_data = holdout_split(data)
    run_dir = s.run_dir
    last = run_dir / "last.safetensors"
    data_meta = data.describe()
    resumed = None
    if s.resume:  # the checkpoint's config, not a fresh one: phase lengths etc. were settled at the start
        tensors, meta = load_checkpoint(last, "--resume")
        if meta.get("model") != s.model or meta.get("data") != data_meta:
            raise CheckpointError(f"--resume: {last} was trained as {meta.get('model')} on {meta.get('data')}, "
                                  f"not {s.model} on {data_meta}")
        if "optim" not in meta:
            raise CheckpointError(f"--resume: {last} holds only sampling weights, no training state")
        config = meta["config"]
        resumed = tensors, meta
    else:
        config = default_config(s.model, data.channels, data.image_size, data.num_classes)
        if s.model == "beta-vae" and "beta" in s.extra:
            config["beta"] = float(s.extra["beta"])
        config = finalize_config(s.model, config, s.steps, data, s.extra)

    torch.manual_seed(s.seed)  # weight initialization
    nets = build_networks(s.model, config)
    for n in nets.values():
        n.to(device)
    trainer = make_trainer(s.model, nets, config, s.lr, ctx.wrap, data=data, test_data=test_data)
    start, taken = 0, 0
    if resumed is not None:
        tensors, meta = resumed
        restore(trainer, {k: v.to(device) for k, v in tensors.items()}, meta["optim"])
        start, taken = int(meta["step"]), int(meta["batches"])
        if hasattr(trainer, "step_count"):
            trainer.step_count = start
        log(f"resuming {s.model} from {last} at step {start}")
    if start >= s.steps:
        log(f"{last} is already at step {start} >= --steps {s.steps}; nothing to do")
    source = BatchSource(data, s.batch_size, s.seed, device, ctx.rank, ctx.world_size, taken)

    def meta_for(step: int, optim_meta: dict | None) -> dict:
        meta = {"model": s.model, "config": config, "data": data_meta, "step": step, "batches": source.taken,
                "settings": {k: v for k, v in asdict(s).items() if k not in ("progress",)}}
        if hasattr(trainer, "extra_meta"):
            meta.update(trainer.extra_meta())
        if optim_meta is not None:
            meta["optim"] = optim_meta
        return meta

    def check_finite(tensors: dict, step: int) -> None:
        # on every rank (DDP keeps them equal), so all stop together; never overwrite the last good
        # checkpoint with a diverged one
        bad = first_non_finite(tensors)
        if bad is not None:
            raise TrainingDiverged(f"training diverged: {bad} holds NaN or inf at step {step}; {last} keeps the "
                                   "last finite checkpoint; retrain, or resume with a lower --lr")

    def save(step: int) -> None:
        tensors, optim_meta = checkpoint_tensors(trainer, with_training_state=True)
        check_finite(tensors, step)
        if ctx.rank == 0:
            save_checkpoint(last, tensors, meta_for(step, optim_meta))

    def write_samples(step: int) -> None:
        if ctx.rank != 0:
            return
        if hasattr(trainer, "evaluate"):  # the classifier: a held-out accuracy instead of a grid
            log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in trainer.evaluate().items()))
            return
        early = trainer.preview(s.sample_images) if hasattr(trainer, "preview") else None
        if early is not None:  # a stage with nothing to sample yet (ldm's autoencoder): what it shows instead
            save_grid(run_dir / f"samples_{step:06d}.png", early[0], nrow=early[1], scale=2)
            return
        net = build_networks(s.model, config)[sampling_network(s.model)].to(device)
        net.load_state_dict(trainer.sampling_state())
        meta = {"data": data_meta, "settings": {"data": s.data}}
        if hasattr(trainer, "extra_meta"):
            meta.update(trainer.extra_meta())
        images, nrow = preview(GenerativeModel(s.model, net, config, meta), s.sample_images, seed=s.seed)
        save_grid(run_dir / f"samples_{step:06d}.png", images, nrow=nrow, scale=2)

    def export_stage(step: int) -> None:
        """Progressive distillation: each finished stage's student as fp16 sampling weights of its own."""
        steps_done = trainer.finished_stage() if hasattr(trainer, "finished_stage") else None
        if steps_done is not None and ctx.rank == 0:
            tensors, _ = checkpoint_tensors(trainer, with_training_state=False, half=True)
            check_finite(tensors, step)
            path = run_dir / f"{s.model}-{steps_done}.safetensors"
            save_checkpoint(path, tensors, meta_for(step, None))
            log(f"step {step}: the {steps_done}-step student is done; wrote {path}")

    if ctx.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if s.progress and ctx.rank == 0 and start < s.steps:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.steps, initial=start, desc=f"train {s.model}", dynamic_ncols=True)
        except ImportError:
            pass
    t0 = time.perf_counter()
    metrics: dict = {}
    step = start
    interrupted = False
    with _StopRequest() as stop:
        while step < s.steps:
            torch.manual_seed(_step_seed(s.seed, step, ctx.rank))
            for n in trainer.networks().values():
                n.train()
            metrics = trainer.train_step(source)
            step += 1
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == s.steps:
                    bar.set_postfix_str(_metrics_text(metrics))
            export_stage(step)
            if step % s.save_every == 0 or step == s.steps:
                save(step)
            if step % s.sample_every == 0 or step == s.steps:
                write_samples(step)
            if ctx.any(stop.requested) and step < s.steps:
                save(step)
                interrupted = True
                break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if s.export and ctx.rank == 0 and not interrupted:
        tensors, _ = checkpoint_tensors(trainer, with_training_state=False, half=True)
        save_checkpoint(s.export, tensors, meta_for(step, None))
    ctx.barrier()
    summary = {"model": s.model, "step": step, "checkpoint": str(last), "seconds": seconds,
               "metrics": {k: float(v) for k, v in metrics.items()}, "interrupted": interrupted,
               "networks": trainer.networks()}
    if interrupted:
        raise TrainingInterrupted(f"interrupted at step {step}; checkpoint {last}; continue with --resume")
    if ctx.rank == 0 and start < s.steps:
        log(f"trained {s.model} to step {step} in {seconds:.1f} s; checkpoint {last}"
            + (f"; exported {s.export}" if s.export else ""))
    return summary


class TrainingInterrupted(RuntimeError):
    pass


class TrainingDiverged(RuntimeError):
    """The weights became NaN or inf; the checkpoint on disk is the last finite one."""
