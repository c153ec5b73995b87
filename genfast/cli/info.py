"""`genfast info` (versions, GPU, backends and why one is missing) and `genfast demo` (draw from the
stream on a backend and check it against the reference)."""
from __future__ import annotations

import argparse
import platform

import torch

from genfast.cli.args import BACKEND_CHOICES, seed_int


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run_info(args) -> int:
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


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default=None, choices=BACKEND_CHOICES)


def run_demo(args) -> int:
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
