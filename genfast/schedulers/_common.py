"""What genfast's drop-in schedulers share: diffusers' config machinery when diffusers is installed (so
save_pretrained / from_pretrained / from_config and pipelines work), a minimal stand-in when it is not,
diffusers-identical noise from a torch.Generator, and the timestep -> alpha lookups without host syncs.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
from dataclasses import dataclass, fields
from typing import Any

import torch

try:  # diffusers is optional: genfast imports (and its schedulers work) without it
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils.torch_utils import randn_tensor as _diffusers_randn_tensor

    HAVE_DIFFUSERS = True
    KARRAS_COMPATIBLES = [e.name for e in KarrasDiffusionSchedulers]
except ImportError:  # pragma: no cover - exercised by test_schedulers' "diffusers absent" test
    HAVE_DIFFUSERS = False
    KARRAS_COMPATIBLES = []
    _diffusers_randn_tensor = None

    class FrozenConfig(dict):
        """A read-only dict whose keys are also attributes (like diffusers' FrozenDict)."""

        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        def _readonly(self, *args, **kwargs):
            raise TypeError("config is frozen; use scheduler.register_to_config(key=value)")

        __setitem__ = __delitem__ = update = pop = setdefault = _readonly

    class ConfigMixin:
        """Minimal stand-in for diffusers' ConfigMixin: config, register_to_config, from_config,
        save_config / from_pretrained of a JSON file."""

        config_name = "scheduler_config.json"
        ignore_for_config: list = []

        def register_to_config(self, **kwargs):
            kwargs.pop("kwargs", None)
            merged = {**getattr(self, "_internal_dict", {}), **kwargs}
            self._internal_dict = FrozenConfig(merged)

        @property
        def config(self) -> FrozenConfig:
            return self._internal_dict

        @classmethod
        def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
            config = dict(config or {})
            keys = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
            init = {k: v for k, v in config.items() if k in keys}
            init.update({k: kwargs.pop(k) for k in list(kwargs) if k in keys})
            obj = cls(**init)
            if return_unused_kwargs:
                return obj, kwargs
            return obj

        def to_json_string(self) -> str:
            d = dict(self.config)
            d["_class_name"] = type(self).__name__
            for k, v in d.items():
                if hasattr(v, "tolist"):
                    d[k] = v.tolist()
            return json.dumps(d, indent=2, sort_keys=True) + "\n"

        def save_config(self, save_directory, **kwargs):
            os.makedirs(save_directory, exist_ok=True)
            with open(os.path.join(save_directory, self.config_name), "w", encoding="utf-8") as f:
                f.write(self.to_json_string())

        save_pretrained = save_config

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
            path = os.path.join(pretrained_model_name_or_path, subfolder or "", cls.config_name)
            with open(path, encoding="utf-8") as f:
                return cls.from_config(json.load(f), **kwargs)

        def __repr__(self):
            return f"{type(self).__name__} {self.to_json_string()}"

    class SchedulerMixin:
        """Stand-in for diffusers' SchedulerMixin (nothing needed beyond ConfigMixin here)."""

    def register_to_config(init):
        """Record the __init__ arguments (defaults filled in) as the config, then run __init__."""
        signature = inspect.signature(init)

        @functools.wraps(init)
        def inner(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            params = {k: v for k, v in bound.arguments.items() if k != "self"}
            self.register_to_config(**params)
            init(self, *args, **kwargs)

        return inner


@dataclass
class _OutputBase:
    """diffusers' BaseOutput behaviour for the fallback: attribute, index and key access, to_tuple()."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


if HAVE_DIFFUSERS:
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
else:
    @dataclass
    class DDIMSchedulerOutput(_OutputBase):
        prev_sample: torch.Tensor
        pred_original_sample: torch.Tensor | None = None

    @dataclass
    class DDPMSchedulerOutput(_OutputBase):
        prev_sample: torch.Tensor
        pred_original_sample: torch.Tensor | None = None


def randn_like_diffusers(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normal noise drawn exactly as diffusers' randn_tensor draws it (a CPU generator draws on the CPU
    and the result moves to `device`; a list of generators draws one batch row each)."""
    if _diffusers_randn_tensor is not None:
        return _diffusers_randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    shape = tuple(shape)
    rand_device = device
    gens = generator if isinstance(generator, list) else [generator]
    if gens[0] is not None:
        if gens[0].device.type != device.type:
            if gens[0].device.type != "cpu":
                raise ValueError(f"generator: cannot generate a {device} tensor from a {gens[0].device.type} generator")
            rand_device = torch.device("cpu")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        rows = [torch.randn((1,) + shape[1:], generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(rows, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def check_step_inputs(model_output: Any, sample: Any, expected_channels: int | None = None,
                      same_dtype: bool = True) -> None:
    """Type, dtype and device checks (shape is checked by the op, with the argument's name). With
    same_dtype=False differing float dtypes are accepted (the scheduler promotes them, as diffusers'
    arithmetic does)."""
    if not isinstance(model_output, torch.Tensor):
        raise TypeError(f"model_output: expected a torch.Tensor, got {type(model_output).__name__}")
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"sample: expected a torch.Tensor, got {type(sample).__name__}")
    if model_output.device != sample.device:
        raise ValueError(f"model_output: on {model_output.device} but sample is on {sample.device}")
    if model_output.dtype != sample.dtype and (same_dtype or not model_output.is_floating_point()
                                               or not sample.is_floating_point()):
        raise TypeError(f"model_output: dtype {model_output.dtype} differs from sample's {sample.dtype}")


def is_device_timestep(timestep) -> bool:
    """A timestep held in an accelerator tensor: reading it on the host would sync, so it is looked up
    on the device instead."""
    return isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu"


def host_timestep(timestep, num_train_timesteps: int) -> int:
    """The timestep as a Python int (host tensors, numpy and Python ints), range-checked."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"timestep: expected one timestep, got a tensor of shape {tuple(timestep.shape)}")
        if timestep.is_floating_point() and timestep.item() != int(timestep.item()):
            raise ValueError(f"timestep: expected an integer timestep, got {timestep.item()}")
        t = int(timestep.item())
    else:
        try:
            t = int(timestep)
        except (TypeError, ValueError):
            raise TypeError(f"timestep: expected an int or a one-element tensor, got {type(timestep).__name__}") from None
        if t != timestep:
            raise ValueError(f"timestep: expected an integer timestep, got {timestep}")
    if not 0 <= t < num_train_timesteps:
        raise ValueError(f"timestep: {t} is outside the training schedule [0, {num_train_timesteps})")
    return t


def device_lookup(table: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """table[timestep] on the device as a 0-dim fp32 tensor, NaN for a timestep outside the table
    (it cannot be range-checked without a host sync; a NaN output makes the mistake visible)."""
    t = timestep.reshape(()).long()
    n = table.shape[0]
    valid = (t >= 0) & (t < n)
    value = table[t.clamp(0, n - 1)]
    return torch.where(valid, value, torch.full_like(value, float("nan")))


class StreamState:
    """genfast's noise stream for a scheduler used without a generator: a seed drawn from torch's
    default generator at the first noisy step after set_timesteps, and an offset advanced per step."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seed: int | None = None
        self.offset = 0

    def next(self) -> tuple[int, int]:
        from genfast.ops._stream import draw_seed

        if self.seed is None:
            self.seed = draw_seed()
        offset = self.offset
        self.offset += 1
        return self.seed, offset


def check_eta(eta) -> float:
    if isinstance(eta, torch.Tensor):
        if eta.numel() != 1 or eta.device.type != "cpu":
            raise ValueError("eta: expected a float (or a one-element CPU tensor)")
        eta = float(eta)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"eta: expected a float, got {type(eta).__name__}")
    return float(eta)
