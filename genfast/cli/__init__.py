"""The `genfast` command (also `python -m genfast`), one module per command:

  genfast info                      versions, GPU, backends (and why one is missing)   cli/info.py
  genfast demo                      draw from genfast's stream and check it             cli/info.py
  genfast sample --model ddpm       an image grid from an embedded (or your) checkpoint cli/sample.py
  genfast train ddpm --data digits  train, with checkpoints and sample grids, --resume  cli/train.py
  genfast compare                   genfast's kernels vs plain PyTorch: train/sample     cli/compare.py
  genfast bench                     every op per backend vs eager PyTorch               cli/bench.py

Errors in what the user asked for come out as one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from genfast.cli import bench, compare, info, sample, train
from genfast.cli.args import Parser

# name: (help, add_arguments, run)
COMMANDS = {
    "info": ("versions, the GPU, and which backends are available (and why not)", info.add_info_arguments,
             info.run_info),
    "demo": ("draw from genfast's random stream on a backend and check it", info.add_demo_arguments, info.run_demo),
    "sample": ("sample an image grid from an embedded model or a checkpoint", sample.add_arguments, sample.run),
    "compare": ("genfast's kernels vs plain PyTorch: training per epoch, sampling per batch", compare.add_arguments,
                compare.run_compare),
    "bench": ("every op per backend vs eager PyTorch (and torch.compile)", bench.add_arguments, bench.run),
    "train": ("train a model; checkpoints and sample grids every N steps; --resume", train.add_arguments, train.run),
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="genfast", description="Fused kernels for generative models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed, one line) and --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command][2](args)
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
