"""Diffusion samplers: schedules, the DDPM/DDIM and Euler / Euler-ancestral / DPM-Solver sampling loops, the
CUDA-graph-captured loop."""
from genfast.samplers.schedules import (NoiseSchedule, StepTable, betas_for_alpha_bar, make_betas, make_timesteps,
                                        rescale_zero_terminal_snr)
from genfast.samplers.sampling import INIT_NOISE_OFFSET, sample_ddim, sample_ddpm
from genfast.samplers.graph import clear_graphs
from genfast.samplers.sigma import sample_dpm_solver, sample_euler, sample_euler_ancestral

__all__ = ["NoiseSchedule", "StepTable", "betas_for_alpha_bar", "make_betas", "make_timesteps",
           "rescale_zero_terminal_snr", "sample_ddim", "sample_ddpm", "sample_euler",
           "sample_euler_ancestral", "sample_dpm_solver", "INIT_NOISE_OFFSET", "clear_graphs"]
