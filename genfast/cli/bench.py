"""`genfast bench`: genfast's fused ops per backend next to eager PyTorch and torch.compile of the same formula.

Every case is timed on each candidate -- the eager formula a user writes by hand, `torch.compile` of that
formula (`dynamic=False`), genfast's backends for the device -- and on a plain copy (`dst.copy_(src)`) that
moves as many bytes as the case, all in interleaved repetitions (each repetition times every candidate
once, in a rotating order, so that load from other processes falls on all of them alike). A row gives
the median µs per call and the spread of the repetitions, GB/s (the bytes the fused kernels must move at
least: inputs read once, outputs written once, in-kernel noise not counted) and that as a % of the copy
bandwidth measured at the same footprint, the practical ceiling of a memory-bound kernel whether the
data fit in cache or not.

Shapes: on a CPU, a default shape (64,3,64,64) whose tensors fit in the last-level cache and an
out-of-cache shape, (32,3,256,256) for 4-byte dtypes (64,... for 2-byte ones; scaled with the LLC on
machines whose LLC exceeds 32 MiB): each tensor is 3/4 of the LLC, so a case that touches two or more
of them streams from memory. Larger tensors would exceed glibc's 32 MiB mmap threshold, and every call
would then page-fault its fresh outputs in (9 ms per 38 MB here), timing the kernel's page zeroing
rather than the kernel. The timing helpers below are also what the scripts in benchmarks/ use.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
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
    """Measured copy bandwidth in GB/s (bytes read + bytes written) of one large copy, cached per device.
    (`genfast bench` itself measures the copy at each case's footprint, interleaved with the case.)"""
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


def llc_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), 32 MiB when it cannot be read."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or 32 << 20


def cpu_isa() -> str:
    """The instruction set genfast's CPU kernels dispatch to (csrc/simd_cpu.h), as far as Python can tell:
    from /proc/cpuinfo, lowered by GENFAST_CPU_ISA like the kernels."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        flags = []
    level = 0
    if {"avx2", "fma", "f16c", "bmi2"} <= set(flags):
        level = 1
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= set(flags):
            level = 2
    want = {"base": 0, "avx2": 1, "avx512": 2}.get(os.environ.get("GENFAST_CPU_ISA", ""), 2)
    return ("base", "avx2", "avx512")[min(level, want)]


def machine_info(device) -> dict:
    """What a figure was measured on: device name, date, torch and triton versions, copy bandwidth; on a CPU
    also the thread count, last-level cache, instruction set of the kernels and the load average."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    info = {"date": date.today().isoformat(), "torch": torch.__version__, "triton": triton_version}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    else:
        info["device"] = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        info.update(threads=torch.get_num_threads(), cpus=os.cpu_count(), llc_bytes=llc_bytes(), cpu_isa=cpu_isa(),
                    load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    info["copy_bandwidth_gbs"] = copy_bandwidth_gbs(device)
    return info


def machine_header(device) -> str:
    return format_machine(machine_info(device))


def format_machine(m: dict) -> str:
    line = (f"{m['device']} | date {m['date']} | torch {m['torch']} | triton {m['triton']} | "
            f"copy bandwidth {m['copy_bandwidth_gbs']:.0f} GB/s")
    if "llc_bytes" in m:
        line += f" (1 GiB copy) | LLC {m['llc_bytes'] / 2**20:.0f} MiB | kernels {m['cpu_isa']}"
    if m.get("load_average"):
        line += f" | load {m['load_average'][0]:.2f}"
    return line


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
    inputs once and writing its outputs once (in-kernel noise and per-sample scalars not counted).
    `draws_noise`: the case draws noise (eager/torch.compile with torch's generator, genfast in-kernel)."""
    op: str
    variant: str
    inputs: tuple
    eager: Callable
    fused: Callable
    nbytes: int
    grads: tuple | None = None
    draws_noise: bool = False

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


def eager_ddim_noise(x, m, noise, a_t, a_prev, eta):
    """DDIM (epsilon prediction) with the noise given as a tensor (diffusers' variance_noise)."""
    beta_t = 1 - a_t
    x0 = (x - beta_t ** 0.5 * m) / a_t ** 0.5
    std = eta * ((1 - a_prev) / beta_t * (1 - a_t / a_prev)) ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * m + std * noise


def eager_ddpm(x, m, a_t, a_prev, noise=None, clip=None):
    """DDPM ancestral step (epsilon prediction, fixed_small variance) as plain torch ops; noise from
    torch.randn_like unless given; x0 clamped to [-clip, clip] when clip is given."""
    beta_t, alpha = 1 - a_t, a_t / a_prev
    x0 = (x - beta_t ** 0.5 * m) / a_t ** 0.5
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    mean = a_prev ** 0.5 * (1 - alpha) / beta_t * x0 + alpha ** 0.5 * (1 - a_prev) / beta_t * x
    z = torch.randn_like(x) if noise is None else noise
    return mean + ((1 - a_prev) / beta_t * (1 - alpha)) ** 0.5 * z


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
                 lambda: (randn(shape, seed=SEED, dtype=dtype, device=device),), n * s, draws_noise=True)]


