"""`genfast bench`: genfast's fused ops per backend next to eager PyTorch, in µs, GB/s and % of copy bandwidth.

Every kernel is reported in µs, GB/s (bytes it must move at least: inputs read once, outputs
written once) and % of the device's measured copy bandwidth (a large device-to-device copy,
counting bytes read plus bytes written), the practical ceiling of a memory-bound kernel.
The timing helpers below are also what the scripts in the repository's benchmarks/ use.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from typing import Callable

import torch

import genfast
from genfast.ops import ddim_step, ddpm_step, gradient_norm_penalty, interpolate, randn, reparameterize_kl


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_us(fn: Callable[[], object], device, warmup: int = 10, rep: int = 50) -> float:
    """Median wall time of `fn()` in µs. CUDA: CUDA events around each call, after warm-up.

    Each call is timed alone (events on the stream), so a launch-bound op shows its per-call latency.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    else:
        for _ in range(rep):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def time_graph_us(fn: Callable[[], object], device, replays_per_graph: int = 20, rep: int = 20) -> float:
    """Median µs per call of `fn` captured `replays_per_graph` times in one CUDA graph (launch gaps gone)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("device: CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(replays_per_graph):
            fn()
    return time_us(graph.replay, device, warmup=3, rep=rep) / replays_per_graph


_COPY_CACHE: dict[str, float] = {}


def copy_bandwidth_gbs(device, nbytes: int = 1 << 30) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written), cached per device."""
    device = torch.device(device)
    key = str(device)
    if key not in _COPY_CACHE:
        if device.type == "cpu":
            nbytes = min(nbytes, 1 << 28)
        n = nbytes // 4
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        us = time_us(lambda: dst.copy_(src), device, warmup=3, rep=20)
        _COPY_CACHE[key] = 2 * n * 4 / (us * 1e-6) / 1e9
    return _COPY_CACHE[key]


@dataclass
class Row:
    name: str
    shape: str
    dtype: str
    us: float
    bytes_moved: int
    copy_gbs: float
    note: str = ""

    @property
    def gbs(self) -> float:
        return self.bytes_moved / (self.us * 1e-6) / 1e9 if self.us > 0 else float("nan")

    @property
    def pct_copy(self) -> float:
        return 100.0 * self.gbs / self.copy_gbs

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": self.shape, "dtype": self.dtype, "us": round(self.us, 2),
                "GB/s": round(self.gbs, 1), "pct_of_copy_bw": round(self.pct_copy, 1), "note": self.note}


