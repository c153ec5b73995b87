"""Loading of the compiled extension genfast._C, and how tensors cross into it as plain integers."""
from __future__ import annotations

import torch

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}  # kernels/common.cuh

try:
    from genfast import _C  # type: ignore[attr-defined]

    EXT_ERROR: str | None = None
except ImportError as exc:  # pure-Python install: the reference and Triton backends still work
    _C = None
    EXT_ERROR = (
        f"the compiled extension genfast._C is not built ({exc}); reinstall with `pip install -e .` "
        "and a C++ compiler, CMake and Ninja"
    )


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def data_ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def cuda_stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def device_index(t: torch.Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()
