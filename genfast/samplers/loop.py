"""The denoising loop shared by the eager samplers (sampling.py) and the CUDA-graph replay (graph.py):
a Plan (everything a run needs besides the model and the input) and `denoise`, which runs it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from genfast.ops.diffusion import ddim_step, ddpm_step
from genfast.ops.sampler_steps import sampler_step
from genfast.samplers.schedules import StepTable

_SMALLEST_ALPHA = 1.401298464324817e-45
SIGMA_KINDS = ("euler", "euler-a", "dpm-solver")  # plans whose table is a samplers.sigma.SigmaTable


@dataclass
class Plan:
    """Everything a sampling run needs besides the model and the input: built once per call."""

    kind: str
    table: StepTable
    start: int
    step_kwargs: dict
    guidance_scale: float | None
    cond: dict = field(default_factory=dict)
    uncond: dict = field(default_factory=dict)

    def key(self) -> tuple:
        """What a captured graph depends on (besides shapes of the input and the cond tensors)."""
        opts = tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in self.step_kwargs.items()))
        return (self.kind, id(self.table), self.start, opts, self.guidance_scale, getattr(self, "offset0", 0))


def _merge_guidance(cond: dict, uncond: dict, batch: int) -> dict:
    """[uncond; cond] along the batch for every tensor keyword; other values must agree."""
    if set(cond) != set(uncond):
        raise ValueError(f"uncond: keys {sorted(uncond)} differ from cond's {sorted(cond)}")
    merged = {}
    for k, c in cond.items():
        u = uncond[k]
        if isinstance(c, torch.Tensor):
            if not isinstance(u, torch.Tensor) or u.shape != c.shape:
                raise ValueError(f"uncond: {k!r} must be a tensor shaped like cond's {tuple(c.shape)}")
            if c.dim() == 0 or c.shape[0] != batch:
                raise ValueError(f"cond: {k!r} must have the batch size {batch} as its first dimension")
            merged[k] = torch.cat([u, c], dim=0)
        else:
            if u != c:
                raise ValueError(f"uncond: non-tensor argument {k!r} must equal cond's")
            merged[k] = c
    return merged


def _progress(iterable, enabled: bool, total: int, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # no tqdm: no bar
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _model_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):  # diffusers' UNet2DOutput
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"model: expected a tensor (or an output with .sample), got {type(out).__name__}")


def denoise(model: Callable, x: torch.Tensor, plan: Plan, seed, progress: bool = False) -> torch.Tensor:
    """The loop itself: eager, or traced once into a CUDA graph (then `seed` is a device tensor and
    everything here runs on the device without host syncs)."""
    if plan.kind in SIGMA_KINDS:
        return _denoise_sigma(model, x, plan, seed, progress)
    table = plan.table
    batch = x.shape[0]
    guided = plan.guidance_scale is not None
    kwargs = _merge_guidance(plan.cond, plan.uncond, batch) if guided else plan.cond
    steps = range(plan.start, len(table))
    for i in _progress(steps, progress, len(steps), f"genfast {plan.kind}"):
        t = table.timesteps[i]
        a_t = table.alpha_prod_t_host[i]
        a_prev = table.alpha_prod_t_prev_host[i]
        a_t = a_t if a_t > 0 else _SMALLEST_ALPHA  # zero terminal SNR (see schedulers._tables.positive_alpha)
        if guided:
            out = _model_output(model(torch.cat([x, x], dim=0), t.expand(2 * batch), **kwargs))
            model_output = tuple(out.chunk(2, dim=0))
        else:
            model_output = _model_output(model(x, t.expand(batch), **kwargs))
        if plan.kind == "ddim":
            x = ddim_step(x, model_output, a_t, a_prev, guidance_scale=plan.guidance_scale, seed=seed, offset=i,
                          **plan.step_kwargs)
        else:
            x = ddpm_step(x, model_output, a_t, a_prev, guidance_scale=plan.guidance_scale, seed=seed, offset=i,
                          add_noise=table.adds_noise_host[i], **plan.step_kwargs)
    return x


def _denoise_sigma(model: Callable, x: torch.Tensor, plan, seed, progress: bool) -> torch.Tensor:
    """The Euler / Euler-ancestral / DPM-Solver loop: the model sees x scaled by the step's input scale; each
    step is one sampler_step with the table's coefficients, reading the kept converted outputs (DPM)."""
    table = plan.table
    batch = x.shape[0]
    guided = plan.guidance_scale is not None
    kwargs = _merge_guidance(plan.cond, plan.uncond, batch) if guided else plan.cond
    history: list = []
    for j in _progress(range(len(table)), progress, len(table), f"genfast {plan.kind}"):
        t = table.timesteps[j]
        scale = table.input_scale[j]
        x_in = x * scale if scale != 1.0 else x
        if guided:
            out = _model_output(model(torch.cat([x_in, x_in], dim=0), t.expand(2 * batch), **kwargs))
            model_output = tuple(out.chunk(2, dim=0))
        else:
            model_output = _model_output(model(x_in, t.expand(batch), **kwargs))
        x, converted = sampler_step(x, model_output, table.coefficients[j], history=history,
                                    thresholding=table.thresholding, guidance_scale=plan.guidance_scale, seed=seed,
                                    offset=plan.offset0 + j, want_aux=table.keeps_history)
        if table.keeps_history and table.history:
            history = [converted] + history[:table.history - 1]
    return x
