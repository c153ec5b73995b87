"""Per-step time of genfast's Euler, Euler-ancestral and DPM-Solver++ schedulers against diffusers'
scheduler.step and against the same formula in PyTorch, eager and under torch.compile.

For each sampler and shape, one scheduler step mid-loop (the step index is reset before each call, the
DPM history is full, so every call is the same second-order step):
  diffusers   diffusers' <Scheduler>.step
  genfast     genfast.schedulers.<Scheduler>.step (one fused kernel; coefficients cached per step index)
  genfast op  genfast.ops.sampler_step with precomputed coefficients (what genfast.samplers' loop calls)
  formula     the update as plain torch ops with the coefficients as Python floats (torch.randn for noise)
  compiled    that formula under torch.compile (inductor)
Timings are interleaved (one call of each variant per round, R rounds) and the medians reported, so load
from other processes hits every variant alike. What one step must move (fp32): read sample, model output
and one history tensor (DPM), write prev and the converted output: 4-5 x 4 bytes per element.

Run: `python benchmarks/bench_scheduler_step.py` (CPU) or `--device cuda` (on a GPU; see gpu_check.sh).
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
import genfast.schedulers as gs  # noqa: E402
from genfast.ops import sampler_step  # noqa: E402

SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++")),
}
STEP_INDEX = 5  # a mid-loop step of a 20-step schedule


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prime(s, x, m, dpm):
    """Put a scheduler mid-loop: set_timesteps(20), step index STEP_INDEX, a full DPM history."""
    s.set_timesteps(20, device=x.device)
    s._step_index = STEP_INDEX
    if dpm:
        s.model_outputs = [m.clone() for _ in s.model_outputs]
        s.lower_order_nums = s.config.solver_order
    if hasattr(s, "is_scale_input_called"):
        s.is_scale_input_called = True


def _variants(name, shape, device, dtype):
    import diffusers

    cls_name, cfg = SAMPLERS[name]
    dpm = cls_name.startswith("DPM")
    x = torch.randn(shape, device=device, dtype=dtype)
    m = torch.randn(shape, device=device, dtype=dtype)
    h = torch.randn(shape, device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, cls_name)(**cfg)
    ours = getattr(gs, cls_name).from_config(ref.config)
    for s in (ref, ours):
        _prime(s, x, m, dpm)
    t = ref.timesteps[STEP_INDEX]

    def step(s):
        def run():
            s._step_index = STEP_INDEX
            if dpm:
                s.lower_order_nums = s.config.solver_order
            return s.step(m, t, x).prev_sample
        return run

    # the coefficients of that very step, as genfast's scheduler computes them
    ours._step_index = STEP_INDEX
    if dpm:
        co = ours._step_coefficients(ours._order_now())
    else:
        from genfast.ops.sampler_steps import euler_ancestral_coefficients, euler_coefficients
        sig = ours.sigmas.tolist()
        co = (euler_coefficients if name == "euler" else euler_ancestral_coefficients)(sig[STEP_INDEX],
                                                                                       sig[STEP_INDEX + 1])
    noisy = co.c_noise != 0.0

    def op():
        return sampler_step(x, m, co, history=[h] if dpm else [], seed=1, offset=STEP_INDEX, want_aux=dpm)[0]

    def formula(x, m, h):
        conv = co.conv_x * x + co.conv_m * m
        prev = co.c_x * x + co.c_0 * conv
        if dpm:
            prev = prev + co.c_1 * (conv - h)
        if noisy:
            prev = prev + co.c_noise * torch.randn_like(x)
        return prev, conv

    compiled = torch.compile(formula)
    return [
        ("diffusers", step(ref)),
        ("genfast", step(ours)),
        ("genfast op", op),
        ("formula", lambda: formula(x, m, h)),
        ("compiled", lambda: compiled(x, m, h)),
    ]


def measure(name, shape, device, dtype, rounds):
    variants = _variants(name, shape, device, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, fn in variants:  # warm-up: compilation, caches, first-call costs
            for _ in range(3):
                fn()
        _sync(device)
        times = {label: [] for label, _ in variants}
        for _ in range(rounds):
            for label, fn in variants:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[label].append((time.perf_counter() - t0) * 1e6)
    return {label: statistics.median(v) for label, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--shapes", default="1x4x64x64,16x3x64x64",
                   help="comma-separated shapes, dims joined by x")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (and OpenMP's) for the run")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"device {device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"backend {genfast._backend.select_backend('sampler_step', device)}, load average {' '.join(load)}, "
          f"{args.rounds} interleaved rounds (median µs)\n")
    print("| sampler | shape | diffusers step | genfast step | genfast op | eager formula | torch.compile formula "
          "| diffusers / genfast | compiled / genfast op |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.samplers.split(","):
        for shape in shapes:
            r = measure(name, shape, device, dtype, args.rounds)
            print(f"| {name} | {'x'.join(map(str, shape))} | {r['diffusers']:.0f} | {r['genfast']:.0f} | "
                  f"{r['genfast op']:.0f} | {r['formula']:.0f} | {r['compiled']:.0f} | "
                  f"{r['diffusers'] / r['genfast']:.2f}x | {r['compiled'] / r['genfast op']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
