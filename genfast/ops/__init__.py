"""genfast's fused ops. Each module holds an op's reference, its backend dispatch, its autograd and
its torch.library registration."""
from genfast.ops.random import rand, randn
from genfast.ops.diffusion import ddim_step, ddpm_step
from genfast.ops.sampler_steps import (StepCoefficients, dpm_solver_step, euler_ancestral_step, euler_step,
                                       sampler_step)
from genfast.ops.gradient_penalty import gradient_norm_penalty, gradient_penalty, interpolate
from genfast.ops.vae import reparameterize, reparameterize_kl

__all__ = ["rand", "randn", "ddim_step", "ddpm_step", "euler_step", "euler_ancestral_step", "dpm_solver_step",
           "sampler_step", "StepCoefficients", "gradient_penalty", "interpolate", "gradient_norm_penalty",
           "reparameterize", "reparameterize_kl"]
