"""Diffusion samplers: schedules, DDPM/DDIM sampling loops, the CUDA-graph-captured loop."""
from genfast.samplers.schedules import (NoiseSchedule, StepTable, betas_for_alpha_bar, make_betas, make_timesteps,
                                        rescale_zero_terminal_snr)
from genfast.samplers.sampling import INIT_NOISE_OFFSET, sample_ddim, sample_ddpm
from genfast.samplers.graph import clear_graphs

__all__ = ["NoiseSchedule", "StepTable", "betas_for_alpha_bar", "make_betas", "make_timesteps",
           "rescale_zero_terminal_snr", "sample_ddim", "sample_ddpm", "INIT_NOISE_OFFSET", "clear_graphs"]
