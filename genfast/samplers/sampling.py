"""DDPM and DDIM sampling loops over any model(x, t, **cond), with the step as genfast's fused op.

    x = sample_ddim(model, noise, schedule, steps=50, eta=0.0, class_labels=y, guidance_scale=4.0)

`schedule` is a NoiseSchedule, a genfast or diffusers DDIM/DDPM scheduler or a scheduler config (its
prediction type, clipping / thresholding and variance type become the defaults). Classifier-free
guidance runs cond and uncond in one model call ([uncond; cond] along the batch) and the guidance
mix happens inside the step kernel. Noise for step i (index in the full inference schedule) is
genfast's stream at (seed, offset=i); img2img's initial noise is at offset INIT_NOISE_OFFSET. The
eager loop and the CUDA-graph replay (graph=True, see genfast.samplers.graph) use exactly this scheme,
so they give the same samples for the same seed.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from genfast.ops._stream import draw_seed
from genfast.ops.random import randn
from genfast.samplers.graph import run_graphed
from genfast.samplers.loop import Plan, denoise
from genfast.samplers.schedules import NoiseSchedule

INIT_NOISE_OFFSET = 1 << 40  # img2img's noise: far from the per-step offsets 0..steps-1
_CONFIG = object()  # "take it from the scheduler config"


def _config_of(schedule) -> Mapping[str, Any] | None:
    if isinstance(schedule, NoiseSchedule):
        return None
    if isinstance(schedule, Mapping):
        return schedule
    config = getattr(schedule, "config", None)
    if config is None:
        raise TypeError(f"schedule: expected a NoiseSchedule, a DDIM/DDPM scheduler or its config, got "
                        f"{type(schedule).__name__}")
    return config


_SCHEDULE_CACHE: dict = {}


def _noise_schedule(schedule, config) -> NoiseSchedule:
    if config is None:
        return schedule
    key = repr(sorted((k, repr(v)) for k, v in dict(config).items()))
    sched = _SCHEDULE_CACHE.get(key)
    if sched is None:  # one NoiseSchedule (and its device tables) per distinct config
        sched = NoiseSchedule.from_config(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
        _SCHEDULE_CACHE[key] = sched
    return sched


def _options(config, prediction_type, clip_sample_range, thresholding) -> dict:
    opts = {"prediction_type": "epsilon", "clip_sample_range": None, "thresholding": None}
    if config is not None:
        opts["prediction_type"] = config.get("prediction_type", "epsilon")
        if config.get("thresholding", False):
            opts["thresholding"] = (float(config.get("dynamic_thresholding_ratio", 0.995)),
                                    float(config.get("sample_max_value", 1.0)))
        elif config.get("clip_sample", False):
            opts["clip_sample_range"] = float(config.get("clip_sample_range", 1.0))
    if prediction_type is not _CONFIG:
        opts["prediction_type"] = prediction_type
    if clip_sample_range is not _CONFIG:
        opts["clip_sample_range"] = clip_sample_range
        if clip_sample_range is not None and thresholding is _CONFIG:
            opts["thresholding"] = None
    if thresholding is not _CONFIG:
        opts["thresholding"] = None if thresholding is None else tuple(thresholding)
    return opts


def _check_cond(cond, name: str) -> dict:
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"{name}: expected a dict of model keyword arguments, got {type(cond).__name__}")
    return dict(cond)


def check_model_and_input(model, x) -> None:
    if not callable(model):
        raise TypeError(f"model: expected a callable model(x, t, **cond), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty batch, got shape {tuple(x.shape)}")


def check_strength(strength) -> float:
    if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0.0 < strength <= 1.0):
        raise ValueError(f"strength: must lie in (0, 1], got {strength!r}")
    return float(strength)


def conditioning(model, x, seed, cond, uncond, class_labels, null_class, guidance_scale):
    """The model keywords of the conditional and unconditional halves, the guidance weight and the seed,
    checked (shared by every sampler)."""
    cond = _check_cond(cond, "cond")
    uncond = _check_cond(uncond, "uncond")
    if class_labels is not None:
        if not isinstance(class_labels, torch.Tensor) or class_labels.shape != (x.shape[0],):
            raise ValueError(f"class_labels: expected a [{x.shape[0]}] tensor of labels")
        cond["class_labels"] = class_labels.to(x.device)
        if guidance_scale is not None:
            if null_class is None:
                null_class = getattr(model, "null_class", None)
            if null_class is None:
                raise ValueError("null_class: guidance with class_labels needs the null (unconditional) class; pass "
                                 "null_class= or use a model with a .null_class attribute")
            uncond["class_labels"] = torch.full_like(cond["class_labels"], int(null_class))
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise TypeError(f"guidance_scale: expected a float, got {type(guidance_scale).__name__}")
        guidance_scale = float(guidance_scale)
        if not cond:
            raise ValueError("guidance_scale: classifier-free guidance needs cond (or class_labels) to guide towards")
    elif uncond:
        raise ValueError("uncond: given without guidance_scale")
    if seed is None:
        seed = draw_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < (1 << 64):
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    return cond, uncond, guidance_scale, seed


def steps_to_run(n: int, strength: float) -> int:
    """diffusers' img2img: the last int(steps * strength) steps run, from x noised to the first of them."""
    run = min(int(n * strength), n)
    if run == 0:
        raise ValueError(f"strength: {strength} x {n} steps leaves no step to run")
    return run


