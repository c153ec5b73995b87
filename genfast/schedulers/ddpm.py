"""genfast.schedulers.DDPMScheduler: diffusers' DDPMScheduler with the step as one fused kernel."""
from __future__ import annotations

import numpy as np
import torch

from genfast.ops.diffusion import ddpm_step
from genfast.samplers.schedules import make_betas, make_timesteps
from genfast.schedulers._common import (KARRAS_COMPATIBLES, ConfigMixin, DDPMSchedulerOutput, SchedulerMixin,
                                        StreamState, check_step_inputs, device_lookup, host_timestep,
                                        is_device_timestep, randn_like_diffusers, register_to_config)
from genfast.schedulers._sigmas import ScheduleNotImplementedError, common_dtype
from genfast.schedulers._tables import (DeviceTables, TableMethods,
                                        positive_alpha, prediction_options, threshold_sample)

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
DDPM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")


class DDPMScheduler(TableMethods, SchedulerMixin, ConfigMixin):
    """Drop-in for diffusers.DDPMScheduler (same arguments, defaults, config, outputs).

    The ancestral update runs in `genfast.ops.ddpm_step` (one kernel). With a `generator` the noise is
    drawn exactly as diffusers draws it (only when t > 0), so the result equals diffusers'; without one
    it comes from genfast's stream (seed drawn from torch's default generator after each
    set_timesteps, offset advanced per step). `fixed_large_log` uses the intended std sqrt(beta_t)
    where diffusers computes sqrt(log(beta_t)) = NaN.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if trained_betas is None and beta_schedule not in DDPM_BETA_SCHEDULES:
            raise ScheduleNotImplementedError(f"beta_schedule: {beta_schedule} is not implemented for {self.__class__}")
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type
        self._alphas_host = self.alphas_cumprod.tolist()
        self._prev_host: dict[int, int] | None = None  # timestep -> previous timestep (None: t - 1)
        self._index_host: dict[int, int] | None = None  # timestep -> its index in self.timesteps
        self._device_tables = DeviceTables()
        self._stream = StreamState()

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None):
        T = len(self._alphas_host)
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("timesteps: can only pass one of `num_inference_steps` or `timesteps`")
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            for i in range(1, len(ts)):
                if ts[i] >= ts[i - 1]:
                    raise ValueError("timesteps: custom timesteps must be in descending order")
            if not ts or ts[0] >= T or ts[-1] < 0:
                raise ValueError(f"timesteps: custom timesteps must lie in [0, {T}), got {ts}")
            ts = np.array(ts, dtype=np.int64)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("num_inference_steps: pass the number of inference steps or `timesteps`")
            ts = make_timesteps(num_inference_steps, T, self.config.timestep_spacing, self.config.steps_offset)
            self.num_inference_steps = int(num_inference_steps)
            self.custom_timesteps = False
        self._set_host_schedule(ts.tolist())
        self.timesteps = torch.from_numpy(ts).to(device)
        self._device_tables.clear()
        self._stream.reset()

    def previous_timestep(self, timestep) -> int | torch.Tensor:
        """The timestep after `timestep` in the inference schedule: like diffusers, an element of
        self.timesteps (a tensor on its device; tensor(-1) after the last) once set_timesteps ran, else
        timestep - 1. Found on the host: no device read."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return timestep - 1
        t = host_timestep(timestep, len(self._alphas_host))
        index = self._index_host.get(t) if self._index_host else None
        if index is None:
            raise ValueError(f"timestep: {t} is not one of the scheduler's timesteps (set by set_timesteps): "
                             f"{list(self._prev_host or {})}")
        if index == self.timesteps.shape[0] - 1:
            return torch.tensor(-1)
        return self.timesteps[index + 1]

    def _previous_host(self, t: int) -> int:
        if self._prev_host is None:
            return t - 1
        if t not in self._prev_host:
            raise ValueError(f"timestep: {t} is not one of the scheduler's timesteps (set by set_timesteps): "
                             f"{list(self._prev_host)}")
        return self._prev_host[t]

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        """diffusers' DDPM variance at timestep t (a tensor): the clamped posterior variance, or per
        variance_type its log / beta_t / the model's prediction (learned) / the interpolated log
        (learned_range). fixed_large_log gives log(beta_t), whose square root the fused step does not
        take (see the class docstring)."""
        prev_t = self._previous_host(host_timestep(t, len(self._alphas_host)))
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        if variance_type is None:
            variance_type = self.config.variance_type
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if variance_type == "fixed_large":
            return current_beta_t
        if variance_type == "fixed_large_log":
            return torch.log(current_beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        return variance  # fixed_small, and any other string (diffusers passes unknown ones through)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding of a predicted x0 (see genfast.schedulers._tables.threshold_sample)."""
        return threshold_sample(self.config, sample)

    def _adopt_state(self):
        """After from_diffusers copied timesteps, num_inference_steps and custom_timesteps in."""
        if self.custom_timesteps or self.num_inference_steps:
            self._set_host_schedule(self.timesteps.detach().cpu().tolist())
        self._device_tables.clear()
        self._stream.reset()

    def _set_host_schedule(self, host: list) -> None:
        self._prev_host = {t: (host[i + 1] if i + 1 < len(host) else -1) for i, t in enumerate(host)}
        self._index_host = {t: i for i, t in enumerate(host)}

    def _build_device_tables(self):
        """alpha_prod_t and alpha_prod_t_prev indexed by the timestep's value; NaN where a timestep is
        not in the schedule (no host check is possible for a device timestep)."""
        ac = self.alphas_cumprod
        T = ac.numel()
        if self._prev_host is None:
            prev = torch.cat([torch.ones(1), ac[:-1]])
        else:
            prev = torch.full((T,), float("nan"))
            for t, p in self._prev_host.items():
                prev[t] = self._alphas_host[p] if p >= 0 else 1.0
        return ac, prev

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """x_t -> x_{t_prev}: diffusers' DDPMScheduler.step, computed by one fused kernel."""
        check_step_inputs(model_output, sample, same_dtype=False)
        variance_type = self.variance_type if self.variance_type in VARIANCE_TYPES else "fixed_small"
        learned = variance_type in ("learned", "learned_range")
        if learned and (model_output.dim() < 2 or model_output.shape[1] != 2 * sample.shape[1]):
            raise ValueError(f"model_output: variance_type={variance_type!r} needs 2 * {sample.shape[1]} channels "
                             f"(prediction, then variance), got shape {tuple(model_output.shape)}")
        if is_device_timestep(timestep):
            ac, prev = self._device_tables.get(sample.device, self._build_device_tables)
            alpha_t, alpha_prev = device_lookup(ac, timestep), device_lookup(prev, timestep)
            # diffusers adds noise iff t > 0, which a device timestep cannot tell without a sync: the op
            # adds it where alpha_prod_t_prev < 1 (the same except at a last step with t > 0, which only
            # leading spacing with steps_offset or trailing spacing produce); a generator draws always.
            add_noise = None
            draws = True
        else:
            t = host_timestep(timestep, len(self._alphas_host))
            p = self._previous_host(t)
            alpha_t = positive_alpha(self._alphas_host[t])
            alpha_prev = self._alphas_host[p] if p >= 0 else 1.0
            add_noise = draws = t > 0
        noise, seed, offset = None, None, 0
        if draws:
            if generator is not None:
                noise = randn_like_diffusers(sample.shape, generator, model_output.device, model_output.dtype)
            else:
                seed, offset = self._stream.next()
        model_output, sample = common_dtype(model_output, sample)
        prev_sample, pred_original_sample = ddpm_step(
            sample, model_output, alpha_t, alpha_prev, variance_type=variance_type, noise=noise, seed=seed,
            offset=offset, add_noise=add_noise, return_pred_original=True, **prediction_options(self.config))
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

