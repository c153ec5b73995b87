"""genfast.schedulers.DDIMScheduler: diffusers' DDIMScheduler with the step as one fused kernel."""
from __future__ import annotations

import numpy as np
import torch

from genfast.ops.diffusion import ddim_step
from genfast.samplers.schedules import make_betas, make_timesteps
from genfast.schedulers._common import (KARRAS_COMPATIBLES, ConfigMixin, DDIMSchedulerOutput, SchedulerMixin,
                                        StreamState, check_eta, check_step_inputs, device_lookup, host_timestep,
                                        is_device_timestep, randn_like_diffusers, register_to_config)
from genfast.schedulers._sigmas import ScheduleNotImplementedError, common_dtype
from genfast.schedulers._tables import (DeviceTables, TableMethods,
                                        positive_alpha, prediction_options, threshold_sample)

DDIM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


class DDIMScheduler(TableMethods, SchedulerMixin, ConfigMixin):
    """Drop-in for diffusers.DDIMScheduler (same arguments, defaults, config, outputs).

    The update runs in `genfast.ops.ddim_step` (one kernel). With a `generator` (or `variance_noise`)
    the noise is drawn exactly as diffusers draws it, so the result equals diffusers'; without one
    (and eta > 0) it comes from genfast's stream: seed drawn from torch's default generator after
    each set_timesteps, offset advanced per step. Beyond diffusers: beta_schedule may also be
    "sigmoid" or "laplace".
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
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        if trained_betas is None and beta_schedule not in DDIM_BETA_SCHEDULES:
            raise ScheduleNotImplementedError(f"beta_schedule: {beta_schedule} is not implemented for {self.__class__}")
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self._alphas_host = self.alphas_cumprod.tolist()
        self._final_host = float(self.final_alpha_cumprod)
        self._device_tables = DeviceTables()
        self._stream = StreamState()

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """The DDIM posterior variance (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev) (a tensor)."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding of a predicted x0 (see genfast.schedulers._tables.threshold_sample)."""
        return threshold_sample(self.config, sample)

    def _adopt_state(self):
        """After from_diffusers copied timesteps and num_inference_steps in: drop derived tables."""
        self._device_tables.clear()
        self._stream.reset()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        T = len(self._alphas_host)
        ts = make_timesteps(num_inference_steps, T, self.config.timestep_spacing, self.config.steps_offset)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._device_tables.clear()
        self._stream.reset()

    def _alphas(self, timestep, sample: torch.Tensor):
        """(alpha_prod_t, alpha_prod_t_prev): host floats, or 0-dim device tensors for a device timestep."""
        T = len(self._alphas_host)
        ratio = T // self.num_inference_steps
        if is_device_timestep(timestep):
            tables = self._device_tables.get(sample.device, lambda: self._build_device_tables(ratio))
            return device_lookup(tables[0], timestep), device_lookup(tables[1], timestep)
        t = host_timestep(timestep, T)
        prev = t - ratio
        return positive_alpha(self._alphas_host[t]), (self._alphas_host[prev] if prev >= 0 else self._final_host)

    def _build_device_tables(self, ratio: int):
        ac = self.alphas_cumprod
        prev = torch.cat([torch.full((min(ratio, ac.numel()),), self._final_host), ac[: max(ac.numel() - ratio, 0)]])
        return ac, prev  # alpha_prod_t and alpha_prod_t_prev, indexed by the timestep's value

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """x_t -> x_{t_prev}: diffusers' DDIMScheduler.step, computed by one fused kernel."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        check_step_inputs(model_output, sample, same_dtype=False)
        eta = check_eta(eta)
        alpha_t, alpha_prev = self._alphas(timestep, sample)
        noise, seed, offset = None, None, 0
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("generator: cannot pass both generator and variance_noise; leave one of them None")
            if variance_noise is not None:
                if not isinstance(variance_noise, torch.Tensor) or variance_noise.shape != model_output.shape:
                    raise ValueError(f"variance_noise: expected a tensor of shape {tuple(model_output.shape)}")
                noise = variance_noise
            elif generator is not None:
                noise = randn_like_diffusers(model_output.shape, generator, model_output.device, model_output.dtype)
            else:
                seed, offset = self._stream.next()
        config = self.config
        model_output, sample = common_dtype(model_output, sample)
        prev_sample, pred_original_sample = ddim_step(
            sample, model_output, alpha_t, alpha_prev, eta=eta, use_clipped_model_output=bool(use_clipped_model_output),
            noise=noise, seed=seed, offset=offset, return_pred_original=True, **prediction_options(config))
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

