"""Forward and forward+backward of genfast's diffusion step on the CPU at (16, 3, 64, 64), one thread:
what training through a sampler or scheduler pays per step. Usage: python benchmarks/bench_diffusion_backward.py"""
import torch, timeit, statistics
torch.set_num_threads(1)
from genfast.ops import ddim_step, ddpm_step
torch.manual_seed(0)
shape = (16, 3, 64, 64)
res = {}
for name, fn, mshape in [("ddim eta=0", lambda x, m: ddim_step(x, m, 0.5, 0.7), shape),
                         ("ddim guidance clip", lambda x, m: ddim_step(x, (m, m * 0.5), 0.5, 0.7, guidance_scale=3.0, clip_sample_range=1.0), shape),
                         ("ddpm learned_range stream", lambda x, m: ddpm_step(x, m, 0.5, 0.7, variance_type="learned_range", seed=1), (16, 6, 64, 64))]:
    x = torch.randn(shape, requires_grad=True); m = torch.randn(mshape, requires_grad=True)
    out = fn(x, m); g = torch.randn_like(out)
    def run():
        torch.autograd.grad(fn(x, m), (x, m), g)
    run()
    fwd = min(timeit.repeat(lambda: fn(x.detach(), m.detach()), number=20, repeat=15)) / 20 * 1e6
    both = min(timeit.repeat(run, number=20, repeat=15)) / 20 * 1e6
    print(f"{name}: forward {fwd:.0f} us, forward+backward {both:.0f} us, backward ~{both - fwd:.0f} us")
