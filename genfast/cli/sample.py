"""`genfast sample`: a PNG grid from an embedded model or a `genfast train` checkpoint."""
from __future__ import annotations

import argparse
import time

import torch

from genfast.cli.args import add_device_arguments, finite_float, positive_int, seed_int
from genfast.training.zoo import EMBEDDED, MODEL_KINDS

SAMPLERS = ["ddim", "ddpm", "euler", "euler-a", "dpm++2m", "dpm++2m-sde"]
DEFAULT_STEPS = {"ddim": 50, "ddpm": "all", "euler": 25, "euler-a": 25, "dpm++2m": 20, "dpm++2m-sde": 20}


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", choices=MODEL_KINDS, default=None,
                   help="default: ddpm, or what --checkpoint holds")
    s.add_argument("--checkpoint", default=None, help="a genfast train checkpoint instead of the embedded model")
    s.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="ddpm model only: ddim, ddpm, euler, euler-a (Euler ancestral), dpm++2m (DPM-Solver++ 2M), "
                        "dpm++2m-sde")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps (ddim: 50, ddpm: all 1000, euler/euler-a: 25, dpm++2m(-sde): 20)")
    s.add_argument("--eta", type=finite_float, default=0.0, help="DDIM noise weight (0: deterministic)")
    s.add_argument("--guidance-scale", type=finite_float, default=None,
                   help="classifier-free guidance weight (class-conditional ddpm; default 2)")
    s.add_argument("--label", type=int, default=None, help="sample only this class (default: one class per column)")
    s.add_argument("--n", "--num-images", dest="n", type=positive_int, default=64,
                   help="number of images (write --num-images under torchrun, whose parser takes --n)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--out", default="grid.png", help="image file to write (atomically); the format follows the name")
    s.add_argument("--scale", type=positive_int, default=2, help="pixel upscaling of the grid")
    add_device_arguments(s)
    s.add_argument("--graph", action="store_true", help="CUDA: capture the whole denoising loop in a CUDA graph")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from genfast import use_backend
    from genfast._backend import select_backend
    from genfast.training import distributed as dist_util
    from genfast.training.images import check_writable, save_grid
    from genfast.training.zoo import load_model

    ctx = dist_util.context(args.device)
    out = check_writable(args.out, "--out", image=True) if ctx.rank == 0 else None
    if args.model is None and args.checkpoint is None:
        args.model = "ddpm"
    if args.checkpoint is None and args.model not in EMBEDDED:
        raise ValueError(f"--model: no embedded {args.model} model; pass --checkpoint")
    model = load_model(args.model, args.checkpoint, ctx.device)
    labels = None
    if args.label is not None:
        if model.num_classes is None:
            raise ValueError(f"--label: the {model.kind} model is unconditional")
        if not 0 <= args.label < model.num_classes:
            raise ValueError(f"--label: expected a class in [0, {model.num_classes}), got {args.label}")
        labels = torch.full((args.n,), args.label, dtype=torch.int64)
    elif model.num_classes is not None:
        labels = torch.arange(args.n) % model.num_classes  # one class per grid column
    guidance = args.guidance_scale
    if guidance is None and model.num_classes is not None:
        guidance = 2.0
    if model.kind != "ddpm" and (args.sampler, args.steps, args.eta) != ("ddim", None, 0.0):
        raise ValueError(f"--sampler/--steps/--eta: only the ddpm model has a sampler, not {model.kind}")
    if args.eta != 0.0 and args.sampler != "ddim":
        raise ValueError(f"--eta: only the ddim sampler takes eta, not {args.sampler}")
    if args.graph and (model.kind != "ddpm" or ctx.device.type != "cuda"):
        raise ValueError("--graph: captures the ddpm model's denoising loop on a CUDA device only")
    rows = dist_util.share(args.n, ctx.rank, ctx.world_size)
    with use_backend(args.backend):
        # the starting noise is one draw for the whole batch, sliced per rank: a deterministic sampler
        # gives the same grid on any number of processes
        init = model.latent_noise(args.n, args.seed)[rows.start:rows.stop]
        local_labels = labels[rows.start:rows.stop].to(ctx.device) if labels is not None else None
        t0 = time.perf_counter()
        # per-rank stream for the noise added during sampling (ancestral steps, eta > 0)
        images = model.sample(len(rows), seed=(args.seed + ctx.rank * 0x9E3779B97F4A7C15) % (1 << 63),
                              labels=local_labels, sampler=args.sampler, steps=args.steps, eta=args.eta,
                              guidance_scale=guidance,
                              progress=not args.quiet and ctx.rank == 0, init_noise=init, graph=args.graph)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - t0
        op = "diffusion_step" if args.sampler in ("ddim", "ddpm") else "sampler_step"
        backend = select_backend(op if model.kind == "ddpm" else "random", ctx.device)
    images = ctx.gather(images.contiguous(), args.n)
    if ctx.rank == 0:
        nrow = model.num_classes if labels is not None and args.label is None else None
        save_grid(out, images, nrow=nrow, scale=args.scale)
        what = f"{args.sampler}, {args.steps or DEFAULT_STEPS[args.sampler]} steps" if model.kind == "ddpm" else "one pass"
        print(f"wrote {out}: {args.n} {model.kind} samples ({what}) in {seconds:.2f} s, "
              f"{args.n / seconds:.1f} images/s | backend {backend} | device {ctx.device}"
              + (f" x {ctx.world_size} processes" if ctx.active else ""))
    return 0