def machine_info(device) -> dict:
    """What a figure was measured on: device name, date, torch and triton versions, copy bandwidth."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return {"device": what, "date": date.today().isoformat(), "torch": torch.__version__, "triton": triton_version,
            "copy_bandwidth_gbs": copy_bandwidth_gbs(device)}


def machine_header(device) -> str:
    return format_machine(machine_info(device))


def format_machine(m: dict) -> str:
    return (f"{m['device']} | date {m['date']} | torch {m['torch']} | triton {m['triton']} | "
            f"copy bandwidth {m['copy_bandwidth_gbs']:.0f} GB/s")


def print_table(rows: list[Row], title: str = "") -> None:
    if title:
        print(f"\n## {title}\n")
    print("| op | shape | dtype | µs | GB/s | % of copy BW | note |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.name} | {r.shape} | {r.dtype} | {r.us:.1f} | {r.gbs:.0f} | {r.pct_copy:.0f}% | {r.note} |")


# ---------------------------------------------------------------------------------------------
# Op cases: the eager PyTorch formula a user writes by hand next to the genfast op.
# ---------------------------------------------------------------------------------------------
SEED = 1234
A_T, A_PREV = 0.3, 0.6  # cumulative alphas of a mid-schedule diffusion step


@dataclass
class Case:
    """One benchmarked call. `eager(*inputs)` and `fused(*inputs)` return a tuple of tensors; with
    `grads` a step is also the backward: autograd.grad of the outputs (given `grads`) with respect to
    the inputs that require grad. `nbytes`: what the fused kernels must move, each pass reading its
    inputs once and writing its outputs once (in-kernel noise and per-sample scalars not counted)."""
    op: str
    variant: str
    inputs: tuple
    eager: Callable
    fused: Callable
    nbytes: int
    grads: tuple | None = None

    def step(self, fn: Callable) -> Callable[[], tuple]:
        if self.grads is None:
            return lambda: tuple(fn(*self.inputs))
        leaves = [t for t in self.inputs if t.requires_grad]

        def step():
            outs = tuple(fn(*self.inputs))
            grads = [g if g.dtype == o.dtype else g.to(o.dtype) for g, o in zip(self.grads, outs)]
            return outs + torch.autograd.grad(outs, leaves, grads)

        return step


def eager_ddim(x, m, a_t, a_prev, eta):
    """DDIM (epsilon prediction) as plain torch ops, noise from torch.randn_like."""
    beta_t = 1 - a_t
    x0 = (x - beta_t ** 0.5 * m) / a_t ** 0.5
    std = eta * ((1 - a_prev) / beta_t * (1 - a_t / a_prev)) ** 0.5
    prev = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * m
    return prev + std * torch.randn_like(x) if eta > 0 else prev


def eager_ddpm(x, m, a_t, a_prev):
    """DDPM ancestral step (epsilon prediction, fixed_small variance) as plain torch ops."""
    beta_t, alpha = 1 - a_t, a_t / a_prev
    x0 = (x - beta_t ** 0.5 * m) / a_t ** 0.5
    mean = a_prev ** 0.5 * (1 - alpha) / beta_t * x0 + alpha ** 0.5 * (1 - a_prev) / beta_t * x
    return mean + ((1 - a_prev) / beta_t * (1 - alpha)) ** 0.5 * torch.randn_like(x)


def eager_gradient_penalty(g):
    return 10 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def eager_interpolate(real, fake):
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), dtype=real.dtype, device=real.device)
    return torch.lerp(fake, real, alpha)


def eager_reparameterize_kl(mu, logvar):
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=tuple(range(1, mu.dim()))).mean()
    return z, kl


def random_cases(make, shape, n, s):
    """randn: writes N s bytes, reads nothing (~40 ops per element: Philox + Box-Muller)."""
    dtype, device = make.dtype, make.device
    return [Case("random", "randn", (), lambda: (torch.randn(shape, dtype=dtype, device=device),),
                 lambda: (randn(shape, seed=SEED, dtype=dtype, device=device),), n * s)]


def diffusion_step_cases(make, shape, n, s):
    """One DDIM/DDPM step: reads sample and model_output, writes prev: 3 N s bytes (~15 ops per element,
    plus ~40 for the in-kernel noise)."""
    x, m = make(shape), make(shape)
    return [
        Case("diffusion_step", "ddim eta=0", (x, m), lambda x, m: (eager_ddim(x, m, A_T, A_PREV, 0.0),),
             lambda x, m: (ddim_step(x, m, A_T, A_PREV),), 3 * n * s),
        Case("diffusion_step", "ddim eta=1", (x, m), lambda x, m: (eager_ddim(x, m, A_T, A_PREV, 1.0),),
             lambda x, m: (ddim_step(x, m, A_T, A_PREV, eta=1.0, seed=SEED),), 3 * n * s),
        Case("diffusion_step", "ddpm", (x, m), lambda x, m: (eager_ddpm(x, m, A_T, A_PREV),),
             lambda x, m: (ddpm_step(x, m, A_T, A_PREV, seed=SEED),), 3 * n * s),
    ]


def gradient_penalty_cases(make, shape, n, s):
    """Penalty of g = dD/dx, forward (reads g) + backward (reads g, writes dP/dg): 3 N s bytes, ~3 ops per
    element. interpolate: reads real, fake, writes x_hat: 3 N s bytes, 3 ops per element."""
    g = (make(shape) / math.sqrt(n // shape[0])).requires_grad_(True)  # per-sample norms near 1, as in training
    one = torch.ones((), dtype=make.dtype, device=make.device)
    real, fake = make(shape), make(shape)
    return [
        Case("gradient_penalty", "norm penalty fwd+bwd", (g,), lambda g: (eager_gradient_penalty(g),),
             lambda g: (gradient_norm_penalty(g),), 3 * n * s, (one,)),
        Case("gradient_penalty", "interpolate", (real, fake), lambda r, f: (eager_interpolate(r, f),),
             lambda r, f: (interpolate(r, f, seed=SEED),), 3 * n * s),
    ]


def vae_cases(make, shape, n, s):
    """reparameterize_kl forward (reads mu, logvar, writes z) + backward (reads grad_z, mu, logvar, writes
    grad_mu, grad_logvar): 8 N s bytes, ~70 ops per element (noise regenerated in the backward)."""
    mu = make(shape).requires_grad_(True)
    logvar = (0.3 * make(shape)).requires_grad_(True)
    grads = (make(shape), torch.ones((), dtype=torch.float32, device=make.device))
    return [Case("vae", "reparameterize_kl fwd+bwd", (mu, logvar), eager_reparameterize_kl,
                 lambda mu, lv: reparameterize_kl(mu, lv, seed=SEED), 8 * n * s, grads)]


OPS = {"random": random_cases, "diffusion_step": diffusion_step_cases,
       "gradient_penalty": gradient_penalty_cases, "vae": vae_cases}
SHAPES = {  # per (device type, --size); CPU "default" keeps a whole run near 30 s on 2 cores
    ("cuda", "default"): [(64, 3, 64, 64), (16, 4, 128, 128), (64, 3, 256, 256)],
    ("cpu", "default"): [(64, 3, 64, 64)],
    ("cuda", "small"): [(4, 3, 8, 8)],
    ("cpu", "small"): [(4, 3, 8, 8)],
}
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}  # rtol, atol


class InputMaker:
    """Deterministic normal inputs on the device, without touching torch's global generator."""

    def __init__(self, dtype, device):
        self.dtype, self.device = dtype, device
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, shape):
        return torch.randn(shape, generator=self.gen).to(self.device, self.dtype)