def diffusion_step_cases(make, shape, n, s):
    """One DDIM/DDPM step: reads sample and model_output (and the noise tensor when given), writes prev:
    3 N s bytes (4 N s with a noise tensor); ~15 ops per element, plus ~40 for noise drawn in-kernel."""
    x, m = make(shape), make(shape)
    z = make(shape)
    return [
        Case("diffusion_step", "ddim eta=0", (x, m), lambda x, m: (eager_ddim(x, m, A_T, A_PREV, 0.0),),
             lambda x, m: (ddim_step(x, m, A_T, A_PREV),), 3 * n * s),
        Case("diffusion_step", "ddim eta=1", (x, m), lambda x, m: (eager_ddim(x, m, A_T, A_PREV, 1.0),),
             lambda x, m: (ddim_step(x, m, A_T, A_PREV, eta=1.0, seed=SEED),), 3 * n * s, draws_noise=True),
        Case("diffusion_step", "ddim eta=1 noise tensor", (x, m, z),
             lambda x, m, z: (eager_ddim_noise(x, m, z, A_T, A_PREV, 1.0),),
             lambda x, m, z: (ddim_step(x, m, A_T, A_PREV, eta=1.0, noise=z),), 4 * n * s),
        Case("diffusion_step", "ddpm", (x, m), lambda x, m: (eager_ddpm(x, m, A_T, A_PREV),),
             lambda x, m: (ddpm_step(x, m, A_T, A_PREV, seed=SEED),), 3 * n * s, draws_noise=True),
        Case("diffusion_step", "ddpm clip=1 noise tensor", (x, m, z),
             lambda x, m, z: (eager_ddpm(x, m, A_T, A_PREV, noise=z, clip=1.0),),
             lambda x, m, z: (ddpm_step(x, m, A_T, A_PREV, noise=z, clip_sample_range=1.0),), 4 * n * s),
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
                 lambda mu, lv: reparameterize_kl(mu, lv, seed=SEED), 8 * n * s, grads, draws_noise=True)]


OPS = {"random": random_cases, "diffusion_step": diffusion_step_cases,
       "gradient_penalty": gradient_penalty_cases, "vae": vae_cases}
CUDA_SHAPES = [(64, 3, 64, 64), (16, 4, 128, 128), (64, 3, 256, 256)]
SMALL_SHAPE = (4, 3, 8, 8)
CPU_CACHED_SHAPE = (64, 3, 64, 64)
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}  # rtol, atol


def out_of_cache_shape(dtype: torch.dtype, llc: int | None = None) -> tuple[int, ...]:
    """(B, 3, 256, 256) whose tensors are 3/4 of the last-level cache: (32, 3, 256, 256) fp32 with 32 MiB."""
    llc = llc or llc_bytes()
    per_sample = 3 * 256 * 256 * dtype.itemsize
    return (max(1, round(0.75 * llc / per_sample)), 3, 256, 256)


def bench_shapes(device: torch.device, size: str, dtype: torch.dtype) -> list[tuple[int, ...]]:
    if size == "small":
        return [SMALL_SHAPE]
    if device.type == "cuda":
        return CUDA_SHAPES
    return {"default": [CPU_CACHED_SHAPE, out_of_cache_shape(dtype)], "cached": [CPU_CACHED_SHAPE],
            "out-of-cache": [out_of_cache_shape(dtype)]}[size]


