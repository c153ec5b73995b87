"""The samplers of the score-based view of diffusion over any model(x, t, **cond), each step one fused kernel:
Euler (the probability-flow ODE), Euler ancestral and DPM-Solver++ (2M, 3M, SDE).

    x = sample_dpm_solver(model, noise, schedule, steps=20, class_labels=y, guidance_scale=4.0)

`schedule` is a diffusers-style scheduler or its config (a DDPM/DDIM config works: the training betas and
prediction type are what matter). The per-step coefficients come from genfast's drop-in scheduler of the
same name (so a run equals that scheduler's loop) and are computed once per (config, steps, start, device).
Guidance runs cond and uncond in one model call and mixes them inside the step kernel; the noise of step i
(index in the full inference schedule) is genfast's stream at (seed, offset=i), img2img's at
INIT_NOISE_OFFSET, so the eager loop and the CUDA-graph replay (graph=True) give the same samples.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from genfast.ops.random import randn
from genfast.ops.sampler_steps import StepCoefficients, euler_ancestral_coefficients, euler_coefficients
from genfast.samplers.graph import run_graphed
from genfast.samplers.loop import Plan, denoise
from genfast.samplers.sampling import (_CONFIG, INIT_NOISE_OFFSET, _config_of, check_model_and_input, check_strength,
                                       conditioning, steps_to_run)



@dataclass
class SigmaTable:
    """Per-step data of one sigma-sampler run: timesteps (device tensor, what the model sees), the model
    input scale, the step coefficients, how many earlier converted outputs each step reads, and the
    initial noise level (alpha, sigma of the first step run: x_start = alpha * x0 + sigma * noise)."""

    kind: str
    timesteps: torch.Tensor
    input_scale: list[float]
    coefficients: list[StepCoefficients]
    history: int
    init_alpha: float
    init_sigma: float
    thresholding: tuple | None = None
    keeps_history: bool = False

    def __len__(self) -> int:
        return len(self.coefficients)


_TABLES: dict = {}
_SCHEDULER_NAMES = {"euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
                    "dpm-solver": "DPMSolverMultistepScheduler"}


def _scheduler(kind: str, config: Mapping[str, Any], options: dict):
    import genfast.schedulers as gs

    cls = getattr(gs, _SCHEDULER_NAMES[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused keys of another scheduler's config, deprecations
        return cls.from_config({k: v for k, v in dict(config).items() if not k.startswith("_")}, **options)


def sigma_table(kind: str, config: Mapping[str, Any], steps: int, start_fraction: float, device,
                options: dict | None = None, step_options: dict | None = None) -> SigmaTable:
    """The SigmaTable of `kind` for a config, cached per (config, options, steps, strength, device)."""
    options, step_options = dict(options or {}), dict(step_options or {})
    key = (kind, repr(sorted((k, repr(v)) for k, v in dict(config).items())), repr(sorted(options.items())),
           repr(sorted(step_options.items())), int(steps), float(start_fraction), str(device))
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = _build(kind, config, steps, start_fraction, torch.device(device), options,
                                      step_options)
    return table


def config_thresholding(config: Mapping[str, Any]):
    """The x0 thresholding a training config asks for: its dynamic thresholding, or clip_sample with range 1
    as thresholding with sample_max_value 1 (which is clipping x0 to [-1, 1]); None otherwise. Models trained
    with clip_sample (a DDPM/DDIM config) need it with Euler and DPM-Solver too, whose first steps divide the
    model's error by alpha_T (the cosine schedule's sigma_max is about 2e4)."""
    if config.get("thresholding", False):
        return (float(config.get("dynamic_thresholding_ratio", 0.995)), float(config.get("sample_max_value", 1.0)))
    if config.get("clip_sample", False) and float(config.get("clip_sample_range", 1.0)) == 1.0:
        return (1.0, 1.0)
    return None


def _build(kind, config, steps, strength, device, options, step_options) -> SigmaTable:
    thresholding = step_options.pop("thresholding", None)
    s = _scheduler(kind, config, options)
    s.set_timesteps(steps)
    sig = s.sigmas.tolist()
    n = len(s.timesteps)
    start = n - steps_to_run(n, strength)
    coefficients, scales = [], []
    history = 0
    if kind == "dpm-solver":
        s._step_index, s.lower_order_nums = start, 0
        for i in range(start, n):
            s._step_index = i
            order = s._order_now()
            co = s._step_coefficients(order)
            coefficients.append(co)
            history = max(history, co.history)
            s.lower_order_nums = min(s.lower_order_nums + 1, s.config.solver_order)
            scales.append(1.0)
        alpha, sigma = s._sigma_to_alpha_sigma_t(sig[start])
    else:
        prediction = s.config.prediction_type
        if kind == "euler-a" and prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type: euler-a takes epsilon or v_prediction, got {prediction!r}")
        s_churn = float(step_options.get("s_churn", 0.0))
        s_tmin, s_tmax = float(step_options.get("s_tmin", 0.0)), float(step_options.get("s_tmax", float("inf")))
        s_noise = float(step_options.get("s_noise", 1.0))
        for i in range(start, n):
            if kind == "euler":
                gamma = min(s_churn / (len(sig) - 1), 2 ** 0.5 - 1) if s_tmin <= sig[i] <= s_tmax else 0.0
                coefficients.append(euler_coefficients(sig[i], sig[i + 1], prediction, gamma, s_noise))
            else:
                coefficients.append(euler_ancestral_coefficients(sig[i], sig[i + 1], prediction))
            scales.append((sig[i] ** 2 + 1) ** -0.5)
        # x lives at scale sqrt(sigma^2 + 1): pure noise starts at init_noise_sigma, img2img at x0 + sigma z
        alpha, sigma = 1.0, sig[start]
        if strength >= 1.0:
            alpha, sigma = 0.0, float(s.init_noise_sigma)
    if kind == "dpm-solver" and strength >= 1.0:
        alpha, sigma = 0.0, 1.0
    return SigmaTable(kind=kind, timesteps=s.timesteps[start:].to(device), input_scale=scales,
                      coefficients=coefficients, history=history, init_alpha=float(alpha), init_sigma=float(sigma),
                      thresholding=thresholding, keeps_history=kind == "dpm-solver")


@dataclass
class SigmaPlan(Plan):
    """A Plan whose table is a SigmaTable (start is 0: the table holds the steps that run; `offset0` is
    the index of its first step in the full schedule, the noise offset of step 0)."""

    offset0: int = 0
    extra: dict = field(default_factory=dict)


def _sample(kind, model, x, schedule, steps, strength, seed, cond, uncond, class_labels, null_class,
            guidance_scale, progress, graph, options, step_options, thresholding):
    check_model_and_input(model, x)
    config = _config_of(schedule)
    if config is None:
        raise TypeError(f"schedule: the {kind} sampler takes a diffusers-style scheduler or its config, got a "
                        f"{type(schedule).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    strength = check_strength(strength)
    cond, uncond, guidance_scale, seed = conditioning(model, x, seed, cond, uncond, class_labels, null_class,
                                                      guidance_scale)
    if thresholding is _CONFIG:
        thresholding = config_thresholding(config)
    elif thresholding is not None:
        if not isinstance(thresholding, (tuple, list)) or len(thresholding) != 2:
            raise TypeError(f"thresholding: expected (ratio, max_value) or None, got {thresholding!r}")
        thresholding = (float(thresholding[0]), float(thresholding[1]))
    step_options = {**step_options, "thresholding": thresholding}
    table = sigma_table(kind, config, steps, strength, x.device, options, step_options)
    full = _scheduler_steps(kind, config, options, steps)
    plan = SigmaPlan(kind, table, 0, {}, guidance_scale, cond, uncond, offset0=full - len(table))
    if strength < 1.0:  # img2img: x is the image, noised to the first step that runs
        noise = randn(x.shape, seed=seed, offset=INIT_NOISE_OFFSET, dtype=torch.float32, device=x.device)
        x = (table.init_alpha * x.float() + table.init_sigma * noise).to(x.dtype)
    elif table.init_sigma != 1.0:
        x = x * table.init_sigma
    if graph:
        return run_graphed(model, x, plan, seed)
    return denoise(model, x, plan, seed, progress)


def _scheduler_steps(kind, config, options, steps) -> int:
    return len(sigma_table(kind, config, steps, 1.0, "cpu", options).coefficients)


_COMMON_DOC = """
    model(x, t, **cond) -> the model's prediction (epsilon / v / sample, as the config's prediction_type); t
    is a [B] tensor of the scheduler's timesteps (float for Euler). x: pure noise N(0, I) (strength=1; it is
    scaled to the scheduler's init_noise_sigma), or an image to edit (strength < 1, img2img: noised to the
    first of the last int(steps * strength) steps, which then run). cond / uncond: model keyword arguments;
    class_labels: a [B] tensor, with guidance the null class (null_class or model.null_class) is the
    unconditional one; guidance_scale: classifier-free guidance weight (cond and uncond in one model call,
    mixed inside the step kernel). seed: genfast's stream seed (None: drawn from torch's default generator).
    thresholding: (ratio, max_value) dynamic thresholding of the predicted x0 as diffusers' config options,
    or None; by default the config's (its clip_sample with range 1 counts as clipping x0 to [-1, 1], see
    config_thresholding). graph=True (CUDA): the loop is captured once as a CUDA graph and replayed.
