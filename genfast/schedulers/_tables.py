"""Per-device coefficient tables and the config -> op-keyword mapping shared by the schedulers."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class DeviceTables:
    """Tables (tuples of CPU tensors) copied once to each device they are used on, until cleared
    (set_timesteps clears them: they depend on the number of inference steps)."""

    def __init__(self):
        self._by_device: dict[str, tuple] = {}

    def clear(self):
        self._by_device.clear()

    def get(self, device: torch.device, build: Callable[[], tuple]) -> tuple:
        key = str(device)
        tables = self._by_device.get(key)
        if tables is None:
            tables = tuple(t.to(device=device, dtype=torch.float32) for t in build())
            self._by_device[key] = tables
        return tables


SMALLEST_ALPHA = 1.401298464324817e-45  # the smallest positive float32


def positive_alpha(alpha: float) -> float:
    """alphas_cumprod[T-1] is exactly 0 with rescale_betas_zero_snr; the op wants alphas in (0, 1] (see
    API_REQUESTS.md), so 0 becomes the smallest positive float32: sqrt of it is 4e-23, so v- and
    sample-prediction results agree with diffusers' to that; epsilon-prediction is undefined there anyway."""
    return alpha if alpha > 0.0 else SMALLEST_ALPHA


def prediction_options(config) -> dict:
    """The op keywords from a scheduler config, read at every step (pipelines may change the config
    after construction with register_to_config)."""
    prediction_type = config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: given as {prediction_type!r}, must be one of "
                         f"{', '.join(PREDICTION_TYPES)}")
    options = {"prediction_type": prediction_type, "clip_sample_range": None, "thresholding": None}
    if config.thresholding:
        options["thresholding"] = (float(config.dynamic_thresholding_ratio), float(config.sample_max_value))
    elif config.clip_sample:
        options["clip_sample_range"] = float(config.clip_sample_range)
    return options


def _sqrt_alphas(scheduler, like: torch.Tensor, timesteps: torch.Tensor):
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) broadcastable to `like`, computed as diffusers does
    (the table in like's dtype, indexed on like's device); the device copy of the table is kept."""
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"original_samples: expected a torch.Tensor, got {type(like).__name__}")
    if not isinstance(timesteps, torch.Tensor):
        timesteps = torch.as_tensor(timesteps)
    if timesteps.is_floating_point():
        raise TypeError(f"timesteps: expected integer timesteps, got {timesteps.dtype}")
    cache = scheduler.__dict__.setdefault("_alphas_cumprod_by_device", {})
    key = (str(like.device), like.dtype)
    alphas_cumprod = cache.get(key)
    if alphas_cumprod is None:
        alphas_cumprod = scheduler.alphas_cumprod.to(device=like.device).to(dtype=like.dtype)
        cache[key] = alphas_cumprod
    timesteps = timesteps.to(like.device)
    if timesteps.device.type == "cpu" and timesteps.numel() and (
            int(timesteps.min()) < 0 or int(timesteps.max()) >= alphas_cumprod.shape[0]):
        raise ValueError(f"timesteps: values must lie in [0, {alphas_cumprod.shape[0]}), got "
                         f"[{int(timesteps.min())}, {int(timesteps.max())}]")
    a = alphas_cumprod[timesteps]
    shape = (-1,) + (1,) * (like.dim() - 1) if a.dim() > 0 and a.numel() > 1 else ()
    sqrt_a = (a ** 0.5).flatten()
    sqrt_1ma = ((1 - a) ** 0.5).flatten()
    if sqrt_a.numel() > 1:
        sqrt_a, sqrt_1ma = sqrt_a.reshape(shape), sqrt_1ma.reshape(shape)
    else:
        sqrt_a = sqrt_a.reshape((1,) * max(like.dim(), 1))
        sqrt_1ma = sqrt_1ma.reshape((1,) * max(like.dim(), 1))
    return sqrt_a, sqrt_1ma


def add_noise(scheduler, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The forward process q(x_t | x_0): sqrt(a_t) x_0 + sqrt(1 - a_t) noise (per-sample timesteps)."""
    if not isinstance(noise, torch.Tensor) or noise.shape != original_samples.shape:
        raise ValueError(f"noise: expected a tensor of shape {tuple(original_samples.shape)}")
    sqrt_a, sqrt_1ma = _sqrt_alphas(scheduler, original_samples, timesteps)
    return sqrt_a * original_samples + sqrt_1ma * noise


def get_velocity(scheduler, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The v-prediction target sqrt(a_t) noise - sqrt(1 - a_t) x_0."""
    if not isinstance(noise, torch.Tensor) or noise.shape != sample.shape:
        raise ValueError(f"noise: expected a tensor of shape {tuple(sample.shape)}")
    sqrt_a, sqrt_1ma = _sqrt_alphas(scheduler, sample, timesteps)
    return sqrt_a * noise - sqrt_1ma * sample


class TableMethods:
    """diffusers' table-driven scheduler methods, shared by the DDIM and DDPM schedulers."""

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        return add_noise(self, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        return get_velocity(self, sample, noise, timesteps)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def threshold_sample(config, sample: torch.Tensor) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022) of a predicted x0: per batch sample, s = the
    dynamic_thresholding_ratio quantile of |x0| clamped to [1, sample_max_value] (torch.clamp: a max below 1
    wins), then x0 clamped to [-s, s] and divided by s. Computed in fp32 for fp16/bf16 input."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = torch.quantile(flat.abs(), config.dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, min=1, max=config.sample_max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)
