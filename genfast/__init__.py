"""genfast: fused Triton and CUDA/C++ kernels for generative models."""
from genfast._backend import BACKENDS, BackendInfo, BackendUnavailableError, backends, use_backend
from genfast import ops

__version__ = "0.1.0"

__all__ = ["BACKENDS", "BackendInfo", "BackendUnavailableError", "backends", "use_backend", "ops", "__version__"]
