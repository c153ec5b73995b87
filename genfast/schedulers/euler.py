"""genfast.schedulers.EulerDiscreteScheduler and EulerAncestralDiscreteScheduler: diffusers' Euler samplers
(Karras et al. 2022, Algorithm 2; k-diffusion's ancestral variant) with the step as one fused kernel."""
from __future__ import annotations

import numpy as np
import torch

from genfast.ops.sampler_steps import euler_ancestral_coefficients, euler_coefficients, sampler_step
from genfast.schedulers._common import (KARRAS_COMPATIBLES, ConfigMixin, SchedulerMixin, StreamState,
                                        randn_like_diffusers, register_to_config)
from genfast.schedulers._outputs import EulerAncestralDiscreteSchedulerOutput, EulerDiscreteSchedulerOutput
from genfast.schedulers._sigmas import (SigmaMethods, add_noise_sigma, check_integer_timestep, common_dtype,
                                        diffusers_betas, scheduler_logger)

_EULER_LOGGER = scheduler_logger("diffusers.schedulers.scheduling_euler_discrete")
_ANCESTRAL_LOGGER = scheduler_logger("diffusers.schedulers.scheduling_euler_ancestral_discrete")
_SCALE_WARNING = ("The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                  "See `StableDiffusionPipeline` for a usage example.")


def _spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int):
    """Float32 inference timesteps of the Euler schedulers (diffusers' three spacings)."""
    T, n = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
        return ts + steps_offset
    if spacing == "trailing":
        ratio = T / n
        return (np.arange(T, 0, -ratio)).round().copy().astype(np.float32) - 1
    raise ValueError(f"{spacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or "
                     f"'trailing'.")


class _EulerBase(SigmaMethods):
    def _noise(self, model_output, generator, noisy: bool):
        """(noise tensor, seed, offset) for a step: a generator draws as diffusers draws (always when
        diffusers would); without one, genfast's stream at the next offset when the step has noise."""
        if generator is not None:
            return randn_like_diffusers(model_output.shape, generator, model_output.device, model_output.dtype), None, 0
        if noisy:
            seed, offset = self._stream.next()
            return None, seed, offset
        return None, None, 0

    def _run(self, model_output, sample, coefficients, noise, seed, offset, want_x0):
        model, x = common_dtype(model_output, sample)
        x0_dtype = torch.float32 if model.dtype != torch.float64 else torch.float64
        prev, x0 = sampler_step(x, model, coefficients, noise=noise, seed=seed, offset=offset, aux_dtype=x0_dtype,
                                want_aux=want_x0)
        if prev.dtype != model_output.dtype:
            prev = prev.to(model_output.dtype)
        return prev, x0

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """sample / sqrt(sigma^2 + 1): the model sees unit-variance input."""
        if self.step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        # the divisors (0-dim, sigmas' dtype) for every step at once, per sigmas tensor: three scalar
        # tensor ops per step were a third of a small step's host time. Same bits as diffusers' per-step
        # (sigma ** 2 + 1) ** 0.5: squaring, adding 1 and sqrt round the same vectorized or not.
        sigmas = self.sigmas
        cache = self.__dict__.get("_input_scales")
        if cache is None or cache[0] is not sigmas:
            cache = self._input_scales = (sigmas, ((sigmas ** 2 + 1) ** 0.5).unbind(0))
        return sample / cache[1][self.step_index]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return add_noise_sigma(self, original_samples, noise, timesteps)


