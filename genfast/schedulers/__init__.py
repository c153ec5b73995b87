"""Drop-in replacements for diffusers DDIMScheduler and DDPMScheduler: the same constructor, config,
set_timesteps and step, with the step computed by genfast's fused kernel.

    pipe.scheduler = genfast.schedulers.DDIMScheduler.from_config(pipe.scheduler.config)

With diffusers installed they subclass its SchedulerMixin/ConfigMixin (save_pretrained,
from_pretrained, from_config); without it they work with a minimal config holder.
"""
from genfast.schedulers._common import HAVE_DIFFUSERS, DDIMSchedulerOutput, DDPMSchedulerOutput
from genfast.schedulers.ddim import DDIMScheduler
from genfast.schedulers.ddpm import DDPMScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "DDIMSchedulerOutput", "DDPMSchedulerOutput", "HAVE_DIFFUSERS"]
