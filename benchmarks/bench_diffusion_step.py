"""Step latency of genfast.ops.ddim_step / ddpm_step against diffusers, the eager formula and torch.compile.

What one DDIM step with eta > 0 must move (genfast draws its noise in the kernel): read sample and
model_output, write prev_sample = 3 * n * itemsize bytes. The eager formula and diffusers also read/write
their noise tensor and every intermediate. Flops: ~12 fp32 ops per element for the update, plus one
Philox4x32-10 call (~80 integer ops) and 2 log + 2 sqrt + 2 sincos per four elements (~30 ops/element):
about 40 ops/element, far below an H100's rate at these byte counts, so the roofline is bytes / copy
bandwidth (H100 SXM copy ~ 3.0 TB/s assumed below; the script measures it).

| shape           | elements   | bytes fp32 | roofline fp32 | bytes fp16 | roofline fp16 | ops (~40/elem) |
|-----------------|-----------:|-----------:|--------------:|-----------:|--------------:|---------------:|
| (1,4,64,64)     |     16,384 |   196.6 KB |    0.07 µs    |    98.3 KB |    0.03 µs    |   0.66 M       |
| (4,4,128,128)   |    262,144 |    3.15 MB |    1.05 µs    |    1.57 MB |    0.52 µs    |   10.5 M       |
| (256,3,32,32)   |    786,432 |    9.44 MB |    3.15 µs    |    4.72 MB |    1.57 µs    |   31.5 M       |
| (64,3,256,256)  | 12,582,912 |   151.0 MB |   50.3 µs     |    75.5 MB |   25.2 µs     |    503 M       |

The three small shapes are launch-bound (goal: <= 10 µs per eager call); (64,3,256,256) is the roofline
case (goal: >= 85% of copy bandwidth for fp32 and fp16 with eta > 0).

Rows per shape/dtype: diffusers DDIMScheduler.step (eta=1, generator) and DDPMScheduler.step, the eager
formula (torch ops + torch.randn), torch.compile of that formula, genfast triton, genfast cuda; each per
eager call and replayed from a CUDA graph (diffusers' step syncs the host and is not capturable: "n/a").

Run: `python benchmarks/bench_diffusion_step.py` (GPU) or `python benchmarks/bench_diffusion_step.py --cpu`
(= `genfast bench --device cpu --op diffusion_step`: eager, torch.compile and the cpu backend at a cache-resident
and an out-of-cache shape, with the copy bandwidth at each case's footprint; issue 13's goals).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import genfast  # noqa: E402
from genfast.cli.bench import eager_ddim  # noqa: E402  (the DDIM update as plain torch ops)
from genfast.ops import ddim_step, ddpm_step  # noqa: E402

try:
    from benchmarks.bandwidth import Row, copy_bandwidth_gbs, machine_header, print_table, time_graph_us, time_us
except ImportError:  # the shared helper lands on main separately; the CPU mode needs only a timer
    Row = copy_bandwidth_gbs = machine_header = print_table = time_graph_us = None

    def time_us(fn, device, warmup=5, rep=30):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(rep):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)

SHAPES = [(1, 4, 64, 64), (4, 4, 128, 128), (256, 3, 32, 32), (64, 3, 256, 256)]
A_T, A_P = 0.3, 0.6  # cumulative alphas of a mid-schedule DDIM step


def gpu_rows(shape, dtype, copy):
    import diffusers

    device = torch.device("cuda")
    x = torch.randn(shape, device=device, dtype=dtype)
    m = torch.randn(shape, device=device, dtype=dtype)
    n = x.numel()
    nbytes = 3 * n * x.element_size()
    label, dt = "x".join(map(str, shape)), str(dtype).split(".")[-1]
    rows = []

    ddim = diffusers.DDIMScheduler()
    ddim.set_timesteps(50)
    ddpm = diffusers.DDPMScheduler()
    ddpm.set_timesteps(50)
    t = int(ddim.timesteps[10])
    gen = torch.Generator(device=device).manual_seed(0)
    a_t_dev = torch.tensor(A_T, device=device)
    a_p_dev = torch.tensor(A_P, device=device)
    compiled = torch.compile(eager_ddim)
    seed_dev = torch.tensor([1], dtype=torch.int64, device=device)

    candidates = [
        ("diffusers DDIMScheduler.step eta=1", lambda: ddim.step(m, t, x, eta=1.0, generator=gen), False),
        ("diffusers DDPMScheduler.step", lambda: ddpm.step(m, int(ddpm.timesteps[10]), x, generator=gen), False),
        ("eager formula eta=1", lambda: eager_ddim(x, m, A_T, A_P, 1.0), True),
        ("torch.compile formula eta=1", lambda: compiled(x, m, A_T, A_P, 1.0), True),
    ]
    for backend in ("triton", "cuda"):
        if not genfast.backends()[backend].available:
            continue

        def step(backend=backend):
            with genfast.use_backend(backend):
                return ddim_step(x, m, a_t_dev, a_p_dev, eta=1.0, seed=seed_dev)

        def step_ddpm(backend=backend):
            with genfast.use_backend(backend):
                return ddpm_step(x, m, A_T, A_P, seed=seed_dev)

        def step_eta0(backend=backend):
            with genfast.use_backend(backend):
                return ddim_step(x, m, A_T, A_P)

        candidates += [(f"genfast {backend} ddim eta=1", step, True), (f"genfast {backend} ddpm", step_ddpm, True),
                       (f"genfast {backend} ddim eta=0", step_eta0, True)]
    for name, fn, graphable in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            us = time_us(fn, device)
            rows.append(Row(name, label, dt, us, nbytes, copy, "eager call"))
            note = "graph replay"
            try:
                g_us = time_graph_us(fn, device) if graphable else float("nan")
            except Exception as exc:  # noqa: BLE001 - report, don't stop the table
                g_us, note = float("nan"), f"graph n/a ({type(exc).__name__})"
            if not graphable:
                note = "graph n/a (host sync in step)"
            rows.append(Row(name, label, dt, g_us, nbytes, copy, note))
    return rows


def cpu_mode(argv=()):
    """The CPU comparison is `genfast bench`'s: eager, torch.compile, genfast reference and cpu at the cache-
    resident and the out-of-cache shape, interleaved, next to a copy of the same footprint."""
    from genfast.cli import main as genfast_main

    return genfast_main(["bench", "--device", "cpu", "--op", "diffusion_step", *argv])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the CPU comparison (genfast bench --device cpu --op "
                                                       "diffusion_step; options after -- go to it)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    args, rest = p.parse_known_args(argv)
    if args.cpu:
        raise SystemExit(cpu_mode([a for a in rest if a != "--"]))
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU figure")
    if Row is None:
        raise SystemExit("benchmarks/bandwidth.py (shared helper on main) is needed for the GPU table")
    device = torch.device("cuda")
    copy = copy_bandwidth_gbs(device)
    print(machine_header(device))
    rows = []
    for shape in SHAPES:
        for d in args.dtypes:
            rows += gpu_rows(shape, getattr(torch, d), copy)
    print_table(rows, "diffusion step latency (bytes = 3 x n x itemsize: read sample + model_output, write prev)")


if __name__ == "__main__":
    main()