class EulerDiscreteScheduler(_EulerBase, SchedulerMixin, ConfigMixin):
    """Drop-in for diffusers.EulerDiscreteScheduler (same arguments, defaults, config, state, outputs).

    `step` runs genfast.ops.sampler_step (one kernel) with coefficients computed once per step index.
    With s_churn > 0 the churn noise comes from `generator` exactly as diffusers draws it, or from
    genfast's stream (seed drawn from torch's default generator after set_timesteps, offset per step).
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
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        self._check_sigma_options()
        self.betas = diffusers_betas(type(self), num_train_timesteps, beta_start, beta_end, beta_schedule,
                                     trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2 ** -24  # a finite last sigma (zero terminal SNR would make it infinite)
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()).to(torch.float32)
        self.num_inference_steps = None
        if timestep_type == "continuous" and prediction_type == "v_prediction":
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas])
        else:
            self.timesteps = timesteps
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)]).to("cpu")
        self.is_scale_input_called = False
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas
        self._step_index = None
        self._begin_index = None
        self._stream = StreamState()

    @property
    def init_noise_sigma(self):
        """The standard deviation of the initial noise."""
        max_sigma = max(self.sigmas) if isinstance(self.sigmas, list) else self.sigmas.max()
        if self.config.timestep_spacing in ["linspace", "trailing"]:
            return max_sigma
        return (max_sigma ** 2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device = None,
                      timesteps: list[int] | None = None, sigmas: list[float] | None = None):
        config = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` should be set.")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas.")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if timesteps is not None and getattr(config, flag):
                raise ValueError(f"Cannot set `timesteps` with `config.{flag} = True`.")
        continuous_v = config.timestep_type == "continuous" and config.prediction_type == "v_prediction"
        if timesteps is not None and continuous_v:
            raise ValueError("Cannot set `timesteps` with `config.timestep_type = 'continuous'` and "
                             "`config.prediction_type = 'v_prediction'`.")
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps

        train_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy().copy()
        log_sigmas = np.log(train_sigmas)
        if sigmas is not None:
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas[:-1]])
        else:
            if timesteps is not None:
                timesteps = np.array(timesteps).astype(np.float32)
            else:
                timesteps = _spaced_timesteps(config.timestep_spacing, config.num_train_timesteps,
                                              num_inference_steps, config.steps_offset)
            if config.interpolation_type == "linear":
                sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
            elif config.interpolation_type == "log_linear":
                sigmas = torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]),
                                        num_inference_steps + 1).exp().numpy()
            else:
                raise ValueError(f"{config.interpolation_type} is not implemented. Please specify interpolation_type "
                                 "to either 'linear' or 'log_linear'")
            convert = None
            if config.use_karras_sigmas:
                convert = self._convert_to_karras
            elif config.use_exponential_sigmas:
                convert = self._convert_to_exponential
            elif config.use_beta_sigmas:
                convert = self._convert_to_beta
            if convert is not None:
                sigmas = convert(in_sigmas=sigmas, num_inference_steps=self.num_inference_steps)
                timesteps = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
            if config.final_sigmas_type == "sigma_min":
                sigma_last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
            elif config.final_sigmas_type == "zero":
                sigma_last = 0
            else:
                raise ValueError(f"`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got "
                                 f"{config.final_sigmas_type}")
            sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        if continuous_v:
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None
        self.sigmas = sigmas.to("cpu")
        self._stream.reset()
        self._remember_timesteps()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> EulerDiscreteSchedulerOutput | tuple:
        """One Euler step of the probability-flow ODE (with optional churn), as one fused kernel."""
        check_integer_timestep(timestep, "EulerDiscreteScheduler")
        if not self.is_scale_input_called:
            _EULER_LOGGER.warning(_SCALE_WARNING)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = self._host_sigmas()
        i = self._step_index
        sigma = sigmas[i]
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        prediction_type = self.config.prediction_type
        key = ("euler", i, gamma, s_noise, prediction_type)
        co = self._coefficients.get(key)
        if co is None:
            if prediction_type not in ("epsilon", "v_prediction", "sample", "original_sample"):
                raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon`, or "
                                 "`v_prediction`")
            co = self._coefficients[key] = euler_coefficients(sigma, sigmas[i + 1], prediction_type, gamma, s_noise)
        noise, seed, offset = (None, None, 0)
        if gamma > 0:
            noise, seed, offset = self._noise(model_output, generator, True)
        x_from_model = prediction_type in ("sample", "original_sample")
        prev, x0 = self._run(model_output, sample, co, noise, seed, offset, want_x0=not x_from_model)
        if x_from_model:
            x0 = model_output
        self._step_index += 1
        if not return_dict:
            return prev, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) sample at the steps of `timesteps`."""
        check_integer_timestep(timesteps, "EulerDiscreteScheduler", "get_velocity")
        if sample.device.type == "mps" and torch.is_floating_point(timesteps):
            schedule_timesteps = self.timesteps.to(sample.device, dtype=torch.float32)
            timesteps = timesteps.to(sample.device, dtype=torch.float32)
        else:
            schedule_timesteps = self.timesteps.to(sample.device)
            timesteps = timesteps.to(sample.device)
        indices = [self.index_for_timestep(t, schedule_timesteps) for t in timesteps]
        alphas_cumprod = self.alphas_cumprod.to(sample)
        sqrt_a = (alphas_cumprod[indices] ** 0.5).flatten()
        sqrt_1ma = ((1 - alphas_cumprod[indices]) ** 0.5).flatten()
        while sqrt_a.dim() < sample.dim():
            sqrt_a, sqrt_1ma = sqrt_a.unsqueeze(-1), sqrt_1ma.unsqueeze(-1)
        return sqrt_a * noise - sqrt_1ma * sample