class InputMaker:
    """Deterministic normal inputs on the device, without touching torch's global generator."""

    def __init__(self, dtype, device):
        self.dtype, self.device = dtype, device
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, shape):
        return torch.randn(shape, generator=self.gen).to(self.device, self.dtype)


# ---------------------------------------------------------------------------------------------
# Running: check every genfast backend against the reference, then time all candidates interleaved.
# ---------------------------------------------------------------------------------------------
@dataclass
class OpRow(Row):
    op: str = ""
    variant: str = ""
    backend: str = ""
    eager_us: float = float("nan")
    compile_us: float = float("nan")
    samples: list = field(default_factory=list)  # µs per call, one per repetition
    copy_us: float = float("nan")
    draws_noise: bool = False

    @property
    def speedup(self) -> float:
        return self.eager_us / self.us

    @property
    def speedup_vs_compile(self) -> float:
        return self.compile_us / self.us

    @property
    def spread_pct(self) -> float:
        """Interquartile range of the repetitions, % of the median."""
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return 100.0 * (q[2] - q[0]) / self.us

    def as_dict(self) -> dict:
        def num(x):
            return None if x != x else x  # NaN (no torch.compile row) -> null: JSON has no NaN

        return {"op": self.op, "variant": self.variant, "backend": self.backend, "shape": self.shape,
                "dtype": self.dtype, "us": self.us, "us_min": min(self.samples) if self.samples else self.us,
                "spread_pct": self.spread_pct, "samples_us": self.samples, "bytes": self.bytes_moved,
                "GB/s": self.gbs, "copy_us": self.copy_us, "copy_gbs": self.copy_gbs,
                "pct_of_copy_bw": self.pct_copy, "speedup_vs_eager": self.speedup,
                "speedup_vs_compile": num(self.speedup_vs_compile), "draws_noise": self.draws_noise}


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