def _prepare(kind, model, x, schedule, steps, strength, seed, cond, uncond, class_labels, null_class,
             guidance_scale, step_kwargs):
    check_model_and_input(model, x)
    config = _config_of(schedule)
    sched = _noise_schedule(schedule, config)
    if steps is None:
        steps = sched.num_train_timesteps
    table = sched.table(kind, steps, x.device)
    strength = check_strength(strength)
    cond, uncond, guidance_scale, seed = conditioning(model, x, seed, cond, uncond, class_labels, null_class,
                                                      guidance_scale)
    start = len(table) - steps_to_run(len(table), strength)
    plan = Plan(kind, table, start, step_kwargs, guidance_scale, cond, uncond)
    if strength < 1.0:
        a = table.alpha_prod_t_host[start]
        noise = randn(x.shape, seed=seed, offset=INIT_NOISE_OFFSET, dtype=torch.float32, device=x.device)
        x = (a ** 0.5 * x.float() + (1 - a) ** 0.5 * noise).to(x.dtype)
    return plan, x, seed


def _run(model, x, plan, seed, progress, graph):
    if graph:
        return run_graphed(model, x, plan, seed)
    return denoise(model, x, plan, seed, progress)


def sample_ddim(model: Callable, x: torch.Tensor, schedule, *, steps: int = 50, eta: float = 0.0,
                prediction_type=_CONFIG, clip_sample_range=_CONFIG, thresholding=_CONFIG,
                use_clipped_model_output: bool = False, cond: Mapping | None = None, uncond: Mapping | None = None,
                class_labels: torch.Tensor | None = None, null_class: int | None = None,
                guidance_scale: float | None = None, strength: float = 1.0, seed: int | None = None,
                progress: bool = True, graph: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021) from x: pure noise (strength=1) or an image to edit (strength < 1,
    img2img: noised to the first of the last int(steps * strength) steps, which then run).

    model(x, t, **cond) -> prediction (epsilon / sample / v as prediction_type); t is an int64 [B]
    tensor. cond / uncond: model keyword arguments (tensors batched along dim 0); class_labels: a [B]
    tensor, with guidance the null class (null_class or model.null_class) is the unconditional one.
    guidance_scale: classifier-free guidance weight (cond and uncond in one model call). eta: noise
    weight (0 = deterministic DDIM, 1 = DDPM-like). seed: genfast's stream seed (None: drawn from torch's
    default generator). graph=True (CUDA): the loop is captured once as a CUDA graph and replayed.
    """
    config = _config_of(schedule)
    kwargs = _options(config, prediction_type, clip_sample_range, thresholding)
    kwargs.update(eta=float(eta), use_clipped_model_output=bool(use_clipped_model_output))
    plan, x, seed = _prepare("ddim", model, x, schedule, steps, strength, seed, cond, uncond, class_labels,
                             null_class, guidance_scale, kwargs)
    return _run(model, x, plan, seed, progress, graph)


def sample_ddpm(model: Callable, x: torch.Tensor, schedule, *, steps: int | None = None, variance_type=_CONFIG,
                prediction_type=_CONFIG, clip_sample_range=_CONFIG, thresholding=_CONFIG,
                cond: Mapping | None = None, uncond: Mapping | None = None, class_labels: torch.Tensor | None = None,
                null_class: int | None = None, guidance_scale: float | None = None, strength: float = 1.0,
                seed: int | None = None, progress: bool = True, graph: bool = False) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020); steps=None runs every training timestep, fewer steps
    skip through the schedule as diffusers' DDPMScheduler does. variance_type as diffusers' (learned and
    learned_range take a model output with 2C channels). Other arguments as sample_ddim."""
    config = _config_of(schedule)
    kwargs = _options(config, prediction_type, clip_sample_range, thresholding)
    if variance_type is _CONFIG:
        variance_type = (config or {}).get("variance_type", "fixed_small")
    kwargs["variance_type"] = variance_type
    plan, x, seed = _prepare("ddpm", model, x, schedule, steps, strength, seed, cond, uncond, class_labels,
                             null_class, guidance_scale, kwargs)
    return _run(model, x, plan, seed, progress, graph)