class EulerAncestralDiscreteScheduler(_EulerBase, SchedulerMixin, ConfigMixin):
    """Drop-in for diffusers.EulerAncestralDiscreteScheduler (same arguments, defaults, config, state,
    outputs). `step` is one fused kernel; its noise comes from `generator` exactly as diffusers draws it,
    or from genfast's stream (seed drawn from torch's default generator after set_timesteps, offset per
    step; the last step, whose noise weight is 0, draws none)."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self.betas = diffusers_betas(type(self), num_train_timesteps, beta_start, beta_end, beta_schedule,
                                     trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2 ** -24
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy().copy()
        self.sigmas = torch.from_numpy(np.concatenate([sigmas[::-1], [0.0]]).astype(np.float32)).to("cpu")
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy())
        self.is_scale_input_called = False
        self._step_index = None
        self._begin_index = None
        self._stream = StreamState()

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        if self.config.timestep_spacing in ["linspace", "trailing"]:
            return self.sigmas.max()
        return (self.sigmas.max() ** 2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        config = self.config
        self.num_inference_steps = num_inference_steps
        timesteps = _spaced_timesteps(config.timestep_spacing, config.num_train_timesteps, num_inference_steps,
                                      config.steps_offset)
        train_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy().copy()
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._step_index = None
        self._begin_index = None
        self.sigmas = torch.from_numpy(sigmas).to("cpu")
        self._stream.reset()
        self._remember_timesteps()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple:
        """One ancestral Euler step of the reverse SDE, as one fused kernel."""
        check_integer_timestep(timestep, "EulerDiscreteScheduler")
        if not self.is_scale_input_called:
            _ANCESTRAL_LOGGER.warning(_SCALE_WARNING)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = self._host_sigmas()
        i = self._step_index
        prediction_type = self.config.prediction_type
        key = ("ancestral", i, prediction_type)
        co = self._coefficients.get(key)
        if co is None:
            if prediction_type == "sample":
                raise NotImplementedError("prediction_type not implemented yet: sample")
            if prediction_type not in ("epsilon", "v_prediction"):
                raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon`, or "
                                 "`v_prediction`")
            co = self._coefficients[key] = euler_ancestral_coefficients(sigmas[i], sigmas[i + 1], prediction_type)
        noise, seed, offset = self._noise(model_output, generator, co.noisy)
        prev, x0 = self._run(model_output, sample, co, noise, seed, offset, want_x0=True)
        self._step_index += 1
        if not return_dict:
            return prev, x0
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
