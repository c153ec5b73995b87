"""`from_diffusers(scheduler)`: genfast's drop-in for a diffusers scheduler, with the same config and, mid-loop,
the same state (timesteps, sigmas, step and begin index, model-output history)."""
from __future__ import annotations

import copy

import torch

from genfast.schedulers.ddim import DDIMScheduler
from genfast.schedulers.ddpm import DDPMScheduler
from genfast.schedulers.dpmsolver import DPMSolverMultistepScheduler
from genfast.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

SCHEDULERS = {cls.__name__: cls for cls in (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler,
                                            EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)}

# the state set_timesteps / step leave behind, per class (copied as is; tensors cloned)
_STATE = {
    "DDIMScheduler": ("num_inference_steps", "timesteps"),
    "DDPMScheduler": ("num_inference_steps", "timesteps", "custom_timesteps"),
    "EulerDiscreteScheduler": ("num_inference_steps", "timesteps", "sigmas", "_step_index", "_begin_index",
                               "is_scale_input_called"),
    "EulerAncestralDiscreteScheduler": ("num_inference_steps", "timesteps", "sigmas", "_step_index", "_begin_index",
                                        "is_scale_input_called"),
    "DPMSolverMultistepScheduler": ("num_inference_steps", "timesteps", "sigmas", "_step_index", "_begin_index",
                                    "model_outputs", "lower_order_nums"),
}


class UnsupportedSchedulerError(TypeError):
    """from_diffusers got a scheduler genfast has no drop-in for."""


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return copy.copy(value)


def from_diffusers(scheduler):
    """genfast's equivalent of a diffusers DDIM, DDPM, Euler, Euler-ancestral or DPM-Solver multistep
    scheduler: the same config and the same state, also mid-loop (after set_timesteps or some steps).

        pipe.scheduler = genfast.schedulers.from_diffusers(pipe.scheduler)

    A genfast scheduler is returned as is; another class raises UnsupportedSchedulerError (a TypeError)."""
    if type(scheduler) in SCHEDULERS.values():
        return scheduler
    name = type(scheduler).__name__
    cls = SCHEDULERS.get(name)
    config = getattr(scheduler, "config", None)
    if cls is None or config is None:
        raise UnsupportedSchedulerError(
            f"scheduler: genfast has no drop-in for {type(scheduler).__module__}.{name}; supported: "
            f"{', '.join(SCHEDULERS)} (diffusers classes of those names)")
    ours = cls.from_config(dict(config))
    for attr in _STATE[name]:
        if hasattr(scheduler, attr):
            setattr(ours, attr, _copy(getattr(scheduler, attr)))
    if hasattr(ours, "_adopt_state"):
        ours._adopt_state()
    return ours
