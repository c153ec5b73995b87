"""genfast's fused ops. Each module holds an op's reference, its backend dispatch, its autograd and
its torch.library registration."""
from genfast.ops.random import rand, randn
from genfast.ops.gradient_penalty import gradient_norm_penalty, gradient_penalty, interpolate

__all__ = ["rand", "randn"]
__all__ += ["gradient_penalty", "interpolate", "gradient_norm_penalty"]
