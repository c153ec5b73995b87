"""Per-step host overhead of genfast's sampling step on the CPU (issue 13, item 4).

At a tiny shape the kernel costs a few microseconds, so what a step costs is the Python around it:
argument checks, backend dispatch, table lookups, the scheduler's bookkeeping. This times, per step, at
(1, 4, 8, 8) fp32 on one thread:

  op         genfast.ops.ddim_step / ddpm_step / sampler_step called directly
  scheduler  scheduler.step of genfast's five drop-ins (next to diffusers' own class)
  sampler    one step of genfast.samplers' loop with a model that returns its input (the model's own
             cost excluded as far as a model can be)

Each figure is the median over interleaved repetitions of a block of calls; the goal is under 30 us per
step for genfast's rows. Usage: python benchmarks/bench_step_overhead.py [--reps 15] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import genfast.schedulers as gs
from genfast.cli.bench import machine_header
from genfast.ops import ddim_step, ddpm_step

SHAPE = (1, 4, 8, 8)
CALLS = 200


def _per_call_us(fn, calls=CALLS) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def _scheduler_case(cls_name, module, steps=50, **config):
    cls = getattr(module, cls_name)
    sched = cls(num_train_timesteps=1000, **config)
    sched.set_timesteps(steps)
    x = torch.randn(SHAPE)
    m = torch.randn(SHAPE)
    gen = None
    state = {"i": 0}

    def one():
        i = state["i"]
        if i == len(sched.timesteps) - 1:  # start over: a whole loop of steps, multistep state included
            sched.set_timesteps(steps)
            state["i"] = i = 0
        t = sched.timesteps[i]
        sched.step(m, t, sched.scale_model_input(x, t), generator=gen)
        state["i"] = i + 1

    return one


def _sampler_case(name, steps=50):
    from genfast.samplers import sample_ddim, sample_dpm_solver, sample_euler

    schedule = gs.DDPMScheduler(num_train_timesteps=1000).config
    x = torch.randn(SHAPE)

    def model(x, t, **kw):
        return x

    run = {"ddim": lambda: sample_ddim(model, x, schedule, steps=steps, seed=1, progress=False),
           "euler": lambda: sample_euler(model, x, schedule, steps=steps, seed=1, progress=False),
           "dpm++2m": lambda: sample_dpm_solver(model, x, schedule, steps=steps, seed=1, progress=False)}[name]

    def per_step():
        run()

    return per_step, steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import diffusers

    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    cases = {
        "op ddim_step": (lambda: ddim_step(x, m, 0.5, 0.7), 1),
        "op ddim_step eta=1 (stream)": (lambda: ddim_step(x, m, 0.5, 0.7, eta=1.0, seed=3, offset=2), 1),
        "op ddpm_step": (lambda: ddpm_step(x, m, 0.5, 0.7, seed=3), 1),
    }
    for name in ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                 "DPMSolverMultistepScheduler"):
        cases[f"scheduler {name} genfast"] = (_scheduler_case(name, gs), 1)
        cases[f"scheduler {name} diffusers"] = (_scheduler_case(name, diffusers), 1)
    for name in ("ddim", "euler", "dpm++2m"):
        fn, steps = _sampler_case(name)
        cases[f"sampler {name} (50 steps, identity model)"] = (fn, steps)
    for fn, _ in cases.values():  # warm-up
        _per_call_us(fn, 20)
    samples = {k: [] for k in cases}
    for _ in range(args.reps):  # interleaved: every case once per repetition
        for k, (fn, steps) in cases.items():
            calls = CALLS if steps == 1 else 4
            samples[k].append(_per_call_us(fn, calls) / steps)
    rows = [{"case": k, "us_per_step": statistics.median(v), "min_us": min(v),
             "spread_us": max(v) - min(v)} for k, v in samples.items()]
    if args.json:
        print(json.dumps({"machine": machine_header(torch.device("cpu")), "load": os.getloadavg(), "rows": rows}))
        return 0
    print(machine_header(torch.device("cpu")) + f" | shape {SHAPE}")
    print("| case | µs per step (median) | min | spread |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['us_per_step']:.1f} | {r['min_us']:.1f} | {r['spread_us']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
