"""Benchmark of the WGAN-GP gradient penalty (issue 4): python benchmarks/bench_gradient_penalty.py

On a GPU, side by side in one run, for a DCGAN-style 64 px critic without BatchNorm
(genfast.models.WGANGPCritic, ndf=64, LayerNorm) at batch 64 and 256, fp32:

  critic step = D(real), D(fake), WGAN loss [+ penalty], backward, Adam(betas (0, 0.9)) step
    1. without a penalty
    2. with the plain autograd penalty (reference_gradient_penalty: torch.rand alpha broadcast, x_hat,
       autograd.grad(create_graph=True), .norm(2, dim=1), (n - 1)^2 mean)
    3. with genfast's fused penalty
    4. with genfast's penalty, the whole step captured in a CUDA graph (capturable Adam, static inputs)
  the penalty's own ops (given g = dD/dx): interpolation, per-sample norm + penalty, and the penalty's
  backward dP/dg -- plain (the torch ops autograd runs) vs fused (the three genfast kernels).
  Peak memory (torch.cuda.max_memory_allocated) of each.

Bytes, flops and roofline of the penalty's own ops, N = B * 3 * 64 * 64 elements, fp32 (4 B):
  interpolation: reads real, fake, writes x_hat: 12 N bytes, 3 N flops
  norm + penalty: reads g: 4 N bytes (+ 4 * 1024 partials), 2 N flops
  backward: reads g, writes dP/dg: 8 N bytes, 1 N flop
  total 24 N bytes: B = 64: N = 786,432 -> 18.9 MB; B = 256: N = 3,145,728 -> 75.5 MB.
  Roofline at a measured copy bandwidth of ~3.0 TB/s (H100 SXM): 6.3 us (B = 64), 25 us (B = 256);
  3 launches of ~2-3 us each bound the B = 64 case. Flops are negligible (6 N: 4.7 / 19 MFLOP).
  The plain ops move more: the broadcast alpha multiply/add (~4 passes), norm (1), sub/pow/mean
  (tiny), and the norm backward (g / n, scale, mul: ~3 passes), ~10 launches.
The critic step itself is compute-bound (the convs and their double backward); the step numbers are
about launch count and memory traffic around them, not the roofline.

Without a GPU the script runs a tiny CPU smoke pass (batch 4, ndf 8) to check it works; no timings
from it mean anything.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import genfast  # noqa: E402
from genfast.losses import wgan_d_loss  # noqa: E402
from genfast.models import WGANGPCritic  # noqa: E402
from genfast.ops import gradient_norm_penalty, interpolate  # noqa: E402
from genfast.ops.gradient_penalty import gradient_penalty, reference_gradient_penalty  # noqa: E402

try:
    from benchmarks.bandwidth import copy_bandwidth_gbs  # shared helper on main
except ImportError:  # not merged yet here: a local measurement of the same quantity
    def copy_bandwidth_gbs(device) -> float:
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
        y = torch.empty_like(x)
        ms = bench(lambda: y.copy_(x), device)
        return 2 * x.numel() / (ms * 1e-3) / 1e9


def bench(fn, device, reps: int = 50) -> float:
    """Median milliseconds of fn()."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    times = []
    for _ in range(max(3, reps // 10)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_mib(fn, device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


class CriticStep:
    """One critic update with a given penalty (None, plain, genfast)."""

    def __init__(self, critic, real, fake, penalty):
        self.critic, self.real, self.fake, self.penalty = critic, real, fake, penalty
        self.opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9),
                                    capturable=real.is_cuda)
        self.seed = torch.zeros(1, dtype=torch.int64, device=real.device)

    def __call__(self):
        loss = wgan_d_loss(self.critic(self.real), self.critic(self.fake))
        if self.penalty is not None:
            loss = loss + self.penalty(self.critic, self.real, self.fake, seed=self.seed)
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        self.opt.step()
        return loss

    def graphed(self):
        """The same step captured in a CUDA graph (warm-up on a side stream first)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for p in self.critic.parameters():
                p.grad.zero_()
            loss = wgan_d_loss(self.critic(self.real), self.critic(self.fake))
            loss = loss + self.penalty(self.critic, self.real, self.fake, seed=self.seed)
            loss.backward()
            self.opt.step()

        def replay():
            self.seed.add_(1)  # new alpha each replay (a host write in real training)
            graph.replay()

        return replay


def plain_penalty_ops(real, fake, g):
    b = real.shape[0]
    alpha = torch.rand(b, 1, 1, 1, device=real.device)
    x = alpha * real + (1 - alpha) * fake
    gg = g.detach().requires_grad_(True)
    n = gg.flatten(1).norm(2, dim=1)
    p = 10.0 * ((n - 1.0) ** 2).mean()
    (dg,) = torch.autograd.grad(p, gg)
    return x, p, dg


def fused_penalty_ops(real, fake, g, seed):
    x = interpolate(real, fake, seed=seed)
    gg = g.detach().requires_grad_(True)
    p = gradient_norm_penalty(gg)
    (dg,) = torch.autograd.grad(p, gg)
    return x, p, dg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="*", default=None)
    parser.add_argument("--ndf", type=int, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batches = args.batches or ([64, 256] if cuda else [4])
    ndf = args.ndf or (64 if cuda else 8)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (smoke run, timings meaningless)'}")
    for info in genfast.backends().values():
        print(f"  {info}")
    if cuda:
        bw = copy_bandwidth_gbs(device)
        print(f"measured copy bandwidth: {bw:.0f} GB/s")
    print()
    print("| batch | variant | time (ms) | peak memory (MiB) |")
    print("|---:|---|---:|---:|")
    for b in batches:
        torch.manual_seed(0)
        real = torch.randn(b, 3, 64, 64, device=device)
        fake = torch.randn(b, 3, 64, 64, device=device)
        variants = [("critic step, no penalty", None), ("critic step, plain autograd penalty", reference_gradient_penalty),
                    ("critic step, genfast penalty", gradient_penalty)]
        for label, pen in variants:
            critic = WGANGPCritic(ndf=ndf, image_size=64, norm="layer").to(device)
            step = CriticStep(critic, real, fake, pen)
            step()
            ms = bench(step, device)
            mem = peak_mib(step, device)
            print(f"| {b} | {label} | {ms:.3f} | {mem:.0f} |")
        if cuda:
            critic = WGANGPCritic(ndf=ndf, image_size=64, norm="layer").to(device)
            holder = {}
            # the graph's memory lives in its pool from capture on: measure the peak over warm-up + capture
            mem = peak_mib(lambda: holder.setdefault("replay", CriticStep(critic, real, fake, gradient_penalty).graphed()),
                           device)
            ms = bench(holder["replay"], device)
            print(f"| {b} | critic step, genfast penalty, CUDA graph | {ms:.3f} | {mem:.0f} |")
        g = torch.randn_like(real)
        n_bytes = 24 * real.numel()
        seed = torch.zeros(1, dtype=torch.int64, device=device)
        for label, fn in (("penalty ops, plain", lambda: plain_penalty_ops(real, fake, g)),
                          ("penalty ops, fused", lambda: fused_penalty_ops(real, fake, g, seed))):
            fn()
            ms = bench(fn, device)
            mem = peak_mib(fn, device)
            extra = ""
            if cuda:
                gbs = n_bytes / (ms * 1e-3) / 1e9
                extra = f" ({gbs:.0f} GB/s of the fused traffic, {100 * gbs / bw:.0f}% of copy)"
            print(f"| {b} | {label}{extra} | {ms:.4f} | {mem:.0f} |")


if __name__ == "__main__":
    main()
