"""What the sigma-parameterized drop-ins (Euler, Euler ancestral, DPM-Solver multistep) share: training
betas as diffusers builds them, the Karras / exponential / beta / Lu sigma spacings, sigma -> timestep
interpolation, the step-index state (step_index, begin_index) and its first lookup without a host sync.

The first step of a loop finds its index in `timesteps` (diffusers' index_for_timestep: the second match
when a value occurs twice). diffusers compares on the device and reads the result back (a sync); here a
timestep that is an element of `self.timesteps` (what iterating over it yields) is located by its
position in the tensor's storage, with the value-based answer precomputed on the host at set_timesteps,
so a CUDA loop never syncs. Any other timestep is compared by value, as diffusers does.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch

from genfast.samplers.schedules import betas_for_alpha_bar, rescale_zero_terminal_snr



def scheduler_logger(diffusers_module: str):
    """The logger diffusers' class logs to (so code that captures diffusers' scheduler warnings sees ours),
    or a standard logger of that name without diffusers."""
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        return logging.getLogger(diffusers_module)
    return diffusers_logging.get_logger(diffusers_module)


class ScheduleNotImplementedError(NotImplementedError, ValueError):
    """A config value the scheduler does not implement (diffusers raises NotImplementedError; it is also a
    ValueError, what genfast raises for bad values elsewhere)."""


def diffusers_betas(cls_name: str, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                    rescale_betas_zero_snr, extra_schedules: tuple = ()) -> torch.Tensor:
    """The training betas exactly as diffusers' sigma schedulers build them (float32, CPU)."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(num_train_timesteps)
    elif beta_schedule == "laplace" and "laplace" in extra_schedules:
        betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")
    elif beta_schedule == "sigmoid" and "sigmoid" in extra_schedules:
        betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    else:
        raise ScheduleNotImplementedError(f"beta_schedule: {beta_schedule} is not implemented for {cls_name}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def deprecated_argument(name: str, message: str) -> None:
    warnings.warn(f"`{name}` is deprecated and will be removed in version 1.0.0. {message}", FutureWarning,
                  stacklevel=3)


class SigmaMethods:
    """diffusers' sigma-spacing helpers and step-index state, shared by Euler, Euler ancestral and DPM."""

    _step_index: int | None
    _begin_index: int | None

    # --- step index -------------------------------------------------------------------------------
    @property
    def step_index(self):
        """The index of the current step in `timesteps` (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self):
        """The first step's index (set by pipelines with `set_begin_index`, e.g. img2img), or None."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    _missing_timestep_index = None  # DPM-Solver: a timestep not in the schedule -> the last index

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        candidates = (schedule_timesteps == timestep).nonzero()
        if len(candidates) == 0 and self._missing_timestep_index == "last":
            return len(self.timesteps) - 1
        pos = 1 if len(candidates) > 1 else 0
        return candidates[pos].item()

    def _init_step_index(self, timestep) -> None:
        if self.begin_index is not None:
            self._step_index = self._begin_index
            return
        index = self._index_by_position(timestep)
        if index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            index = self.index_for_timestep(timestep)
        self._step_index = index

    def _remember_timesteps(self) -> None:
        """After set_timesteps: the host copy of the timesteps and, per position, the index diffusers'
        value lookup returns for the value there (first occurrence, or the second for a repeated value)."""
        ts = self.timesteps
        values = ts.detach().cpu().tolist()
        first: dict = {}
        second: dict = {}
        for p, v in enumerate(values):  # one pass (this runs after every set_timesteps)
            if v not in first:
                first[v] = p
            elif v not in second:
                second[v] = p
        self._timesteps_seen = ts
        self._lookup_by_position = [second.get(v, first[v]) for v in values]

    def _index_by_position(self, timestep):
        """The step index of an element of self.timesteps, from its storage position (no device read)."""
        ts = self.timesteps
        if not (isinstance(timestep, torch.Tensor) and timestep.dim() == 0 and isinstance(ts, torch.Tensor)
                and ts.dim() == 1 and timestep.device == ts.device and timestep.dtype == ts.dtype):
            return None
        if getattr(self, "_timesteps_seen", None) is not ts:
            self._remember_timesteps()
        if ts.numel() == 0 or timestep.untyped_storage().data_ptr() != ts.untyped_storage().data_ptr():
            return None
        stride = ts.stride(0)
        delta = timestep.storage_offset() - ts.storage_offset()
        if stride <= 0 or delta % stride or not 0 <= delta // stride < ts.shape[0]:
            return None
        return self._lookup_by_position[delta // stride]

    # --- host copies of the sigmas ---------------------------------------------------------------
    def _host_sigmas(self) -> list:
        """self.sigmas as Python floats (refreshed when the attribute is replaced)."""
        sig = self.sigmas
        if getattr(self, "_sigmas_seen", None) is not sig:
            values = sig.detach().cpu().tolist() if isinstance(sig, torch.Tensor) else [float(s) for s in sig]
            self._sigmas_seen, self._sigmas_list = sig, values
            self._coefficients = {}
        return self._sigmas_list

    # --- sigma spacings (diffusers' helpers, same names and signatures) --------------------------
    def _sigma_to_t(self, sigma, log_sigmas):
        """The (fractional) timestep of `sigma` by linear interpolation of log sigma."""
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, np.newaxis]
        low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = np.clip((low - log_sigma) / (low - high), 0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.reshape(sigma.shape)

    def _sigma_bounds(self, in_sigmas):
        sigma_min = getattr(self.config, "sigma_min", None)
        sigma_max = getattr(self.config, "sigma_max", None)
        sigma_min = sigma_min if sigma_min is not None else in_sigmas[-1].item()
        sigma_max = sigma_max if sigma_max is not None else in_sigmas[0].item()
        return sigma_min, sigma_max

    def _convert_to_karras(self, in_sigmas, num_inference_steps):
        """Karras et al. (2022) noise levels: uniform in sigma^(1/rho), rho = 7."""
        sigma_min, sigma_max = self._sigma_bounds(in_sigmas)
        rho = 7.0
        ramp = np.linspace(0, 1, num_inference_steps)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho

    def _convert_to_exponential(self, in_sigmas, num_inference_steps):
        """Noise levels uniform in log sigma."""
        sigma_min, sigma_max = self._sigma_bounds(in_sigmas)
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))

    def _convert_to_beta(self, in_sigmas, num_inference_steps, alpha: float = 0.6, beta: float = 0.6):
        """Noise levels at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024)."""
        import scipy.stats

        sigma_min, sigma_max = self._sigma_bounds(in_sigmas)
        ppfs = [scipy.stats.beta.ppf(t, alpha, beta) for t in 1 - np.linspace(0, 1, num_inference_steps)]
        return np.array([sigma_min + ppf * (sigma_max - sigma_min) for ppf in ppfs])

    def _check_sigma_options(self):
        if self.config.use_beta_sigmas:
            try:
                import scipy.stats  # noqa: F401
            except ImportError:
                raise ImportError("Make sure to install scipy if you want to use beta sigmas.") from None
        if sum([self.config.use_beta_sigmas, self.config.use_exponential_sigmas, self.config.use_karras_sigmas]) > 1:
            raise ValueError("Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, "
                             "`config.use_karras_sigmas` can be used.")

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def check_integer_timestep(timestep, cls_name: str, method: str = "step") -> None:
    """diffusers' Euler schedulers refuse step indices (ints) where a timestep belongs."""
    if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
        raise ValueError(
            "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to"
            f" `{cls_name}.{method}()` is not supported. Make sure to pass"
            " one of the `scheduler.timesteps` as a timestep.")


