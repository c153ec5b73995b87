"""`genfast sample`: a PNG grid from an embedded model or a `genfast train` checkpoint.

Model-specific options (add_model_arguments): --resolution (progan: one of the grown resolutions),
--init-image/--strength (ddpm, ldm: img2img), --data (pix2pix, cyclegan, srgan, srresnet: where the held-out
inputs come from). Image-to-image models write bands of three rows: input, output, target."""
from __future__ import annotations

import argparse
import time

import torch

from genfast.cli.args import add_device_arguments, finite_float, positive_int, seed_int
from genfast.training.zoo import EMBEDDED, EMBEDDED_VARIANTS, MODEL_KINDS, TRANSLATION_KINDS

DIFFUSION_KINDS = ("ddpm", "ldm", "distill")  # the kinds with a sampler, steps and eta

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
    add_model_arguments(s)


def add_model_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--resolution", type=positive_int, default=None,
                   help="progan: sample one of the grown resolutions (4, 8, 16) at its own size")
    s.add_argument("--init-image", default=None,
                   help="ddpm, ldm: img2img from this image (resized to the model's size), noised to --strength")
    s.add_argument("--strength", type=finite_float, default=None,
                   help="img2img: how far to noise the init image, in (0, 1] (default 0.6)")
    s.add_argument("--data", default=None,
                   help="pix2pix, cyclegan, srgan, srresnet: take the held-out inputs from this data "
                        "(default: the data the model was trained on)")


def _load_init_image(path: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image file -> [1, C, S, S] in [0, 1] at the model's channels and size."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("--init-image: reading an image needs Pillow (pip install pillow)") from None
    import numpy as np

    c, h, w = shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BICUBIC)
            pixels = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise ValueError(f"--init-image: cannot read {path}: {exc}") from None
    x = torch.from_numpy(pixels)
    return (x[None] if c == 1 else x.permute(2, 0, 1))[None].contiguous()


def _check_model_arguments(args, model) -> None:
    if args.resolution is not None and model.kind != "progan":
        raise ValueError(f"--resolution: only progan grows; not {model.kind}")
    if (args.init_image is not None or args.strength is not None) and model.kind not in ("ddpm", "ldm"):
        raise ValueError(f"--init-image/--strength: img2img needs a diffusion model in pixel or latent space "
                         f"(ddpm, ldm), not {model.kind}")
    if args.strength is not None and args.init_image is None:
        raise ValueError("--strength: img2img needs --init-image")
    if args.data is not None and model.kind not in TRANSLATION_KINDS:
        raise ValueError(f"--data: only the image-to-image models ({', '.join(TRANSLATION_KINDS)}) take inputs")


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
    # the embedded distilled students: --steps picks one
    variant = args.steps if args.checkpoint is None and args.model in EMBEDDED_VARIANTS else None
    model = load_model(args.model, args.checkpoint, ctx.device, variant=variant)
    _check_model_arguments(args, model)
    if model.kind in TRANSLATION_KINDS:
        return _run_translation(args, model, ctx, out)
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
    if model.kind not in DIFFUSION_KINDS and (args.sampler, args.steps, args.eta) != ("ddim", None, 0.0):
        raise ValueError(f"--sampler/--steps/--eta: only the diffusion models ({', '.join(DIFFUSION_KINDS)}) "
                         f"have a sampler, not {model.kind}")
    if args.eta != 0.0 and args.sampler != "ddim":
        raise ValueError(f"--eta: only the ddim sampler takes eta, not {args.sampler}")
    if model.kind == "distill" and args.sampler != "ddim":
        raise ValueError(f"--sampler: the distilled student samples with ddim only, not {args.sampler}")
    if model.kind == "distill" and guidance is not None and args.guidance_scale is None:
        guidance = None  # the student has its teacher's guidance built in
    if args.graph and (model.kind not in DIFFUSION_KINDS or ctx.device.type != "cuda"):
        raise ValueError("--graph: captures a diffusion model's denoising loop on a CUDA device only")
    extra = {}
    if args.resolution is not None:
        extra["resolution"] = args.resolution
    if args.init_image is not None:
        extra["init_images"] = _load_init_image(args.init_image, model.image_shape)
        extra["strength"] = 0.6 if args.strength is None else args.strength
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
                              progress=not args.quiet and ctx.rank == 0, init_noise=init, graph=args.graph, **extra)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - t0
        op = "diffusion_step" if args.sampler in ("ddim", "ddpm") else "sampler_step"
        backend = select_backend(op if model.kind in DIFFUSION_KINDS else "random", ctx.device)
    images = ctx.gather(images.contiguous(), args.n)
    if ctx.rank == 0:
        nrow = model.num_classes if labels is not None and args.label is None else None
        save_grid(out, images, nrow=nrow, scale=args.scale)
        if args.sampler == "ddim":
            default_steps = model.default_steps
        else:
            default_steps = DEFAULT_STEPS[args.sampler]
        what = (f"{args.sampler}, {args.steps or default_steps} steps" if model.kind in DIFFUSION_KINDS else "one pass")
        if "init_images" in extra:
            what += f", img2img from {args.init_image} at strength {extra['strength']}"
        print(f"wrote {out}: {args.n} {model.kind} samples ({what}) in {seconds:.2f} s, "
              f"{args.n / seconds:.1f} images/s | backend {backend} | device {ctx.device}"
              + (f" x {ctx.world_size} processes" if ctx.active else ""))
    return 0


def _run_translation(args, model, ctx, out) -> int:
    """pix2pix, cyclegan, srgan, srresnet: translate --n held-out inputs (one pass; rank 0 alone under torchrun)
    and write bands of input / output / target rows (cyclegan: b -> a, then a -> b)."""
    from genfast import use_backend
    from genfast.training.images import save_grid
    from genfast.training.zoo import preview

    if (args.sampler, args.steps, args.eta, args.guidance_scale, args.label, args.graph) != \
            ("ddim", None, 0.0, None, None, False):
        raise ValueError(f"--sampler/--steps/--eta/--guidance-scale/--label/--graph: the {model.kind} model "
                         "translates images in one pass; it has no sampler or labels")
    model.data_spec = args.data
    if ctx.rank != 0:
        ctx.barrier()
        return 0
    with use_backend(args.backend):
        t0 = time.perf_counter()
        images, nrow = preview(model, args.n, seed=args.seed)
        seconds = time.perf_counter() - t0
    save_grid(out, images, nrow=nrow, scale=args.scale)
    source = args.data or model.meta.get("settings", {}).get("data", "digits")
    print(f"wrote {out}: {args.n} held-out {source} inputs through the {model.kind} generator (rows: input, "
          f"output, target) in {seconds:.2f} s | device {ctx.device}")
    ctx.barrier()
    return 0
