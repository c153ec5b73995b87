"""genfast.schedulers.DPMSolverMultistepScheduler: diffusers' DPM-Solver / DPM-Solver++ multistep sampler
(Lu et al. 2022) with convert_model_output and the multistep update fused into one kernel per step."""
from __future__ import annotations

import numpy as np
import torch

from genfast.ops.sampler_steps import dpm_solver_coefficients, sampler_step
from genfast.schedulers._common import (KARRAS_COMPATIBLES, ConfigMixin, SchedulerMixin, StreamState,
                                        randn_like_diffusers, register_to_config)
from genfast.schedulers._outputs import SchedulerOutput
from genfast.schedulers._sigmas import (ScheduleNotImplementedError, SigmaMethods, add_noise_sigma, common_dtype,
                                        deprecated_argument, diffusers_betas)

_DEPRECATED = "has no effect as model output conversion is now handled via an internal counter `self.step_index`"


class DPMSolverMultistepScheduler(SigmaMethods, SchedulerMixin, ConfigMixin):
    """Drop-in for diffusers.DPMSolverMultistepScheduler (same arguments, defaults, config, state:
    step_index, begin_index, model_outputs, lower_order_nums; same outputs).

    `step` is one kernel: it converts the model output (x0 for dpmsolver++, epsilon for dpmsolver),
    thresholds it if asked, and applies the first-, second- or third-order update reading the previous
    converted outputs in the same pass; the coefficients are computed once per (step index, order).
    SDE variants take their noise from `generator` / `variance_noise` exactly as diffusers does, or
    from genfast's stream (seed drawn from torch's default generator after set_timesteps, offset per step).
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _missing_timestep_index = "last"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._check_sigma_options()
        if algorithm_type in ["dpmsolver", "sde-dpmsolver"]:
            deprecated_argument("algorithm_types dpmsolver and sde-dpmsolver",
                                f"algorithm_type {algorithm_type} is deprecated and will be removed in a future "
                                "version. Choose from `dpmsolver++` or `sde-dpmsolver++` instead")
        self.betas = diffusers_betas(type(self), num_train_timesteps, beta_start, beta_end, beta_schedule,
                                     trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2 ** -24
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        if algorithm_type not in ["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"]:
            if algorithm_type == "deis":
                self.register_to_config(algorithm_type="dpmsolver++")
            else:
                raise ScheduleNotImplementedError(f"algorithm_type: {algorithm_type} is not implemented for "
                                                  f"{self.__class__}")
        if solver_type not in ["midpoint", "heun"]:
            if solver_type in ["logrho", "bh1", "bh2"]:
                self.register_to_config(solver_type="midpoint")
            else:
                raise ScheduleNotImplementedError(f"solver_type: {solver_type} is not implemented for "
                                                  f"{self.__class__}")
        if algorithm_type not in ["dpmsolver++", "sde-dpmsolver++"] and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                             f"{algorithm_type}. Please choose `sigma_min` instead.")
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy())
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self.sigmas = self.sigmas.to("cpu")
        self._stream = StreamState()

    # --- schedule ----------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device = None,
                      mu: float | None = None, timesteps: list[int] | None = None):
        config = self.config
        if mu is not None:
            assert config.use_dynamic_shifting and config.time_shift_type == "exponential"
            self.config.flow_shift = np.exp(mu)
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        for flag, what in (("use_karras_sigmas", "Cannot use"), ("use_lu_lambdas", "Cannot use"),
                           ("use_exponential_sigmas", "Cannot set"), ("use_beta_sigmas", "Cannot set")):
            if timesteps is not None and getattr(config, flag):
                raise ValueError(f"{what} `timesteps` with `config.{flag} = True`")
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.int64)
        else:
            clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped)
            last_timestep = ((config.num_train_timesteps - clipped_idx).numpy()).item()
            n = num_inference_steps
            if config.timestep_spacing == "linspace":
                timesteps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
            elif config.timestep_spacing == "leading":
                ratio = last_timestep // (n + 1)
                timesteps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
                timesteps += config.steps_offset
            elif config.timestep_spacing == "trailing":
                ratio = config.num_train_timesteps / n
                timesteps = np.arange(last_timestep, 0, -ratio).round().copy().astype(np.int64) - 1
            else:
                raise ValueError(f"{config.timestep_spacing} is not supported. Please make sure to choose one of "
                                 "'linspace', 'leading' or 'trailing'.")
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy().copy()
        log_sigmas = np.log(sigmas)
        if config.use_karras_sigmas:
            sigmas = self._convert_to_karras(in_sigmas=np.flip(sigmas).copy(), num_inference_steps=num_inference_steps)
            timesteps = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
            if config.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif config.use_lu_lambdas:
            lambdas = self._convert_to_lu(in_lambdas=np.flip(log_sigmas.copy()), num_inference_steps=num_inference_steps)
            sigmas = np.exp(lambdas)
            timesteps = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
            if config.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif config.use_exponential_sigmas:
            sigmas = self._convert_to_exponential(in_sigmas=np.flip(sigmas).copy(),
                                                  num_inference_steps=num_inference_steps)
            timesteps = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
        elif config.use_beta_sigmas:
            sigmas = self._convert_to_beta(in_sigmas=np.flip(sigmas).copy(), num_inference_steps=num_inference_steps)
            timesteps = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
        elif config.use_flow_sigmas:
            alphas = np.linspace(1, 1 / config.num_train_timesteps, num_inference_steps + 1)
            flow = 1.0 - alphas
            shift = config.flow_shift
            sigmas = np.flip(shift * flow / (1 + (shift - 1) * flow))[:-1].copy()
            timesteps = (sigmas * config.num_train_timesteps).copy()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        if config.final_sigmas_type == "sigma_min":
            sigma_last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        elif config.final_sigmas_type == "zero":
            sigma_last = 0
        else:
            raise ValueError(f"`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got "
                             f"{config.final_sigmas_type}")
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self.sigmas = self.sigmas.to("cpu")
        self._stream.reset()
        self._remember_timesteps()

    def _convert_to_lu(self, in_lambdas, num_inference_steps):
        """Lu et al.'s schedule: uniform in log-SNR lambda."""
        lambda_min, lambda_max = in_lambdas[-1].item(), in_lambdas[0].item()
        rho = 1.0
        ramp = np.linspace(0, 1, num_inference_steps)
        lo, hi = lambda_min ** (1 / rho), lambda_max ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho

    def _sigma_to_alpha_sigma_t(self, sigma):
        """(alpha_t, sigma_t) of a Karras sigma (flow sigmas: (1 - sigma, sigma))."""
        if self.config.use_flow_sigmas:
            return 1 - sigma, sigma
        alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022) of a predicted x0, per batch sample."""
        dtype = sample.dtype
        batch, channels, *rest = sample.shape
        if dtype not in (torch.float32, torch.float64):
            sample = sample.float()
        flat = sample.reshape(batch, channels * int(np.prod(rest)))
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.config.sample_max_value).unsqueeze(1)
        flat = torch.clamp(flat, -s, s) / s
        return flat.reshape(batch, channels, *rest).to(dtype)

    # --- the step --------------------------------------------------------------------------------
    def _order_now(self) -> int:
        config = self.config
        n = len(self.timesteps)
        i = self._step_index
        lower_order_final = (i == n - 1) and (config.euler_at_final or (config.lower_order_final and n < 15)
                                              or config.final_sigmas_type == "zero")
        lower_order_second = (i == n - 2) and config.lower_order_final and n < 15
        if config.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            return 1
        if config.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            return 2
        return 3

    def _step_coefficients(self, order: int):
        config = self.config
        sigmas = self._host_sigmas()
        i = self._step_index
        key = (i, order, config.algorithm_type, config.solver_type, config.prediction_type, config.use_flow_sigmas)
        co = self._coefficients.get(key)
        if co is None:
            if config.prediction_type not in ("epsilon", "sample", "v_prediction", "flow_prediction") or (
                    config.prediction_type == "flow_prediction"
                    and config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++")):
                raise ValueError(f"prediction_type given as {config.prediction_type} must be one of `epsilon`, "
                                 "`sample`, `v_prediction`, or `flow_prediction` for the DPMSolverMultistepScheduler.")
            levels = [sigmas[i + 1]] + [sigmas[i - k] for k in range(order)]
            co = self._coefficients[key] = dpm_solver_coefficients(
                levels, config.algorithm_type, config.solver_type, config.prediction_type, config.use_flow_sigmas)
        return co

    def _thresholding(self):
        config = self.config
        return (float(config.dynamic_thresholding_ratio), float(config.sample_max_value)) if config.thresholding \
            else None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One multistep DPM-Solver step: conversion, thresholding and update in one fused kernel."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if self.step_index is None:
            self._init_step_index(timestep)
        order = self._order_now()
        co = self._step_coefficients(order)
        noise, seed, offset = None, None, 0
        if self.config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            if variance_noise is not None:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)
            elif generator is not None:
                noise = randn_like_diffusers(model_output.shape, generator, model_output.device, torch.float32)
            elif co.noisy:
                seed, offset = self._stream.next()
        model, x = common_dtype(model_output, sample)
        outputs = self.model_outputs
        history = [outputs[-1 - k] for k in range(order - 1)]
        history = [h if h.dtype == x.dtype else h.to(x.dtype) for h in history]
        prev, converted = sampler_step(x, model, co, history=history, thresholding=self._thresholding(), noise=noise,
                                       seed=seed, offset=offset)
        # diffusers' dtypes: the converted output is the model output's, promoted with the sample's where the
        # conversion involves the sample; prev_sample is cast to the converted output's dtype
        out_dtype = model_output.dtype
        if model_output.dtype != sample.dtype and (co.conv_x != 0.0 or (
                self.config.thresholding and (co.to_x0_x != 0.0 or co.from_x0_x != 0.0))):
            out_dtype = torch.promote_types(model_output.dtype, sample.dtype)
        if converted.dtype != out_dtype:
            converted = converted.to(out_dtype)
        for k in range(self.config.solver_order - 1):
            outputs[k] = outputs[k + 1]
        outputs[-1] = converted
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        if prev.dtype != out_dtype:
            prev = prev.to(out_dtype)
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    # --- diffusers' unfused helpers, same signatures (pipelines and tests call some of them) --------
    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """The model output as the solver's quantity: x0 (dpmsolver++) or epsilon (dpmsolver)."""
        timestep = args[0] if len(args) > 0 else kwargs.pop("timestep", None)
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        if timestep is not None:
            deprecated_argument("timesteps", f"Passing `timesteps` is deprecated and {_DEPRECATED}")
        config = self.config
        co = self._step_coefficients(1)  # the conversion depends on the current sigma only
        data = config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++")
        if config.variance_type in ["learned", "learned_range"] and config.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        converted = _linear(co.conv_x, sample, co.conv_m, model_output)
        if config.thresholding:
            if data:
                converted = self._threshold_sample(converted)
            else:
                x0 = self._threshold_sample(_linear(co.to_x0_x, sample, co.to_x0_c, converted))
                converted = _linear(co.from_x0_x, sample, co.from_x0_c, x0)
        return converted

    def _update(self, order: int, model_outputs, args, kwargs, sample, noise):
        names = ("timestep", "prev_timestep") if order == 1 else ("timestep_list", "prev_timestep")
        for k, name in enumerate(names):
            value = args[k] if len(args) > k else kwargs.pop(name, None)
            if value is not None:
                deprecated_argument(name, f"Passing `{name}` is deprecated and {_DEPRECATED}")
        if sample is None:
            if len(args) > 2:
                sample = args[2]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        if self.config.algorithm_type.startswith("sde") and noise is None:
            raise AssertionError("noise: the SDE variants need a noise tensor")
        co = self._step_coefficients(order)
        m = list(model_outputs)
        out = co.c_x * sample + co.c_0 * m[-1]
        if order >= 2:
            out = out + co.c_1 * (m[-1] - m[-2])
        if order >= 3:
            out = out + co.c_2 * (m[-2] - m[-3])
        if co.c_noise != 0.0 or self.config.algorithm_type.startswith("sde"):
            out = out + co.c_noise * noise
        return out

    def dpm_solver_first_order_update(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                                      noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """One first-order step (DDIM in the DPM-Solver view) from the converted model output."""
        return self._update(1, [model_output], args, kwargs, sample, noise)

    def multistep_dpm_solver_second_order_update(self, model_output_list: list[torch.Tensor], *args,
                                                 sample: torch.Tensor | None = None,
                                                 noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """One second-order multistep update from the last two converted model outputs."""
        return self._update(2, model_output_list, args, kwargs, sample, noise)

    def multistep_dpm_solver_third_order_update(self, model_output_list: list[torch.Tensor], *args,
                                                sample: torch.Tensor | None = None,
                                                noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """One third-order multistep update from the last three converted model outputs."""
        return self._update(3, model_output_list, args, kwargs, sample, noise)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        return add_noise_sigma(self, original_samples, noise, timesteps, self._sigma_to_alpha_sigma_t)


def _linear(a: float, x: torch.Tensor, b: float, y: torch.Tensor) -> torch.Tensor:
    if a == 0.0:
        return b * y if b != 1.0 else y
    return a * x + b * y

