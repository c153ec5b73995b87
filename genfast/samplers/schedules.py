"""Noise schedules and timestep spacings of DDPM/DDIM, matching diffusers 0.42 bit for bit.

`make_betas` builds the training betas (linear, scaled_linear, squaredcos_cap_v2, laplace, sigmoid,
trained betas, optionally rescaled to zero terminal SNR), `make_timesteps` the inference timesteps
(leading, trailing, linspace; steps_offset). `NoiseSchedule` keeps alphas_cumprod and builds, once per
number of inference steps and device, the per-step coefficient table (`StepTable`) that the samplers
and schedulers hand to the fused step ops: alpha_prod_t, alpha_prod_t_prev and whether the step adds
noise, both as host floats (eager calls, no device read) and as device tensors (lookups by a device
timestep, graph capture).

Two rules for "the previous timestep" exist, as in diffusers, and each sampler keeps its own:
- DDIM: prev = t - num_train_timesteps // num_inference_steps, whatever the spacing; below 0 it takes
  `final_alpha_cumprod` (1.0 with set_alpha_to_one, else alphas_cumprod[0]). Noise whenever eta > 0.
- DDPM: prev = the next timestep of the inference list (-1 after the last: alpha 1.0). Noise when t > 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999,
                        alpha_transform_type: str = "cosine") -> torch.Tensor:
    """Betas discretizing a continuous alpha_bar(t) on [0, 1] (Nichol & Dhariwal's cosine schedule by
    default), each capped at max_beta. Computed in float64 Python, returned as float32 (as diffusers)."""
    if alpha_transform_type == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif alpha_transform_type == "laplace":
        def alpha_bar(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    elif alpha_transform_type == "exp":
        def alpha_bar(t):
            return math.exp(t * -12.0)
    else:
        raise ValueError(f"alpha_transform_type: expected 'cosine', 'laplace' or 'exp', got {alpha_transform_type!r}")
    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alphas_cumprod) so the last one is 0 (zero
    terminal SNR) and the first is unchanged, then recover the betas."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sqrt_ac = alphas_cumprod.sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac -= last
    sqrt_ac *= first / (first - last)
    ac = sqrt_ac ** 2
    alphas = torch.cat([ac[0:1], ac[1:] / ac[:-1]])
    return 1 - alphas


def make_betas(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
               beta_schedule: str = "linear", trained_betas=None, rescale_betas_zero_snr: bool = False) -> torch.Tensor:
    """Training betas, float32 on the CPU, as diffusers' DDPMScheduler builds them."""
    if trained_betas is not None:
        betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float32) if not isinstance(trained_betas, torch.Tensor) \
            else trained_betas.detach().to("cpu", torch.float32).clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"trained_betas: expected a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
    else:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps: expected a positive int, got {num_train_timesteps!r}")
        n = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = betas_for_alpha_bar(n)
        elif beta_schedule == "laplace":
            betas = betas_for_alpha_bar(n, alpha_transform_type="laplace")
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start
        else:
            raise ValueError(f"beta_schedule: {beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def make_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, timestep_spacing: str = "leading",
                   steps_offset: int = 0) -> np.ndarray:
    """The descending inference timesteps (int64 numpy), as diffusers' set_timesteps computes them
    (Lin et al. 2023, Table 2). Raises when a timestep would fall outside [0, num_train_timesteps)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
            or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps: expected a positive int, got {num_inference_steps!r}")
    n, T = int(num_inference_steps), int(num_train_timesteps)
    if n > T:
        raise ValueError(f"num_inference_steps: {n} cannot be larger than num_train_timesteps ({T}): the model was "
                         f"trained on {T} timesteps only")
    if timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64)
        ts += steps_offset
    elif timestep_spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        raise ValueError(f"timestep_spacing: {timestep_spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}")
    if ts.size and (ts.max() >= T or ts.min() < 0):
        raise ValueError(f"steps_offset: timesteps {ts.tolist()} fall outside [0, {T}) with steps_offset={steps_offset}")
    return ts


@dataclass
class StepTable:
    """Per-step coefficients of one sampling run, built once per (steps, device).

    timesteps: int64 [n] on the device (what the model sees); the other tensors are float32 [n] on the
    device; the *_host lists hold the same values as Python floats (float32 values exactly)."""

    kind: str
    timesteps: torch.Tensor
    alpha_prod_t: torch.Tensor
    alpha_prod_t_prev: torch.Tensor
    timesteps_host: list[int]
    alpha_prod_t_host: list[float]
    alpha_prod_t_prev_host: list[float]
    adds_noise_host: list[bool]

    def __len__(self) -> int:
        return len(self.timesteps_host)


class NoiseSchedule:
    """alphas_cumprod of a training schedule plus the inference spacing; builds StepTables.

    final_alpha_cumprod: DDIM's alpha_prod_t_prev past the last step (1.0 = set_alpha_to_one).
    """

    def __init__(self, betas: torch.Tensor, *, timestep_spacing: str = "leading", steps_offset: int = 0,
                 final_alpha_cumprod: float | None = 1.0):
        betas = torch.as_tensor(betas, dtype=torch.float32).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas: expected a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing: {timestep_spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.timestep_spacing = timestep_spacing
        self.steps_offset = int(steps_offset)
        self.final_alpha_cumprod = float(self.alphas_cumprod[0]) if final_alpha_cumprod is None else float(final_alpha_cumprod)
        self._alphas_cumprod_host = self.alphas_cumprod.tolist()
        self._tables: dict = {}

    @classmethod
    def from_config(cls, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                    beta_schedule: str = "linear", trained_betas=None, rescale_betas_zero_snr: bool = False,
                    timestep_spacing: str = "leading", steps_offset: int = 0, set_alpha_to_one: bool = True,
                    **_ignored) -> "NoiseSchedule":
        """From the keyword arguments of a diffusers DDIM/DDPM config (a dict or `scheduler.config`)."""
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        return cls(betas, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
                   final_alpha_cumprod=1.0 if set_alpha_to_one else None)

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.numel()

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        return make_timesteps(num_inference_steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset)

    def alpha_at(self, t: int) -> float:
        return self._alphas_cumprod_host[t]

    def table(self, kind: str, num_inference_steps: int, device, timesteps: Sequence[int] | None = None) -> StepTable:
        """The StepTable of `kind` ('ddim' or 'ddpm'), cached per (kind, steps, device)."""
        device = torch.device(device)
        key = (kind, int(num_inference_steps), str(device), None if timesteps is None else tuple(timesteps))
        table = self._tables.get(key)
        if table is None:
            ts = self.timesteps(num_inference_steps) if timesteps is None else np.asarray(timesteps, dtype=np.int64)
            table = self._build(kind, ts, int(num_inference_steps), device)
            self._tables[key] = table
        return table

    def _build(self, kind: str, ts: np.ndarray, n: int, device: torch.device) -> StepTable:
        T = self.num_train_timesteps
        ac = self._alphas_cumprod_host
        t_host = [int(t) for t in ts]
        if any(t < 0 or t >= T for t in t_host):
            raise ValueError(f"timesteps: {t_host} fall outside the training schedule [0, {T})")
        a_t = [ac[t] for t in t_host]
        if kind == "ddim":
            ratio = T // n
            a_prev = [ac[t - ratio] if t - ratio >= 0 else self.final_alpha_cumprod for t in t_host]
            noise = [True] * len(t_host)  # scaled by eta (and zero where the DDIM variance is zero)
        elif kind == "ddpm":
            a_prev = [ac[t_host[i + 1]] if i + 1 < len(t_host) else 1.0 for i in range(len(t_host))]
            noise = [t > 0 for t in t_host]
        else:
            raise ValueError(f"kind: expected 'ddim' or 'ddpm', got {kind!r}")
        return StepTable(
            kind=kind,
            timesteps=torch.tensor(t_host, dtype=torch.int64).to(device),
            alpha_prod_t=torch.tensor(a_t, dtype=torch.float32).to(device),
            alpha_prod_t_prev=torch.tensor(a_prev, dtype=torch.float32).to(device),
            timesteps_host=t_host,
            alpha_prod_t_host=a_t,
            alpha_prod_t_prev_host=a_prev,
            adds_noise_host=noise,
        )
