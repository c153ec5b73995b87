"""What ProGAN's custom layers cost in a training step: pixel norm, minibatch standard deviation and the
equalized-learning-rate weight scaling, each measured by timing the same step with that layer replaced by
a free stand-in (identity; a zero channel; the unscaled weight), interleaved repetitions, medians.

    python benchmarks/bench_progan_layers.py [--batch 64] [--reps 15] [--device cpu]

The step is genfast's ProGAN step at full size (16 px, level 2): one critic update with the fused gradient
penalty and the drift term, one generator update, the EMA update.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import genfast.models.progan as progan
from genfast.training.data import load_data
from genfast.training.loop import BatchSource
from genfast.training.zoo import build_networks, default_config, finalize_config
from genfast.training.progan import ProGANTrainer


def _free_stddev(x, group_size=4, eps=1e-8):
    return torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], dim=1)


def _free_conv(self, x):
    return F.conv2d(x, self.weight, self.bias, padding=self.padding)


def _free_linear(self, x):
    return F.linear(x, self.weight, self.bias)


VARIANTS = {
    "full step": {},
    "without pixel norm": {"pixel_norm": lambda x, eps=1e-8: x},
    "without minibatch stddev": {"minibatch_stddev": _free_stddev},
    "without equalized-LR scaling": {"EqualizedConv2d.forward": _free_conv, "EqualizedLinear.forward": _free_linear},
}


def _patched(patches):
    saved = {}
    for name, fn in patches.items():
        if "." in name:
            cls, attr = name.split(".")
            saved[name] = getattr(getattr(progan, cls), attr)
            setattr(getattr(progan, cls), attr, fn)
        else:
            saved[name] = getattr(progan, name)
            setattr(progan, name, fn)
    return saved


def _restore(saved):
    for name, fn in saved.items():
        if "." in name:
            cls, attr = name.split(".")
            setattr(getattr(progan, cls), attr, fn)
        else:
            setattr(progan, name, fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = load_data("digits", 16)
    config = finalize_config("progan", default_config("progan", 1, 16, 10), 5000, data)
    torch.manual_seed(0)
    nets = {k: v.to(device) for k, v in build_networks("progan", config).items()}
    trainer = ProGANTrainer(nets, config, None, lambda m, **kw: m)
    trainer.step_count = 4 * trainer.phase_steps  # grown to 16 px, stable
    source = BatchSource(data, args.batch, 0, device, 0, 1)

    def step():
        trainer.step_count = 4 * trainer.phase_steps
        trainer.train_step(source)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {k: [] for k in VARIANTS}
    for _ in range(3):
        step()
    for _ in range(args.reps):
        for name, patches in VARIANTS.items():
            saved = _patched(patches)
            try:
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
            finally:
                _restore(saved)
    full = statistics.median(times["full step"])
    print(f"ProGAN step at 16 px, batch {args.batch}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.reps} interleaved repetitions")
    print("| variant | ms per step | the layer's share of the step |")
    print("|---|---:|---:|")
    for name in VARIANTS:
        med = statistics.median(times[name])
        share = "" if name == "full step" else f"{100 * (full - med) / full:.1f}%"
        print(f"| {name} | {1e3 * med:.1f} | {share} |")


if __name__ == "__main__":
    main()
