"""The `genfast` command (also `python -m genfast`)."""
from __future__ import annotations

import argparse
import platform
import sys

import torch


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


BENCHMARKS = {
    "random": "bench_random",
    "diffusion_step": "bench_diffusion_step",
    "sampling_loop": "bench_sampling_loop",
    "gradient_penalty": "bench_gradient_penalty",
    "vae": "bench_vae",
}


def _bench(args, extra: list[str]) -> int:
    import importlib

    try:  # benchmarks/ ships in the repository, not in the wheel
        module = importlib.import_module(f"benchmarks.{BENCHMARKS[args.op]}")
    except ImportError as exc:
        raise RuntimeError(f"the benchmarks live in the genfast repository; run from its root ({exc})") from exc
    module.main(extra)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genfast", description="Fused kernels for generative models.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, the GPU, and which backends are available (and why not)")
    d = sub.add_parser("demo", help="draw from genfast's random stream on a backend and check it")
    d.add_argument("--n", type=int, default=1_000_000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--backend", default=None, choices=["reference", "triton", "cuda", "cpu"])
    b = sub.add_parser("bench", help="micro-benchmarks of an op per backend (run from the repository); "
                       "arguments after the op go to its script, e.g. `genfast bench vae --cpu`")
    b.add_argument("op", choices=sorted(BENCHMARKS), help="which benchmark script to run")
    return p


def main(argv=None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "bench":
        build_parser().parse_args(argv)  # reports the unknown arguments and exits 2
    try:
        if args.command == "bench":
            return _bench(args, extra)
        return {"info": _info, "demo": _demo}[args.command](args)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"genfast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
