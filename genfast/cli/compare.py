"""`genfast compare`: what genfast's kernels buy in a real training and sampling run, measured.

For each model, training time per epoch (on the digits) and sampling time per batch, twice: with
genfast's fused kernels (the default backends; on CUDA the sampling loop is one CUDA graph) and with the
plain PyTorch reference (`use_backend("reference")`, the textbook gradient penalty, an eager loop).
Both runs start from the same weights and the same seeds, so their samples should match; the table
gives the largest pixel difference, and the PNG shows both side by side (genfast left, reference right).

Next to each sampling row, the quality of the samples (genfast.training.quality: Frechet distance to the
digits on the shipped digit classifier's features, its mean confidence, and its accuracy where the model
was given a label), on --quality-n samples (image-to-image models: on every held-out input).

  training rows: every kind, fresh networks, one epoch; kinds that change with the step are timed at
                 their costliest stage (progan grown to full size, ldm's diffusion stage, srgan's
                 adversarial stage, distill's first stage with the guided teacher)
  sampling rows: the embedded weights; GANs, autoencoders and image-to-image models one pass, ddpm 1000
                 steps, ddim 50 and 10 steps, euler, euler-a, dpm++2m and dpm++2m-sde 10 and 25 steps,
                 ldm 50 DDIM steps in latent space, the distilled students in 6 and 3 steps
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from genfast import use_backend

TRAIN_KINDS = ("dcgan", "wgan-gp", "vae", "ddpm", "lsgan", "ae", "progan", "ldm", "distill", "pix2pix", "cyclegan",
               "srgan", "srresnet")
# the score-based samplers at 10 and 25 steps next to DDIM 50 (genfast.samplers.sigma.NAMED_SAMPLERS)
SIGMA_SAMPLE_KINDS = tuple(f"{s}-{n}" for s in ("euler", "euler-a", "dpm++2m", "dpm++2m-sde") for n in (10, 25))
SAMPLE_KINDS = ("dcgan", "wgan-gp", "vae", "ddpm-1000", "ddim-50", "ddim-10") + SIGMA_SAMPLE_KINDS + (
    "lsgan", "ae", "progan", "ldm", "distill-6", "distill-3", "pix2pix", "cyclegan", "srgan", "srresnet")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from genfast.cli.args import positive_int, seed_int

    p.add_argument("--train", default=",".join(TRAIN_KINDS),
                   help=f"models to time one training epoch of, comma-separated, or none ({', '.join(TRAIN_KINDS)})")
    p.add_argument("--sample", default=",".join(SAMPLE_KINDS),
                   help=f"samplers to time, comma-separated, or none ({', '.join(SAMPLE_KINDS)})")
    p.add_argument("--n", type=positive_int, default=None, help="images per sampling batch (default 64; 16 on a CPU)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="training batch")
    p.add_argument("--train-batches", type=positive_int, default=None,
                   help="stop an epoch after this many batches (default: the whole epoch)")
    p.add_argument("--data", default="digits", help="training data: digits, a folder of images or an .npz file")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quality-n", type=int, default=256,
                   help="samples per model for the quality columns (0: no quality columns)")
    p.add_argument("--out", default="compare.png", help="PNG with the samples side by side (genfast | reference)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    if text.strip().lower() == "none":
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"{flag}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(allowed)} or none")
    return names


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train_epoch(kind: str, data, impl: str, device, batch_size: int, seed: int, max_batches: int | None) -> tuple[float, int]:
    """Seconds for one epoch (or max_batches batches) of `kind` from fresh weights; -> (seconds, batches)."""
    from genfast.training import BatchSource

    trainer, data = _timing_trainer(kind, data, impl, device, batch_size, seed)
    source = BatchSource(data, batch_size, seed, device, 0, 1)
    limit = min(source.per_epoch, max_batches or source.per_epoch)
    with use_backend("reference") if impl == "reference" else nullcontext():
        _sync(device)
        t0 = time.perf_counter()
        step = 0
        while source.taken < limit:
            torch.manual_seed(seed + step)
            trainer.train_step(source)
            step += 1
        _sync(device)
        return time.perf_counter() - t0, source.taken


def _timing_trainer(kind: str, data, impl: str, device, batch_size: int, seed: int):
    """A fresh trainer of `kind` at the stage to time, and the data it trains on."""
    from genfast.training import make_trainer
    from genfast.training.data import holdout_split
    from genfast.training.zoo import HOLDOUT_KINDS, build_networks, default_config, finalize_config

    if kind in HOLDOUT_KINDS:
        data, _ = holdout_split(data)
    config = default_config(kind, data.channels, data.image_size, data.num_classes)
    config = finalize_config(kind, config, 100 * max(1, len(data.images) // batch_size), data)
    torch.manual_seed(seed)
    nets = {k: v.to(device) for k, v in build_networks(kind, config).items()}
    trainer = make_trainer(kind, nets, config, None, lambda m, **kw: m,
                           penalty_impl="genfast" if impl == "genfast" else "plain", data=data)
    if kind == "progan":  # grown to full size
        trainer.step_count = (2 * trainer.levels - 2) * trainer.phase_steps
    elif kind == "ldm":  # the diffusion stage, its latent scale measured
        trainer.step_count = config["autoencoder_steps"]
        trainer.ldm.measure_latent_scale(data.images.to(device))
    elif kind == "srgan":  # the adversarial stage
        trainer.step_count = config["pretrain_steps"]
    return trainer, data


def _sampling_model(kind: str, device):
    """(model, sample keyword arguments) of a --sample row: ddpm-1000 / ddim-N the embedded DDPM with that
    sampler, distill-N the N-step student, anything else the embedded model of that name."""
    from genfast.training.zoo import load_model

    kw = {}
    if kind.startswith(("ddpm-", "ddim-")) or kind in SIGMA_SAMPLE_KINDS:
        model = load_model("ddpm", None, device)
        sampler, steps = kind.rsplit("-", 1)
        kw = dict(sampler=sampler, steps=int(steps), guidance_scale=2.0 if model.num_classes is not None else None)
    elif kind.startswith("distill-"):
        model = load_model("distill", None, device, variant=int(kind.split("-")[1]))
    else:
        model = load_model(kind, None, device)
        if kind == "ldm":
            kw = dict(guidance_scale=2.0 if model.num_classes is not None else None)
    return model, kw


def time_sampling(kind: str, impl: str, device, n: int, seed: int) -> tuple[float, torch.Tensor]:
    """Seconds for one batch of n samples of `kind` (embedded weights); -> (seconds, images)."""
    from genfast.training.zoo import TRANSLATION_KINDS

    model, kw = _sampling_model(kind, device)
    diffusion = model.kind in ("ddpm", "ldm", "distill")
    graph = device.type == "cuda" and impl == "genfast" and diffusion
    source = model.examples(n, seed)[0] if model.kind in TRANSLATION_KINDS else None
    with use_backend("reference") if impl == "reference" else nullcontext():
        def run():
            if source is not None:
                return model.translate(source, seed=seed)
            return model.sample(n, seed=seed, graph=graph, **kw)

        # warm-up: first-call costs, cuDNN, graph capture (not the 1000-step DDPM on a CPU: a minute per call)
        if device.type == "cuda" or kind != "ddpm-1000":
            run()
        times = []
        while True:  # median of up to 5 calls, as many as fit in ~2 s (one for the slow samplers)
            _sync(device)
            t0 = time.perf_counter()
            images = run()
            _sync(device)
            times.append(time.perf_counter() - t0)
            if len(times) == 5 or sum(times) > 2.0:
                return statistics.median(times), images


def sample_quality(kind: str, device, n: int, seed: int) -> dict:
    """Quality columns of a --sample row: n samples of the genfast path (conditional models: labels
    0..9 in turn; image-to-image models: every held-out input once, cyclegan from bold ink on paper back
    to plain digits)."""
    from genfast.training import quality
    from genfast.training.zoo import TRANSLATION_KINDS

    model, kw = _sampling_model(kind, device)
    labels = None
    if model.kind in TRANSLATION_KINDS:
        source, _, labels = model.examples(None, seed)  # each held-out input once
        images = torch.cat([model.translate(source[i:i + 256], seed=seed) for i in range(0, len(source), 256)])
    else:
        if model.num_classes is not None:
            labels = torch.arange(n) % model.num_classes
        chunk = 128 if model.kind in ("ddpm", "ldm", "distill") else n
        images = torch.cat([model.sample(min(chunk, n - i), seed=seed + 1 + i // chunk,
                                         labels=None if labels is None else labels[i:i + chunk], **kw)
                            for i in range(0, n, chunk)])
    return quality.measure(images.cpu(), labels).as_dict()


def real_quality(n: int, seed: int) -> dict:
    """The same measure on n real digits (a random subset): the floor a perfect model reaches at this n."""
    from genfast.training import quality
    from genfast.training.data import load_data

    data = load_data("digits", 16)
    idx = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(seed))[:n]
    return quality.measure(data.images[idx], data.labels[idx]).as_dict()


def run_compare(args) -> int:
    from genfast.cli.bench import format_machine, machine_info
    from genfast.training.data import load_data
    from genfast.training.distributed import resolve_device
    from genfast.training.images import check_writable, image_bytes, image_format, make_grid, write_atomic

    device = resolve_device(args.device)
    train_kinds = _choices(args.train, TRAIN_KINDS, "--train")
    sample_kinds = _choices(args.sample, SAMPLE_KINDS, "--sample")
    if not train_kinds and not sample_kinds:
        raise ValueError("--train/--sample: nothing to compare (both are none)")
    out = check_writable(args.out, "--out", image=True) if sample_kinds else None
    n = args.n or (64 if device.type == "cuda" else 16)
    if args.quality_n < 0 or args.quality_n == 1:
        raise ValueError(f"--quality-n: expected 0 (off) or at least 2 samples, got {args.quality_n}")
    rows = []
    if train_kinds:
        data = load_data(args.data, 16)
        for kind in train_kinds:
            for impl in ("genfast", "reference"):  # warm-up: first calls, cuDNN autotuning, Triton compilation
                time_train_epoch(kind, data, impl, device, args.batch_size, args.seed, 2)
            fused, batches = time_train_epoch(kind, data, "genfast", device, args.batch_size, args.seed, args.train_batches)
            plain, _ = time_train_epoch(kind, data, "reference", device, args.batch_size, args.seed, args.train_batches)
            rows.append({"task": "train epoch", "model": kind, "batches": batches, "batch_size": args.batch_size,
                         "genfast_s": fused, "reference_s": plain, "speedup": plain / fused, "max_pixel_diff": None})
    panels = []
    for kind in sample_kinds:
        fused, a = time_sampling(kind, "genfast", device, n, args.seed)
        plain, b = time_sampling(kind, "reference", device, n, args.seed)
        diff = (a.float() - b.float()).abs().max().item()
        row = {"task": "sample batch", "model": kind, "batches": 1, "batch_size": n, "genfast_s": fused,
               "reference_s": plain, "speedup": plain / fused, "max_pixel_diff": diff}
        if args.quality_n:
            row.update(sample_quality(kind, device, args.quality_n, args.seed))
        rows.append(row)
        panels.append((a, b))
    real = real_quality(args.quality_n, args.seed) if args.quality_n and sample_kinds else None
    if panels:
        write_atomic(out, image_bytes(_side_by_side(panels, make_grid), image_format(out)))
    machine = machine_info(device)
    if args.json:
        out_json = {"machine": machine, "rows": rows}
        if real is not None:
            out_json["real_digits"] = real
        print(json.dumps(out_json, indent=1))
        return 0
    print(format_machine(machine))
    print("| task | model | batches x size | genfast s | reference s | speed-up | max pixel diff | Frechet distance "
          "| confidence | accuracy | quality n |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in rows:
        print(f"| {r['task']} | {r['model']} | {r['batches']} x {r['batch_size']} | {r['genfast_s']:.3f} | "
              f"{r['reference_s']:.3f} | {r['speedup']:.2f}x | {cell(r['max_pixel_diff'], '.1e')} | "
              f"{cell(r.get('frechet_distance'), '.1f')} | {cell(r.get('confidence'), '.3f')} | "
              f"{cell(r.get('accuracy'), '.3f')} | {cell(r.get('quality_n'), 'd')} |")
    if real is not None:
        print(f"real digits ({real['quality_n']} of the 1,797, the floor at this n): Frechet distance "
              f"{real['frechet_distance']:.1f}, confidence {real['confidence']:.3f}, accuracy {real['accuracy']:.3f}")
    if panels:
        print(f"wrote {out}: one row per sampler ({', '.join(sample_kinds)}), genfast left, reference right")
    return 0


def _side_by_side(panels, make_grid):
    import numpy as np

    rows = []
    for a, b in panels:
        left, right = make_grid(a, nrow=8, scale=2), make_grid(b, nrow=8, scale=2)
        gap = np.full((left.shape[0], 6, left.shape[2]), 128, np.uint8)
        rows.append(np.concatenate([left, gap, right], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=128) for r in rows]
    return np.concatenate(rows, axis=0)
