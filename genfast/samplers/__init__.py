"""Diffusion samplers: schedules, DDPM/DDIM sampling loops, the CUDA-graph-captured loop."""