def _timed(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """µs per call of `calls` back-to-back calls (CUDA: events around them)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) * 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e6 / calls


def interleaved_us(candidates: dict[str, Callable[[], object]], device: torch.device, reps: int,
                   batch_us: float = 300.0) -> dict[str, list[float]]:
    """µs per call of every candidate, one sample per repetition. Each candidate is warmed up (torch.compile
    compiles here), then calls are grouped so that a sample lasts about `batch_us` (short: on a shared
    machine most samples then fall between two preemptions, and the median stays clean); repetition r
    times the candidates in an order rotated by r."""
    calls = {}
    for name, fn in candidates.items():
        fn()
        _sync(device)
        once = _timed(fn, 1, device)
        calls[name] = int(min(64, max(1, batch_us // max(once, 1e-3))))
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_timed(candidates[name], calls[name], device))
    return samples


def _compiled(case: Case) -> Callable | None:
    return torch.compile(case.eager, dynamic=False)


def case_rows(case: Case, device: torch.device, dtype: torch.dtype, shape, reps: int, with_compile: bool = True,
              with_reference: bool = True) -> list[OpRow]:
    candidates: dict[str, Callable] = {"eager": case.step(case.eager)}
    if with_compile:
        compiled = case.step(_compiled(case))
        try:
            compiled()
            candidates["torch.compile"] = compiled
        except Exception as exc:  # noqa: BLE001 -- a compiler failure leaves the row out, says why
            print(f"{case.op} {case.variant}: torch.compile failed, row left out ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''})", file=sys.stderr)
    for backend in genfast_backends(device):
        if backend == "reference" and not with_reference:
            continue
        if backend != "reference":
            check_against_reference(case, backend, dtype)

        def fused(*inputs, backend=backend):
            with genfast.use_backend(backend):
                return case.fused(*inputs)

        candidates[backend] = case.step(fused)
    # a copy of the case's footprint: bytes read + bytes written = case.nbytes
    src = torch.empty(max(1, case.nbytes // 8), dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    candidates["copy"] = lambda: dst.copy_(src)
    samples = interleaved_us(candidates, device, reps)
    copy_us = statistics.median(samples.pop("copy"))
    copy_gbs = 2 * src.numel() * 4 / (copy_us * 1e-6) / 1e9
    med = {name: statistics.median(v) for name, v in samples.items()}
    label, dt = "x".join(map(str, shape)), str(dtype).split(".")[-1]
    return [OpRow(f"{case.op} {case.variant}", label, dt, med[name], case.nbytes, copy_gbs, "", case.op, case.variant,
                  name, med["eager"], med.get("torch.compile", float("nan")), v, copy_us, case.draws_noise)
            for name, v in samples.items()]


def cpu_goals(rows: list[dict], out_of_cache_shapes: set[str]) -> list[dict]:
    """Issue 13's goals for the cpu backend, checked on a report's rows: at least 1.3x torch.compile on every
    case and shape (3x where noise is drawn), `interpolate` at least eager's speed, and at the out-of-cache
    shape at least 80% of the copy bandwidth measured at the case's footprint."""
    goals = []
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault((r["op"], r["variant"], r["shape"]), {})[r["backend"]] = r
    for (op, variant, shape), backends in by_case.items():
        cpu = backends.get("cpu")
        if cpu is None:
            continue
        case = f"{op} {variant}"
        if cpu.get("speedup_vs_compile") is not None:
            want = 3.0 if cpu.get("draws_noise") else 1.3
            goals.append({"case": case, "shape": shape, "goal": f">= {want:g}x torch.compile",
                          "value": cpu["speedup_vs_compile"], "met": cpu["speedup_vs_compile"] >= want})
        if variant == "interpolate":
            goals.append({"case": case, "shape": shape, "goal": ">= 1x eager", "value": cpu["speedup_vs_eager"],
                          "met": cpu["speedup_vs_eager"] >= 1.0})
        if shape in out_of_cache_shapes:
            goals.append({"case": case, "shape": shape, "goal": ">= 80% of copy bandwidth",
                          "value": cpu["pct_of_copy_bw"], "met": cpu["pct_of_copy_bw"] >= 80.0})
    return goals


def _num(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"  # tiny CPU shapes give fractions of a GB/s


# ---------------------------------------------------------------------------------------------
# --plot: time per backend and % of the footprint's copy bandwidth, per case, one row of panels per shape.
# ---------------------------------------------------------------------------------------------
PLOT_FORMATS = ("png", "pdf", "svg")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    return plt


def check_plot_path(path) -> Path:
    """Before any timing: matplotlib is importable, the extension is a format it writes, the file writable."""
    from genfast.training.images import check_writable

    path = Path(path)
    if path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(f"--plot: {path}: use a .png, .pdf or .svg file name")
    _pyplot()
    return check_writable(path, "--plot")


def plot_report(report: dict, path) -> None:
    """Draw a `genfast bench --json` report: per shape, µs per call of every backend (log scale) and
    % of the copy bandwidth at the case's footprint; written atomically to `path`."""
    from genfast.training.images import write_atomic

    plt = _pyplot()
    rows = report["rows"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(len(shapes), 2, figsize=(16, 4.5 * len(shapes)), squeeze=False)
    for row_axes, shape in zip(axes, shapes):
        cases = list(dict.fromkeys(f"{r['op']}\n{r['variant']}" for r in rows if r["shape"] == shape))
        here = [b for b in backends if any(r["shape"] == shape and r["backend"] == b for r in rows)]
        width = 0.8 / max(1, len(here))
        for k, backend in enumerate(here):
            by_case = {f"{r['op']}\n{r['variant']}": r for r in rows if r["shape"] == shape and r["backend"] == backend}
            xs = [i + (k - (len(here) - 1) / 2) * width for i, c in enumerate(cases) if c in by_case]
            got = [by_case[c] for c in cases if c in by_case]
            color = f"C{backends.index(backend)}"  # one color per backend in every panel
            row_axes[0].bar(xs, [r["us"] for r in got], width, label=backend, color=color)
            row_axes[1].bar(xs, [r["pct_of_copy_bw"] for r in got], width, label=backend, color=color)
        for ax, ylabel in zip(row_axes, ("µs per call (median)", "% of copy bandwidth at the same footprint")):
            ax.set_xticks(range(len(cases)))
            ax.set_xticklabels(cases, fontsize=7, rotation=30, ha="right")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{shape} {rows[0]['dtype']}")
            ax.legend(fontsize=7)
        row_axes[0].set_yscale("log")
        row_axes[1].axhline(100, color="gray", linewidth=0.8)
    m = report["machine"]
    fig.suptitle(f"genfast bench: {m['device']}, torch {m['torch']}, {m['date']}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lower().lstrip("."))
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--op", action="append", choices=list(OPS), help="op to benchmark (repeatable; default: all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--size", choices=["small", "default", "cached", "out-of-cache"], default="default",
                        help="small: a tiny shape for a quick check; default: on a CPU, the cache-resident shape "
                             "(64,3,64,64) and the out-of-cache one; cached / out-of-cache: one of the two")
    parser.add_argument("--reps", type=int, default=None,
                        help="interleaved repetitions per case (default: 21 on a CPU, 30 on a GPU, 5 with --size small)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every candidate (torch.set_num_threads; default: torch's setting)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile rows (they compile each case first)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (machine + rows) instead of a table")
    parser.add_argument("--plot", metavar="FILE", help="also draw the figures into FILE (.png, .pdf or .svg; needs "
                                                       "matplotlib)")


def run(args) -> int:
    from genfast.training.distributed import resolve_device

    device = resolve_device(args.device)  # the same --device rules (and errors) as sample/train/compare
    dtype = getattr(torch, args.dtype)
    reps = args.reps if args.reps is not None else (5 if args.size == "small" else 30 if device.type == "cuda" else 21)
    if reps < 1:
        raise ValueError(f"--reps: must be >= 1, got {reps}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {threads}")
    plot = check_plot_path(args.plot) if getattr(args, "plot", None) else None
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(args, device, dtype, reps, plot)
    finally:
        torch.set_num_threads(saved_threads)


def _run(args, device, dtype, reps, plot) -> int:
    with_compile = getattr(args, "compile", True)
    make = InputMaker(dtype, device)
    machine = machine_info(device)
    shapes = bench_shapes(device, args.size, dtype)
    rows = []
    for op in dict.fromkeys(args.op or OPS):
        for i, shape in enumerate(shapes):
            n = math.prod(shape)
            # the reference backend (genfast's oracle, not a fast path) only at the first shape on a CPU
            with_reference = i == 0 or device.type != "cpu"
            for case in OPS[op](make, shape, n, dtype.itemsize):
                rows += case_rows(case, device, dtype, shape, reps, with_compile, with_reference)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        machine["load_average_after"] = list(os.getloadavg())
    report = {"machine": machine, "reps": reps, "rows": [r.as_dict() for r in rows]}
    if device.type == "cpu":
        big = {"x".join(map(str, s)) for s in shapes if s == out_of_cache_shape(dtype)}
        report["goals"] = cpu_goals(report["rows"], big)
    if plot is not None:
        plot_report(report, plot)
    if args.json:
        print(json.dumps(report, allow_nan=False))
        return 0
    print(format_machine(machine))
    print(f"\n{reps} interleaved repetitions per case; µs: median per call (min: the fastest repetition), spread: "
          "interquartile range of the repetitions; % of copy BW: GB/s over a copy of the same footprint measured "
          "alongside")
    print("\n| op | variant | backend | shape | dtype | µs | min | spread | GB/s | % of copy BW | vs eager | "
          "vs torch.compile |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs_compile = f"{r.speedup_vs_compile:.2f}x" if r.compile_us == r.compile_us else "n/a"
        print(f"| {r.op} | {r.variant} | {r.backend} | {r.shape} | {r.dtype} | {_num(r.us)} | {_num(min(r.samples))} | "
              f"{r.spread_pct:.0f}% | {_num(r.gbs)} | {_num(r.pct_copy)}% | {r.speedup:.2f}x | {vs_compile} |")
    missed = [g for g in report.get("goals", []) if not g["met"]]
    if report.get("goals"):
        print(f"\nissue 13 goals for the cpu backend: {len(report['goals']) - len(missed)} of {len(report['goals'])} met"
              + ("; missed:" if missed else ""))
        for g in missed:
            print(f"- {g['case']} at {g['shape']}: {g['value']:.2f}{'%' if '%' in g['goal'] else 'x'}, goal {g['goal']}")
    if device.type == "cpu" and "load_average_after" in machine:
        print(f"\nload average before {machine['load_average'][0]:.2f}, after {machine['load_average_after'][0]:.2f} "
              f"({machine['cpus']} CPUs)")
    return 0
