"""genfast's fused ops. Each module holds an op's reference, its backend dispatch, its autograd and
its torch.library registration."""
from genfast.ops.random import rand, randn

__all__ = ["rand", "randn"]
from genfast.ops.vae import reparameterize, reparameterize_kl  # noqa: E402

__all__ += ["reparameterize", "reparameterize_kl"]
