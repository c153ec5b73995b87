"""genfast's fused ops. Each module holds an op's reference, its backend dispatch, its autograd and
its torch.library registration."""
from genfast.ops.random import rand, randn
from genfast.ops.diffusion import ddim_step, ddpm_step

__all__ = ["rand", "randn", "ddim_step", "ddpm_step"]