# ---------------------------------------------------------------------------------------------
# Running: check every genfast backend against the reference, then time it.
# ---------------------------------------------------------------------------------------------
@dataclass
class OpRow(Row):
    op: str = ""
    variant: str = ""
    backend: str = ""
    eager_us: float = float("nan")

    @property
    def speedup(self) -> float:
        return self.eager_us / self.us

    def as_dict(self) -> dict:
        return {"op": self.op, "variant": self.variant, "backend": self.backend, "shape": self.shape,
                "dtype": self.dtype, "us": self.us, "bytes": self.bytes_moved, "GB/s": self.gbs,
                "pct_of_copy_bw": self.pct_copy, "speedup_vs_eager": self.speedup}


def genfast_backends(device: torch.device) -> list[str]:
    """The backends serving `device` (no Triton interpreter or CUDA emulation timings: those are test tools)."""
    names = ["reference"] if device.type == "cpu" else []
    return names + [name for name, info in genfast.backends().items()
                    if name not in ("reference", "cuda-emulated") and info.available and device.type in info.devices
                    and not (name == "triton" and device.type == "cpu")]


def check_against_reference(case: Case, backend: str, dtype: torch.dtype) -> None:
    with genfast.use_backend("reference"):
        expected = case.step(case.fused)()
    with genfast.use_backend(backend):
        actual = case.step(case.fused)()
    rtol, atol = TOLERANCE[dtype]
    for i, (a, e) in enumerate(zip(actual, expected)):
        bad = a.shape != e.shape or not torch.isclose(a.float(), e.float(), rtol, atol, equal_nan=True).all()
        if bad:
            err = (a.float() - e.float()).abs().max().item() if a.shape == e.shape else float("nan")
            raise RuntimeError(f"{case.op} {case.variant}: the {backend} backend disagrees with the reference "
                               f"(output {i}, max |diff| {err:.3g}, rtol {rtol}, atol {atol}); not timing a wrong kernel")


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        return time_us(fn, device)
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    rep = int(min(50, max(3, 0.3 / max(once, 1e-9))))  # ~0.3 s per row on a CPU
    return time_us(fn, device, warmup=min(10, rep // 3 + 1), rep=rep)


def case_rows(case: Case, device: torch.device, dtype: torch.dtype, shape, copy: float) -> list[OpRow]:
    candidates = [("eager", case.eager)]
    if device.type == "cuda":
        candidates.append(("torch.compile", torch.compile(case.eager, dynamic=False)))
    for backend in genfast_backends(device):
        if backend != "reference":
            check_against_reference(case, backend, dtype)

        def fused(*inputs, backend=backend):
            with genfast.use_backend(backend):
                return case.fused(*inputs)

        candidates.append((backend, fused))
    rows, label, dt = [], "x".join(map(str, shape)), str(dtype).split(".")[-1]
    for name, fn in candidates:
        try:
            us = _time(case.step(fn), device)
        except Exception as exc:
            if name != "torch.compile":
                raise
            print(f"{case.op} {case.variant}: torch.compile failed, row left out ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            continue
        eager_us = rows[0].us if rows else us
        rows.append(OpRow(f"{case.op} {case.variant}", label, dt, us, case.nbytes, copy, "", case.op, case.variant,
                          name, eager_us))
    return rows


def _num(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"  # tiny CPU shapes give fractions of a GB/s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--op", action="append", choices=list(OPS), help="op to benchmark (repeatable; default: all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--size", choices=["small", "default"], default="default",
                        help="small: tiny shapes for a quick check; default: realistic shapes")
    parser.add_argument("--json", action="store_true", help="print one JSON object (machine + rows) instead of a table")


def run(args) -> int:
    from genfast.training.distributed import resolve_device

    device = resolve_device(args.device)  # the same --device rules (and errors) as sample/train/compare
    dtype = getattr(torch, args.dtype)
    make = InputMaker(dtype, device)
    machine = machine_info(device)
    rows = []
    for op in dict.fromkeys(args.op or OPS):
        for shape in SHAPES[(device.type, args.size)]:
            n = math.prod(shape)
            for case in OPS[op](make, shape, n, dtype.itemsize):
                rows += case_rows(case, device, dtype, shape, machine["copy_bandwidth_gbs"])
    if args.json:
        print(json.dumps({"machine": machine, "rows": [r.as_dict() for r in rows]}, allow_nan=False))
        return 0
    print(format_machine(machine))
    print("\n| op | variant | backend | shape | dtype | µs | GB/s | % of copy BW | speed-up vs eager |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.op} | {r.variant} | {r.backend} | {r.shape} | {r.dtype} | {_num(r.us)} | {_num(r.gbs)} | "
              f"{_num(r.pct_copy)}% | {r.speedup:.2f}x |")
    return 0
