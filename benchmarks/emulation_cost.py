"""What the CUDA execution layer costs on the CPU (genfast._C_emulated): microseconds per launch, per
emulated thread phase (one fiber resume: a thread running until it blocks or exits) and per element,
next to the compiled CPU kernel of the same op.

    PYTHONPATH=. python benchmarks/emulation_cost.py

Prints a Markdown table (medians of interleaved repetitions).
"""
from __future__ import annotations

import statistics
import time

import torch

from genfast import _C_emulated as E


def _median_time(fn, reps=7):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(name, run, elements, cpu=None):
    run()  # warm-up: fiber stacks mapped, shadow allocated
    runs = 7
    before = E.emulation_stats()
    t = _median_time(run, runs)
    after = E.emulation_stats()
    resumes = (after["fiber_resumes"] - before["fiber_resumes"]) / runs
    blocks = (after["blocks"] - before["blocks"]) / runs
    barriers = (after["barriers"] - before["barriers"]) / runs
    t_cpu = _median_time(cpu) if cpu else float("nan")
    return (f"| {name} | {elements} | {blocks:.0f} | {resumes:.0f} | {barriers:.0f} | {t * 1e3:.2f} | "
            f"{t * 1e6 / resumes:.2f} | {t * 1e9 / elements:.0f} | {t_cpu * 1e3:.3f} |")


def main():
    torch.manual_seed(0)
    rows = []
    for n in (4096, 1 << 16):
        out = torch.empty(n)
        rows.append(_measure("random_fill (normal, fp32)", lambda: E.random_fill_cuda(out.data_ptr(), n, 0, 1, 2, 0, 0,
                             True, 0, 0), n, lambda: E.random_fill_cpu(out.data_ptr(), n, 0, 1, 2, 0, 0, True)))
    x = torch.randn(3 * 200)
    o = torch.zeros(3)
    rows.append(_measure("block_sum test kernel (3 x 96 threads, shuffles + barrier)",
                         lambda: E._selftest("block_sum", x.data_ptr(), o.data_ptr(), 200), 600))
    B, row = 4, 8192
    g = torch.randn(B, row)
    norms, pen, parts, ctr = torch.empty(B), torch.empty(1), torch.empty(1024), torch.zeros(1, dtype=torch.int32)
    rows.append(_measure(f"gp norm_penalty (fp32, {B}x{row}, 2 barriers/block + last-block pass)",
                         lambda: E.gp_norm_penalty_cuda(g.data_ptr(), norms.data_ptr(), pen.data_ptr(), parts.data_ptr(),
                                                        1024, ctr.data_ptr(), B, row, 0, 10.0, 1.0, 0, 0, 0),
                         B * row, lambda: E.gp_norm_penalty_cpu(g.data_ptr(), norms.data_ptr(), pen.data_ptr(), B, row,
                                                                0, 10.0, 1.0, 0)))
    Bv, D = 64, 600
    mu, lv, z = torch.randn(Bv, D), torch.randn(Bv, D), torch.empty(Bv, D)
    chunks, groups = E.vae_partials_shape_cuda(Bv, D, 0, False)
    rp = torch.empty(chunks, Bv)
    rows.append(_measure(f"vae_forward (fp32, {Bv}x{D}, KL row sums through shared memory)",
                         lambda: E.vae_forward_cuda(mu.data_ptr(), lv.data_ptr(), 0, z.data_ptr(), rp.data_ptr(), 0, Bv, D,
                                                    0, 5, 1, 0, 0, False, 0.0, 0.0, False, 0, 0), Bv * D,
                         lambda: E.vae_forward_cpu(mu.data_ptr(), lv.data_ptr(), 0, z.data_ptr(), rp.data_ptr(), 0, Bv, D,
                                                   0, 5, 1, 0, 0, False, 0.0, 0.0)))
    print("| launch | elements | blocks | thread phases | barriers | ms / launch | us / thread phase | "
          "ns / element | CPU kernel ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nrace check compiled in: {E.with_race_check}; sanitizers: {E.with_sanitizers}; "
          f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
