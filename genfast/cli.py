"""The `genfast` command (also `python -m genfast`).

  genfast info                      versions, GPU, backends (and why one is missing)
  genfast sample --model ddpm       a PNG grid from an embedded (or your) checkpoint
  genfast compare                   genfast's kernels vs plain PyTorch: training and sampling times
  genfast bench                     every op per backend vs eager PyTorch: µs, GB/s, % of copy bandwidth
  genfast train ddpm --data digits  train, with checkpoints and sample grids every N steps, --resume

Errors in what the user asked for come out as one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time

import torch

from genfast.zoo import EMBEDDED, MODEL_KINDS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def seed_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}") from None
    if not 0 <= v < 1 << 63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {v}")
    return v


# ------------------------------------------------------------------------------------------------------
def _info(args) -> int:
    import genfast
    from genfast import _ext

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"genfast {genfast.__version__} | torch {torch.__version__} | triton {triton_version} | "
          f"Python {platform.python_version()}")
    if _ext._C is not None:
        cuda = f"CUDA runtime {_ext._C.cuda_runtime_version()}" if _ext._C.with_cuda else "no CUDA kernels"
        print(f"extension: {_ext._C.__file__} ({cuda})")
    else:
        print(f"extension: not built: {_ext.EXT_ERROR}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"GPU {i}: {torch.cuda.get_device_name(i)}")
    else:
        print("GPU: none visible to torch")
    print("backends:")
    for info in genfast.backends().values():
        print(f"  {info}")
    return 0


def _demo(args) -> int:
    """Draw from genfast's stream on the chosen backend and compare with the reference."""
    import genfast

    device = torch.device(args.device)
    with genfast.use_backend(args.backend):
        x = genfast.ops.randn((args.n,), seed=args.seed, device=device)
    with genfast.use_backend("reference"):
        ref = genfast.ops.randn((args.n,), seed=args.seed, device=device)
    err = (x - ref).abs().max().item() if args.n else 0.0
    print(f"randn({args.n}, seed={args.seed}) on {device}: mean {x.mean().item():+.4f}, std {x.std().item():.4f}, "
          f"max |backend - reference| = {err:.2e}")
    return 0


def _sample(args) -> int:
    from genfast import distributed as dist_util
    from genfast import use_backend
    from genfast.images import check_writable, save_grid
    from genfast.zoo import load_model

    ctx = dist_util.context(args.device)
    out = check_writable(args.out, "--out") if ctx.rank == 0 else None
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
        from genfast._backend import select_backend

        backend = select_backend("diffusion_step" if model.kind == "ddpm" else "random", ctx.device)
    images = ctx.gather(images.contiguous(), args.n)
    if ctx.rank == 0:
        nrow = model.num_classes if labels is not None and args.label is None else None
        save_grid(out, images, nrow=nrow, scale=args.scale)
        what = f"{args.sampler}, {args.steps or (50 if args.sampler == 'ddim' else 'all')} steps" if model.kind == "ddpm" else "one pass"
        print(f"wrote {out}: {args.n} {model.kind} samples ({what}) in {seconds:.2f} s, "
              f"{args.n / seconds:.1f} images/s | backend {backend} | device {ctx.device}"
              + (f" x {ctx.world_size} processes" if ctx.active else ""))
    return 0


def _train(args) -> int:
    from genfast.training import TrainSettings, train

    extra = {"beta": args.beta} if args.beta is not None else {}
    settings = TrainSettings(model=args.model, data=args.data, image_size=args.image_size, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, out_dir=args.out_dir,
                             save_every=args.save_every, sample_every=args.sample_every,
                             sample_images=args.sample_images, resume=args.resume,
                             export=args.export, device=args.device, progress=not args.quiet, extra=extra)
    if args.export:
        from genfast.images import check_writable

        check_writable(args.export, "--export")
    from genfast import use_backend

    with use_backend(args.backend):
        train(settings)
    return 0


def _compare(args) -> int:
    from genfast.compare import run_compare

    return run_compare(args)