"""


def sample_euler(model: Callable, x: torch.Tensor, schedule, *, steps: int = 25, use_karras_sigmas: bool = False,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 cond: Mapping | None = None, uncond: Mapping | None = None, class_labels: torch.Tensor | None = None,
                 null_class: int | None = None, guidance_scale: float | None = None, strength: float = 1.0,
                 seed: int | None = None, thresholding=_CONFIG, progress: bool = True,
                 graph: bool = False) -> torch.Tensor:
    """Euler steps of the probability-flow ODE (diffusers' EulerDiscreteScheduler; Karras et al. 2022),
    deterministic unless s_churn > 0."""
    return _sample("euler", model, x, schedule, steps, strength, seed, cond, uncond, class_labels, null_class,
                   guidance_scale, progress, graph, dict(use_karras_sigmas=bool(use_karras_sigmas)),
                   dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise), thresholding)


def sample_euler_ancestral(model: Callable, x: torch.Tensor, schedule, *, steps: int = 25,
                           cond: Mapping | None = None, uncond: Mapping | None = None,
                           class_labels: torch.Tensor | None = None, null_class: int | None = None,
                           guidance_scale: float | None = None, strength: float = 1.0, seed: int | None = None,
                           thresholding=_CONFIG, progress: bool = True, graph: bool = False) -> torch.Tensor:
    """Ancestral Euler steps of the reverse SDE (diffusers' EulerAncestralDiscreteScheduler)."""
    return _sample("euler-a", model, x, schedule, steps, strength, seed, cond, uncond, class_labels, null_class,
                   guidance_scale, progress, graph, {}, {}, thresholding)


def sample_dpm_solver(model: Callable, x: torch.Tensor, schedule, *, steps: int = 20, solver_order: int = 2,
                      algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                      use_karras_sigmas: bool = False, lower_order_final: bool = True,
                      cond: Mapping | None = None, uncond: Mapping | None = None,
                      class_labels: torch.Tensor | None = None, null_class: int | None = None,
                      guidance_scale: float | None = None, strength: float = 1.0, seed: int | None = None,
                      thresholding=_CONFIG, progress: bool = True, graph: bool = False) -> torch.Tensor:
    """Multistep DPM-Solver (diffusers' DPMSolverMultistepScheduler; Lu et al. 2022): DPM-Solver++(2M) by
    default, solver_order 3 for 3M, algorithm_type="sde-dpmsolver++" for the SDE variant."""
    options = dict(solver_order=int(solver_order), algorithm_type=algorithm_type, solver_type=solver_type,
                   use_karras_sigmas=bool(use_karras_sigmas), lower_order_final=bool(lower_order_final))
    return _sample("dpm-solver", model, x, schedule, steps, strength, seed, cond, uncond, class_labels, null_class,
                   guidance_scale, progress, graph, options, {}, thresholding)


for _f in (sample_euler, sample_euler_ancestral, sample_dpm_solver):
    _f.__doc__ += _COMMON_DOC


# The names `genfast sample --sampler` and `genfast compare` use: (function, options, default steps).
NAMED_SAMPLERS = {
    "euler": (sample_euler, {}, 25),
    "euler-a": (sample_euler_ancestral, {}, 25),
    "dpm++2m": (sample_dpm_solver, {}, 20),
    "dpm++2m-sde": (sample_dpm_solver, dict(algorithm_type="sde-dpmsolver++"), 20),
}


def sample_named(name: str, model: Callable, x: torch.Tensor, schedule, *, steps: int | None = None, **kwargs):
    """Run the sampler called `name` (a key of NAMED_SAMPLERS) with its options; steps None: its default."""
    if name not in NAMED_SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(NAMED_SAMPLERS)}, got {name!r}")
    fn, options, default_steps = NAMED_SAMPLERS[name]
    return fn(model, x, schedule, steps=steps or default_steps, **options, **kwargs)
