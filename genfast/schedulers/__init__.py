"""Drop-in replacements for diffusers DDIMScheduler and DDPMScheduler."""
