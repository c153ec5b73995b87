"""`genfast compare`: what genfast's kernels buy in a real training and sampling run, measured.

For each model, training time per epoch (on the digits) and sampling time per batch, twice: with
genfast's fused kernels (the default backends; on CUDA the sampling loop is one CUDA graph) and with the
plain PyTorch reference (`use_backend("reference")`, the textbook gradient penalty, an eager loop).
Both runs start from the same weights and the same seeds, so their samples should match; the table
gives the largest pixel difference, and the PNG shows both side by side (genfast left, reference right).

  training rows: dcgan, wgan-gp, vae, ddpm (fresh networks, one epoch)
  sampling rows: dcgan, wgan-gp, vae (one pass), ddpm (1000 steps), ddim (50 and 10 steps), euler, euler-a,
                 dpm++2m and dpm++2m-sde (10 and 25 steps), embedded weights
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from genfast import use_backend

TRAIN_KINDS = ("dcgan", "wgan-gp", "vae", "ddpm")
# the score-based samplers at 10 and 25 steps next to DDIM 50 (genfast.samplers.sigma.NAMED_SAMPLERS)
SIGMA_SAMPLE_KINDS = tuple(f"{s}-{n}" for s in ("euler", "euler-a", "dpm++2m", "dpm++2m-sde") for n in (10, 25))
SAMPLE_KINDS = ("dcgan", "wgan-gp", "vae", "ddpm-1000", "ddim-50", "ddim-10") + SIGMA_SAMPLE_KINDS


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
    from genfast.training import BatchSource, make_trainer
    from genfast.training.zoo import build_networks, default_config

    config = default_config(kind, data.channels, data.image_size, data.num_classes)
    torch.manual_seed(seed)
    nets = {k: v.to(device) for k, v in build_networks(kind, config).items()}
    trainer = make_trainer(kind, nets, config, None, lambda m: m,
                           penalty_impl="genfast" if impl == "genfast" else "plain")
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


def time_sampling(kind: str, impl: str, device, n: int, seed: int) -> tuple[float, torch.Tensor]:
    """Seconds for one batch of n samples of `kind` (embedded weights); -> (seconds, images)."""
    from genfast.training.zoo import load_model

    model_kind = "ddpm" if kind.startswith(("ddpm", "ddim")) or kind in SIGMA_SAMPLE_KINDS else kind
    model = load_model(model_kind, None, device)
    kw = {}
    if model_kind == "ddpm":
        sampler, steps = kind.rsplit("-", 1)
        kw = dict(sampler=sampler, steps=int(steps), guidance_scale=2.0 if model.num_classes is not None else None)
    graph = device.type == "cuda" and impl == "genfast" and model_kind == "ddpm"
    with use_backend("reference") if impl == "reference" else nullcontext():
        def run():
            return model.sample(n, seed=seed, graph=graph, **kw)

        if device.type == "cuda" or model_kind != "ddpm":  # warm-up: first-call costs, cuDNN, graph capture
            run()
        _sync(device)
        t0 = time.perf_counter()
        images = run()
        _sync(device)
        return time.perf_counter() - t0, images


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
        rows.append({"task": "sample batch", "model": kind, "batches": 1, "batch_size": n, "genfast_s": fused,
                     "reference_s": plain, "speedup": plain / fused, "max_pixel_diff": diff})
        panels.append((a, b))
    if panels:
        write_atomic(out, image_bytes(_side_by_side(panels, make_grid), image_format(out)))
    machine = machine_info(device)
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=1))
        return 0
    print(format_machine(machine))
    print("| task | model | batches x size | genfast s | reference s | speed-up | max pixel diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        diff = "" if r["max_pixel_diff"] is None else f"{r['max_pixel_diff']:.1e}"
        print(f"| {r['task']} | {r['model']} | {r['batches']} x {r['batch_size']} | {r['genfast_s']:.3f} | "
              f"{r['reference_s']:.3f} | {r['speedup']:.2f}x | {diff} |")
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
