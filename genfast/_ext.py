"""Loading of the compiled extensions, and how tensors cross into them as plain integers.

genfast._C           the C++ kernels (backend `cpu`) and, when built with nvcc, the CUDA kernels (`cuda`)
genfast._C_emulated  the same CUDA kernels compiled by the host compiler against the CUDA execution
                     layer of kernels/host_emulation (backend `cuda-emulated`, CPU tensors); built with
                     GENFAST_CUDA_EMULATION=1, never chosen by default
"""
from __future__ import annotations

import importlib

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

_EMULATED: list = []  # [module or None, error or None], filled on first use


def emulated():
    """genfast._C_emulated, or None (the reason is in emulated_error())."""
    if not _EMULATED:
        try:
            _EMULATED[:] = [importlib.import_module("genfast._C_emulated"), None]
        except ImportError as exc:
            _EMULATED[:] = [None, f"the CUDA execution layer module genfast._C_emulated is not built ({exc}); "
                                  "build it with `GENFAST_CUDA_EMULATION=1 pip install -e .`"]
    return _EMULATED[0]


def emulated_error() -> str | None:
    emulated()
    return _EMULATED[1]


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def data_ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def device_index(t: torch.Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of t's device as an integer (without building a torch.cuda.Stream: host
    overhead per small launch)."""
    if _raw_stream is not None:
        return _raw_stream(device_index(t))
    return torch.cuda.current_stream(t.device).cuda_stream
