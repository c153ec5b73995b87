"""Fused VAE reparameterization + KL (genfast.ops.reparameterize_kl), forward + backward, side by side:
eager PyTorch, torch.compile, genfast triton, genfast cuda; with --cpu `genfast bench --device cpu --op vae`.

One step = z, kl = reparameterize_kl(mu, logvar, reduction="batchmean") then the backward with
grad_z given and grad_kl = 1 (the eager version: z = mu + exp(lv/2) * randn_like(mu),
kl = (-0.5 * (1 + lv - mu^2 - exp(lv))).sum(non-batch dims).mean()).

Bytes that must move (N = numel, s = itemsize; the noise is regenerated, never stored):
  forward  reads mu, logvar, writes z            3 N s
  backward reads grad_z, mu, logvar, writes grad_mu, grad_logvar   5 N s
  total 8 N s (plus B floats of KL partials).
                      N          bytes fp32    roofline at 3.35 TB/s (H100 SXM spec; the table uses the
                                                measured copy bandwidth instead)
  (256, 128)          32,768     1.05 MB       0.31 µs  (launch-bound: 2 kernels ~ 2 x 2-3 µs)
  (64, 4, 64, 64)     1,048,576  33.6 MB       10.0 µs
  (16, 16, 128, 128)  4,194,304  134 MB        40.1 µs
Flops per element (forward + backward): one Philox4x32-10 per 4 elements each way (~80 integer ops / 4),
Box-Muller (log, sqrt, sin, cos per 2 elements) each way, 2 exp and ~15 fp32 ops: ~70 ops/element,
3e8 ops at the largest shape, ~5 µs of an H100: memory-bound, roofline = bytes / copy bandwidth.

Run on a GPU: `python benchmarks/bench_vae.py [--dtype float32]`; on a CPU: `python benchmarks/bench_vae.py --cpu`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import genfast  # noqa: E402
from benchmarks.bandwidth import Row, copy_bandwidth_gbs, machine_header, print_table, time_us  # noqa: E402
from genfast.cli.bench import eager_reparameterize_kl  # noqa: E402
from genfast.ops import reparameterize_kl  # noqa: E402

GPU_SHAPES = [(256, 128), (64, 4, 64, 64), (16, 16, 128, 128)]


def make_step(fn, mu, logvar, grad_z):
    one = torch.ones((), device=mu.device, dtype=torch.float32)

    def step():
        z, kl = fn(mu, logvar)
        torch.autograd.backward((z, kl), (grad_z, one.to(kl.dtype)))
        mu.grad = None
        logvar.grad = None

    return step


def genfast_fn(backend):
    def fn(mu, logvar):
        with genfast.use_backend(backend):
            return reparameterize_kl(mu, logvar, seed=1234)

    return fn


def run(device: torch.device, shapes, dtype: torch.dtype, candidates) -> list[Row]:
    copy = copy_bandwidth_gbs(device)
    rows = []
    for shape in shapes:
        mu = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        logvar = (0.3 * torch.randn(shape, device=device, dtype=dtype)).requires_grad_(True)
        grad_z = torch.randn(shape, device=device, dtype=dtype)
        nbytes = 8 * mu.numel() * mu.element_size()
        label = "x".join(map(str, shape))
        for name, fn in candidates:
            try:
                us = time_us(make_step(fn, mu, logvar, grad_z), device, warmup=5, rep=30 if device.type == "cpu" else 100)
            except Exception as exc:  # report, keep going (e.g. a backend not built)
                print(f"{name} {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            rows.append(Row(name, label, str(dtype).split(".")[-1], us, nbytes, copy, "fwd+bwd; % = of roofline"))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the CPU comparison (genfast bench --device cpu --op vae)")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.cpu:  # eager, torch.compile, genfast reference and cpu, interleaved, both CPU shapes of genfast bench
        from genfast.cli import main as genfast_main

        raise SystemExit(genfast_main(["bench", "--device", "cpu", "--op", "vae", "--dtype", args.dtype]))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu for the CPU comparison")
        device = torch.device("cuda")
        candidates = [("eager", eager_reparameterize_kl),
                      ("torch.compile", torch.compile(eager_reparameterize_kl, dynamic=False))]
        for name in ("triton", "cuda"):
            if genfast.backends()[name].available:
                candidates.append((f"genfast {name}", genfast_fn(name)))
        rows = run(device, GPU_SHAPES, dtype, candidates)
    print(machine_header(device))
    print_table(rows, "VAE reparameterize + KL, forward + backward")
    by_shape: dict[str, dict[str, float]] = {}
    for r in rows:
        by_shape.setdefault(r.shape, {})[r.name] = r.us
    for shape, t in by_shape.items():
        base = t.get("eager")
        if base:
            print(f"{shape}: " + ", ".join(f"{k} {base / v:.2f}x eager" for k, v in t.items() if k != "eager"))


if __name__ == "__main__":
    main()
