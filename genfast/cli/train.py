"""`genfast train KIND`: train on the digits, an image folder or an .npz, with checkpoints, sample
grids and exact --resume (the loops live in genfast.training)."""
from __future__ import annotations

import argparse
from pathlib import Path

from genfast.cli.args import add_device_arguments, finite_float, positive_int, seed_int
from genfast.training.zoo import TRAIN_KINDS


def add_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("model", choices=TRAIN_KINDS)
    t.add_argument("--data", default="digits", help="digits (scikit-learn's), a folder of images or an .npz file")
    t.add_argument("--image-size", type=positive_int, default=16)
    t.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (GANs: generator steps)")
    t.add_argument("--batch-size", type=positive_int, default=64, help="global batch (split over torchrun ranks)")
    t.add_argument("--lr", type=finite_float, default=None, help="learning rate (default: the model's)")
    t.add_argument("--beta", type=finite_float, default=None, help="beta-vae: KL weight (default 4)")
    t.add_argument("--teacher", default=None,
                   help="distill: the ddpm checkpoint to distill (default: the embedded ddpm)")
    t.add_argument("--stages", type=_stages, default=None,
                   help="distill: student steps per stage, comma-separated (default 25,12,6,3; the teacher "
                        "samples with twice the first)")
    t.add_argument("--seed", type=seed_int, default=0)
    t.add_argument("--out-dir", default=None, help="checkpoints and samples (default runs/<model>)")
    t.add_argument("--save-every", type=positive_int, default=500)
    t.add_argument("--sample-every", type=positive_int, default=500)
    t.add_argument("--sample-images", type=positive_int, default=64, help="images in each sample grid")
    t.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.safetensors")
    t.add_argument("--export", default=None, help="also write fp16 sampling weights here at the end")
    add_device_arguments(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _stages(text: str) -> list[int]:
    try:
        stages = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts, got {text!r}") from None
    if not stages or min(stages) < 1 or any(b >= a for a, b in zip(stages, stages[1:])):
        raise argparse.ArgumentTypeError(f"expected decreasing positive step counts, got {text!r}")
    return stages


def run(args) -> int:
    from genfast import use_backend
    from genfast.training import TrainSettings, train

    extra = {"beta": args.beta} if args.beta is not None else {}
    if (args.teacher is not None or args.stages is not None) and args.model != "distill":
        raise ValueError("--teacher/--stages: only for distill")
    if args.teacher is not None:
        extra["teacher"] = args.teacher
    if args.stages is not None:
        extra["stages"] = args.stages
    settings = TrainSettings(model=args.model, data=args.data, image_size=args.image_size, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, out_dir=args.out_dir,
                             save_every=args.save_every, sample_every=args.sample_every,
                             sample_images=args.sample_images, resume=args.resume,
                             export=args.export, device=args.device, progress=not args.quiet, extra=extra)
    from genfast.training.images import check_writable

    # before any training: a run that cannot write its checkpoints fails now, not at the first save
    check_writable(Path(args.out_dir or Path("runs") / args.model) / "last.safetensors", "--out-dir")
    if args.export:
        check_writable(args.export, "--export")
    with use_backend(args.backend):
        train(settings)
    return 0