def _bench(args) -> int:
    from genfast.bench import run

    return run(args)


BACKEND_CHOICES = ["reference", "cpu", "cuda", "triton"]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genfast", description="Fused kernels for generative models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("info", help="versions, the GPU, and which backends are available (and why not)")

    d = sub.add_parser("demo", help="draw from genfast's random stream on a backend and check it")
    d.add_argument("--n", type=int, default=1_000_000)
    d.add_argument("--seed", type=seed_int, default=0)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--backend", default=None, choices=BACKEND_CHOICES)

    s = sub.add_parser("sample", help="sample a PNG grid from an embedded model or a checkpoint")
    s.add_argument("--model", choices=MODEL_KINDS, default=None,
                   help="default: ddpm, or what --checkpoint holds")
    s.add_argument("--checkpoint", default=None, help="a genfast train checkpoint instead of the embedded model")
    s.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="ddpm model only")
    s.add_argument("--steps", type=positive_int, default=None, help="denoising steps (ddim: 50, ddpm: all 1000)")
    s.add_argument("--eta", type=finite_float, default=0.0, help="DDIM noise weight (0: deterministic)")
    s.add_argument("--guidance-scale", type=finite_float, default=None,
                   help="classifier-free guidance weight (class-conditional ddpm; default 2)")
    s.add_argument("--label", type=int, default=None, help="sample only this class (default: one class per column)")
    s.add_argument("--n", "--num-images", dest="n", type=positive_int, default=64,
                   help="number of images (write --num-images under torchrun, whose parser takes --n)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--out", default="grid.png", help="PNG file to write (atomically)")
    s.add_argument("--scale", type=positive_int, default=2, help="pixel upscaling of the grid")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="force a genfast backend")
    s.add_argument("--graph", action="store_true", help="CUDA: capture the whole denoising loop in a CUDA graph")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("compare", help="genfast's kernels vs plain PyTorch: training per epoch, sampling per batch")
    from genfast.compare import add_arguments as compare_arguments

    compare_arguments(c)

    b = sub.add_parser("bench", help="every op per backend vs eager PyTorch (and torch.compile on a GPU)")
    from genfast.bench import add_arguments as bench_arguments

    bench_arguments(b)

    t = sub.add_parser("train", help="train a model; checkpoints and sample grids every N steps; --resume")
    t.add_argument("model", choices=MODEL_KINDS)
    t.add_argument("--data", default="digits", help="digits (scikit-learn's), a folder of images or an .npz file")
    t.add_argument("--image-size", type=positive_int, default=16)
    t.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (GANs: generator steps)")
    t.add_argument("--batch-size", type=positive_int, default=64, help="global batch (split over torchrun ranks)")
    t.add_argument("--lr", type=finite_float, default=None, help="learning rate (default: the model's)")
    t.add_argument("--beta", type=finite_float, default=None, help="beta-vae: KL weight (default 4)")
    t.add_argument("--seed", type=seed_int, default=0)
    t.add_argument("--out-dir", default=None, help="checkpoints and samples (default runs/<model>)")
    t.add_argument("--save-every", type=positive_int, default=500)
    t.add_argument("--sample-every", type=positive_int, default=500)
    t.add_argument("--sample-images", type=positive_int, default=64, help="images in each sample grid")
    t.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.safetensors")
    t.add_argument("--export", default=None, help="also write fp16 sampling weights here at the end")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="force a genfast backend")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


COMMANDS = {"info": _info, "demo": _demo, "sample": _sample, "train": _train, "compare": _compare, "bench": _bench}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed, one line) and --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"genfast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the user gets one line, not a traceback
        from genfast.training import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"genfast {args.command}: {exc}", file=sys.stderr)
            return 130
        expected = isinstance(exc, (ValueError, TypeError, RuntimeError, OSError))
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        prefix = "error" if expected else f"unexpected error ({type(exc).__name__})"
        print(f"genfast {args.command}: {prefix}: {message}", file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