def common_dtype(model_output: torch.Tensor, sample: torch.Tensor):
    """(model_output, sample) in one dtype for the kernel: the two as given when they agree, else both in
    the promoted dtype (lossless: fp16/bf16 -> fp32), as diffusers' arithmetic would promote them."""
    if model_output.dtype == sample.dtype:
        return model_output, sample
    dtype = torch.promote_types(model_output.dtype, sample.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return model_output.to(dtype), sample.to(dtype)


def add_noise_sigma(scheduler, original_samples, noise, timesteps, alpha_sigma=None):
    """diffusers' add_noise of the sigma schedulers: x0 + sigma * noise (DPM: alpha_t x0 + sigma_t noise)."""
    sigmas = scheduler.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
    if original_samples.device.type == "mps" and torch.is_floating_point(timesteps):
        schedule_timesteps = scheduler.timesteps.to(original_samples.device, dtype=torch.float32)
        timesteps = timesteps.to(original_samples.device, dtype=torch.float32)
    else:
        schedule_timesteps = scheduler.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
    if scheduler.begin_index is None:
        indices = [scheduler.index_for_timestep(t, schedule_timesteps) for t in timesteps]
    elif scheduler.step_index is not None:
        indices = [scheduler.step_index] * timesteps.shape[0]
    else:
        indices = [scheduler.begin_index] * timesteps.shape[0]
    sigma = sigmas[indices].flatten()
    while sigma.dim() < original_samples.dim():
        sigma = sigma.unsqueeze(-1)
    if alpha_sigma is None:
        return original_samples + noise * sigma
    alpha_t, sigma_t = alpha_sigma(sigma)
    return alpha_t * original_samples + sigma_t * noise
