"""Backends and dispatch (docs/design.md, "Backends and dispatch").

Five implementations compute every op: `reference` (plain PyTorch, the oracle), `triton`, `cuda`
(genfast._C's CUDA kernels), `cpu` (genfast._C's C++ kernels) and `cuda-emulated` (the CUDA kernels
compiled for the host against kernels/host_emulation, run on CPU tensors: a test and debugging backend,
never a default). The default is chosen per device; `GENFAST_BACKEND=name` or
`with genfast.use_backend(name):` forces one, and forcing one that cannot run is an error, never a
silent fallback.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

import torch

from genfast import _ext

BACKENDS = ("reference", "triton", "cuda", "cpu", "cuda-emulated")
# the backends that run genfast's compiled kernels (fp32 arithmetic: float32/float16/bfloat16 data)
COMPILED = ("cpu", "cuda", "cuda-emulated")

# The CUDA-tensor default per op: the faster of cuda/triton as recorded in benchmarks/RESULTS.md.
# Until an op has been measured on a GPU its default is the compiled kernel, which has no JIT
# warm-up and the lowest launch overhead.
CUDA_DEFAULTS: dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """A forced backend is not available in this installation (not built, no GPU, no Triton)."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    devices: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        state = f"available on {', '.join(self.devices)}" if self.available else "unavailable"
        return f"{self.name:9s} {state}: {self.reason}"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not installed ({exc}); `pip install triton`"
    return None


def _triton_built_for_interpreter() -> bool:
    """Triton decides at import whether its own @jit functions are interpreted: TRITON_INTERPRET=1 set
    after `import triton` lists the interpreter as on while every kernel would fail inside it."""
    import triton.language.standard as standard

    return type(standard.sigmoid).__name__ == "InterpretedFunction"


def _cuda_runtime_ok() -> bool:
    return torch.cuda.is_available()


def backend_info(name: str) -> BackendInfo:
    if name == "reference":
        return BackendInfo(name, True, ("any",), "plain PyTorch, always available")
    if name == "cpu":
        if _ext._C is None:
            return BackendInfo(name, False, (), _ext.EXT_ERROR or "")
        omp = "with OpenMP" if _ext._C.with_openmp else "without OpenMP"
        return BackendInfo(name, True, ("cpu",), f"genfast._C C++ kernels ({omp})")
    if name == "cuda":
        if _ext._C is None:
            return BackendInfo(name, False, (), _ext.EXT_ERROR or "")
        if not _ext._C.with_cuda:
            return BackendInfo(name, False, (), "genfast._C was built without CUDA (nvcc not found or GENFAST_CUDA=0)")
        if not _cuda_runtime_ok() or _ext._C.cuda_device_count() == 0:
            return BackendInfo(name, False, (), "no CUDA device is visible")
        return BackendInfo(name, True, ("cuda",), "genfast._C CUDA kernels")
    if name == "cuda-emulated":
        module = _ext.emulated()
        if module is None:
            return BackendInfo(name, False, (), _ext.emulated_error() or "")
        checks = "with AddressSanitizer/UBSan" if getattr(module, "with_sanitizers", False) else "without sanitizers"
        return BackendInfo(name, True, ("cpu",), f"the CUDA kernels on CPU tensors through the execution layer "
                                                 f"({checks}); never chosen by default")
    if name == "triton":
        err = _triton_error()
        if err:
            return BackendInfo(name, False, (), err)
        devices = []
        if _cuda_runtime_ok():
            devices.append("cuda")
        if triton_interpret():
            if not _triton_built_for_interpreter():
                if not devices:
                    return BackendInfo(name, False, (), "TRITON_INTERPRET=1 was set after triton was imported, so "
                                                        "Triton's own functions were built for the compiler; set it "
                                                        "before the first `import triton` (or `import genfast`)")
            else:
                devices.append("cpu")
        if not devices:
            return BackendInfo(name, False, (), "no CUDA device is visible (set TRITON_INTERPRET=1 to run on CPU tensors)")
        how = "interpreter on CPU tensors" if "cpu" in devices else "compiled"
        return BackendInfo(name, True, tuple(devices), f"Triton kernels ({how})")
    raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backends() -> dict[str, BackendInfo]:
    """What is available in this process, and the reason for what is not."""
    return {name: backend_info(name) for name in BACKENDS}


# Per-thread, and a threading.local rather than a ContextVar because torch.compile traces the former.
_forced = threading.local()


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force `name` for every genfast op called inside the block (None: back to the default)."""
    if name is not None:
        _check_name(name, "use_backend")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


def forced_backend() -> str | None:
    name = getattr(_forced, "name", None)
    if name is not None:
        return name
    env = os.environ.get("GENFAST_BACKEND")
    if not env:
        return None
    env = env.strip()
    return _check_name(env, "GENFAST_BACKEND") if env else None


def select_backend(op: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs `op` on tensors of `device`: the forced one (checked) or the default."""
    device = torch.device(device)
    name = forced_backend()
    if name is not None:
        info = backend_info(name)
        if not info.available:
            raise BackendUnavailableError(f"genfast backend {name!r} was requested but is unavailable: {info.reason}")
        if name != "reference" and device.type not in info.devices:
            raise ValueError(
                f"device: backend {name!r} cannot run {op} on {device.type} tensors "
                f"(it serves {', '.join(info.devices)})"
            )
        if dtype is not None and dtype not in _ext.DTYPE_CODES:
            raise TypeError(f"dtype: {dtype} is not supported by genfast ops")
        return name
    if device.type == "cuda":
        preferred = CUDA_DEFAULTS.get(op, "cuda")
        for candidate in (preferred, "triton" if preferred == "cuda" else "cuda"):
            if backend_info(candidate).available:
                return candidate
        return "reference"
    if device.type == "cpu" and backend_info("cpu").available:
        return "cpu"
    return "reference"
