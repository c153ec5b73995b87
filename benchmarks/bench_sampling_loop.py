"""End-to-end DDIM sampling loop: diffusers' loop vs genfast eager vs genfast CUDA graph (issue 3, item 5).

Model: diffusers UNet2DModel of the DDPM CIFAR-10 size (google/ddpm-cifar10-32's architecture,
random weights with a fixed seed, nothing downloaded): 32x32x3, block_out_channels (128, 256, 256, 256),
layers_per_block 2, self-attention at 16 px (AttnDownBlock2D / AttnUpBlock2D), 35.7 M parameters.
Batch 64, fp16, DDIM with 50 steps and with 4 steps (the few-step regime), eta = 0 (and eta = 1 with
--eta 1: then every step also draws 64x3x32x32 normals).

Rows (median wall time of the whole loop, CUDA-synchronized, after warm-up):
- diffusers:      for t: eps = unet(x, t).sample; x = DDIMScheduler.step(eps, t, x).prev_sample
- genfast eager:  genfast.samplers.sample_ddim(unet, x, config, steps=n) -- same model, fused step
- genfast graph:  the same with graph=True: the loop (model + step + noise) replayed as one CUDA graph
                  (captured on the first call, excluded from the timing; a new seed per replay)
- diffusers + genfast scheduler: diffusers' loop with genfast.schedulers.DDIMScheduler swapped in

Work per loop (measured with torch.utils.flop_counter on the CPU: 12.11 GFLOP per image forward):
- U-Net: 64 x 12.11 GFLOP = 775 GFLOP per step; 50 steps 38.7 TFLOP, 4 steps 3.1 TFLOP. At the H100
  SXM's ~990 TFLOP/s dense fp16 that is a floor of 39 ms (50 steps) / 3.1 ms (4 steps); convolutions
  at 32x32 with 128-256 channels typically reach 30-50% of peak, so ~80-130 ms is a realistic target
  for 50 steps. Weights: 35.7 M x 2 B = 71 MB read per forward (not the bound).
- Step: reads x and eps, writes x_prev: 3 x 64x3x32x32 x 2 B = 1.18 MB per step (+0.79 MB of fp32
  noise-equivalent work when eta > 0, generated in registers): ~0.4 us at 3 TB/s, i.e. the step is
  launch-bound (diffusers: ~10-15 small kernels and host syncs per step, ~130-240 us).
- Before this issue diffusers' 50-step loop took ~820 ms on an H100 (issue 3), ~16 ms per step, far
  above the compute floor: the eager U-Net's ~300 kernel launches per forward and the scheduler's
  host work dominate; the graph removes both. Goal: graph >= 3x faster than diffusers' loop.

Usage: python benchmarks/bench_sampling_loop.py [--steps 50 4] [--batch 64] [--eta 0] [--reps 5]
       python benchmarks/bench_sampling_loop.py --smoke   (CPU, tiny model: checks the code paths only)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genfast  # noqa: E402
import genfast.schedulers  # noqa: E402,F401
from genfast.samplers import clear_graphs, sample_ddim  # noqa: E402


def cifar10_unet(smoke: bool):
    import diffusers

    torch.manual_seed(0)
    if smoke:
        return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                     block_out_channels=(8, 16), norm_num_groups=4,
                                     down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                                 block_out_channels=(128, 256, 256, 256),
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def timed_ms(fn, device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def diffusers_loop(unet, scheduler, x, steps, eta, generator):
    scheduler.set_timesteps(steps, device=x.device)
    for t in scheduler.timesteps:
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[50, 4])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, no graph: check the code paths")
    args = p.parse_args(argv)

    import diffusers

    if args.smoke:
        device, dtype, size, batch = torch.device("cpu"), torch.float32, 8, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_sampling_loop: needs a CUDA GPU (use --smoke for a CPU check of the code paths)")
        device, dtype, size, batch = torch.device("cuda"), torch.float16, 32, args.batch
    unet = cifar10_unet(args.smoke).to(device=device, dtype=dtype).eval()
    ref_sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
    ours_sched = genfast.schedulers.DDIMScheduler.from_config(ref_sched.config)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    warmup, reps = (0, 1) if args.smoke else (2, args.reps)

    print(f"# DDIM sampling loop, UNet2DModel ({sum(q.numel() for q in unet.parameters()) / 1e6:.1f} M params), "
          f"batch {batch}, {dtype}, eta {args.eta}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}, genfast backends: "
          f"{', '.join(n for n, i in genfast.backends().items() if i.available)}")
    print(f"{'steps':>5} | {'diffusers ms':>12} | {'diff.+gf sched ms':>17} | {'genfast eager ms':>16} | "
          f"{'genfast graph ms':>16} | {'graph speed-up':>14}")
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for steps in args.steps:
            t_ref = timed_ms(lambda: diffusers_loop(unet, ref_sched, x, steps, args.eta, gen), device, warmup, reps)
            t_swap = timed_ms(lambda: diffusers_loop(unet, ours_sched, x, steps, args.eta, gen), device, warmup, reps)
            t_eager = timed_ms(lambda: sample_ddim(unet, x, ref_sched.config, steps=steps, eta=args.eta,
                                                   progress=False), device, warmup, reps)
            if device.type == "cuda":
                sample_ddim(unet, x, ref_sched.config, steps=steps, eta=args.eta, progress=False, graph=True)  # capture
                t_graph = timed_ms(lambda: sample_ddim(unet, x, ref_sched.config, steps=steps, eta=args.eta,
                                                       progress=False, graph=True), device, warmup, reps)
                # eager and graph agree for the same seed
                a = sample_ddim(unet, x, ref_sched.config, steps=steps, eta=args.eta, progress=False, seed=5)
                b = sample_ddim(unet, x, ref_sched.config, steps=steps, eta=args.eta, progress=False, seed=5, graph=True)
                agree = f" (graph vs eager max |diff| {float((a.float() - b.float()).abs().max()):.2e})"
                clear_graphs(unet)
            else:
                t_graph, agree = float("nan"), ""
            print(f"{steps:>5} | {t_ref:>12.2f} | {t_swap:>17.2f} | {t_eager:>16.2f} | {t_graph:>16.2f} | "
                  f"{t_ref / t_graph:>13.2f}x{agree}")


if __name__ == "__main__":
    main()
