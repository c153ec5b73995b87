"""Drop-in replacements for diffusers' DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler: the same constructor, config, state,
set_timesteps and step, with the step computed by one of genfast's fused kernels.

    pipe.scheduler = genfast.schedulers.from_diffusers(pipe.scheduler)

With diffusers installed they subclass its SchedulerMixin/ConfigMixin (save_pretrained,
from_pretrained, from_config); without it they work with a minimal config holder.
"""
from genfast.schedulers._common import HAVE_DIFFUSERS, DDIMSchedulerOutput, DDPMSchedulerOutput
from genfast.schedulers._outputs import (EulerAncestralDiscreteSchedulerOutput, EulerDiscreteSchedulerOutput,
                                         SchedulerOutput)
from genfast.schedulers.ddim import DDIMScheduler
from genfast.schedulers.ddpm import DDPMScheduler
from genfast.schedulers.dpmsolver import DPMSolverMultistepScheduler
from genfast.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from genfast.schedulers.convert import SCHEDULERS, UnsupportedSchedulerError, from_diffusers

__all__ = ["DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
           "DPMSolverMultistepScheduler", "from_diffusers", "SCHEDULERS", "UnsupportedSchedulerError",
           "DDIMSchedulerOutput", "DDPMSchedulerOutput", "EulerDiscreteSchedulerOutput",
           "EulerAncestralDiscreteSchedulerOutput", "SchedulerOutput", "HAVE_DIFFUSERS"]
