"""One dispatch mechanism for every op (docs/design.md, "Adding an op").

An op module declares each of its kernels once, with one implementation per backend:

    step = Kernel("diffusion_step")

    @step.reference
    def _(a: StepArgs, out, out_x0): ...            # plain PyTorch, the oracle

    @step.compiled                                 # cpu, cuda and cuda-emulated
    def _(launch, a: StepArgs, out, out_x0):
        launch("diffusion_step", <plain ints and floats>)

    @step.triton
    def _(a: StepArgs, out, out_x0): ...

and calls it as `step(backend, a, out, out_x0)`. Before a compiled or Triton implementation runs, every
tensor among the arguments (NamedTuple fields included) is checked to be on the data's device and
dense and contiguous: a pointer never crosses into a kernel for memory it does not describe.

`launch(name, *ints)` calls `<name>_cpu` of genfast._C for the cpu backend, and `<name>_cuda` of
genfast._C (cuda) or genfast._C_emulated (cuda-emulated) with the CUDA stream and device appended.
Triton implementations run with the data's CUDA device made current (its current stream is the one
Triton launches on).

Argument structures: each op passes a NamedTuple (`StepArgs`, ...) between its wrapper, the custom op
and the kernels. `op_schema` turns such a NamedTuple's annotations into the custom op's flat schema,
so the op's signature is written once.
"""
from __future__ import annotations

import typing
from typing import Callable, Optional

import torch

from genfast import _backend, _ext

COMPILED = _backend.COMPILED
_REFERENCE_ONLY_DTYPES = (torch.float64,)


class Launcher:
    """Calls the compiled kernels of one backend for data on one device."""

    __slots__ = ("module", "suffix", "tail", "cuda")

    def __init__(self, backend: str, device: torch.device, tensor: Optional[torch.Tensor]):
        if backend == "cpu":
            self.module, self.suffix, self.tail, self.cuda = _ext._C, "_cpu", (), False
        elif backend == "cuda":
            self.module, self.suffix, self.cuda = _ext._C, "_cuda", True
            self.tail = (_ext.cuda_stream(tensor), _ext.device_index(tensor))
        else:  # cuda-emulated: host pointers, no stream
            self.module, self.suffix, self.tail, self.cuda = _ext.emulated(), "_cuda", (0, 0), True

    def __call__(self, name: str, *args):
        """Launch `name` (the kernel family: `diffusion_step`, `vae_forward`, ...)."""
        return getattr(self.module, name + self.suffix)(*args, *self.tail)

    def query(self, name: str, *args):
        """A host-side helper of the same module (no stream/device arguments)."""
        return getattr(self.module, name + self.suffix)(*args)


_TENSOR_FIELDS: dict[type, tuple[tuple[int, str], ...]] = {}


def _tensor_fields(cls) -> tuple[tuple[int, str], ...]:
    """(index, name) of the fields of a NamedTuple type that may hold a tensor (cached per type)."""
    fields = _TENSOR_FIELDS.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls)
        fields = tuple((i, f) for i, f in enumerate(cls._fields)
                       if hints.get(f) in (torch.Tensor, Optional[torch.Tensor]))
        _TENSOR_FIELDS[cls] = fields
    return fields


def _tensors(args) -> list[tuple[str | int, torch.Tensor]]:
    """(name, tensor) of every tensor in args: a NamedTuple's by field name, a bare one by its position
    (formatted only for an error message: this runs on every launch)."""
    found = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            found.append((i, a))
        elif isinstance(a, tuple) and hasattr(a, "_fields"):
            for j, name in _tensor_fields(type(a)):
                v = a[j]
                if v is not None:
                    found.append((name, v))
    return found


def check_kernel_tensors(kernel: str, tensors, device: torch.device) -> None:
    """Every tensor handed to a kernel is on `device`, dense and contiguous (else ValueError naming it)."""
    # get_device() and is_cpu are attribute reads; t.device builds an object (host overhead per step)
    cuda = device.type == "cuda"
    index = device.index if cuda else -1
    for name, t in tensors:
        if t.get_device() != index or not (t.is_cuda if cuda else t.is_cpu):
            raise ValueError(f"{_arg_name(name)}: on {t.device} but {kernel} runs on {device}")
        if not t.is_contiguous():
            raise ValueError(f"{_arg_name(name)}: {kernel} needs a contiguous tensor, got strides {t.stride()} for "
                             f"shape {tuple(t.shape)}")


def _arg_name(name: str | int) -> str:
    return f"argument {name}" if isinstance(name, int) else name


class Kernel:
    """A kernel with one implementation per backend, declared once."""

    def __init__(self, name: str):
        self.name = name
        self.impls: dict[str, Callable] = {}

    def impl(self, *backends: str):
        def register(fn):
            for b in backends:
                if b not in _backend.BACKENDS:
                    raise ValueError(f"{self.name}: unknown backend {b!r}")
                self.impls[b] = fn
            return fn

        return register

    @property
    def reference(self):
        return self.impl("reference")

    @property
    def compiled(self):
        return self.impl(*COMPILED)

    @property
    def triton(self):
        return self.impl("triton")

    def __call__(self, backend: str, *args):
        fn = self.impls.get(backend)
        if fn is None:
            raise NotImplementedError(f"{self.name}: no {backend} implementation")
        if backend == "reference":
            return fn(*args)
        tensors = _tensors(args)
        if not tensors:
            raise ValueError(f"{self.name}: no tensor argument to take the device from")
        tensor = tensors[0][1]
        device = tensor.device
        check_kernel_tensors(self.name, tensors, device)
        if backend in COMPILED:
            return fn(Launcher(backend, device, tensor), *args)
        if device.type == "cuda":  # Triton launches on the current device's current stream
            with torch.cuda.device(device):
                return fn(*args)
        return fn(*args)


# ---------------------------------------------------------------------------------------------
# Backend choice with the dtype rule: float64 runs on the reference (the oracle's dtype).
# ---------------------------------------------------------------------------------------------
def pick_backend(op: str, t: torch.Tensor, name: str) -> str:
    """The backend for `op` on tensors like `t` (named `name` in errors): the forced one or the default.
    float64 data run on the reference; forcing a compiled backend for them is a TypeError."""
    if t.dtype not in _ext.DTYPE_CODES:
        raise TypeError(f"{name}: expected float32, float16, bfloat16 or float64, got {t.dtype}")
    if t.dtype in _REFERENCE_ONLY_DTYPES:
        forced = _backend.forced_backend()
        if forced not in (None, "reference"):
            _backend.select_backend(op, t.device, t.dtype)  # an unavailable backend still says so first
            raise TypeError(f"{name}: dtype float64 runs only on the reference backend (the oracle); backend "
                            f"{forced!r} computes in fp32 and takes float32, float16 or bfloat16")
        return "reference"
    return _backend.select_backend(op, t.device, t.dtype)


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DEFAULT_CACHE: dict[tuple[str, str], str] = {}
_FORCED_CHECKED: set = set()


def pick_backend_cached(op: str, t: torch.Tensor, name: str) -> str:
    """pick_backend for a per-step hot path (sampling steps): the default per (op, device type) and a
    forced backend's availability do not change within a process, so they are remembered; the checks and
    errors are pick_backend's own, on the first call of each kind."""
    if t.dtype not in _KERNEL_DTYPES:
        return pick_backend(op, t, name)
    forced = _backend.forced_backend()
    device_type = t.device.type
    if forced is None:
        backend = _DEFAULT_CACHE.get((op, device_type))
        if backend is None:
            backend = _DEFAULT_CACHE[(op, device_type)] = pick_backend(op, t, name)
        return backend
    key = (op, forced, device_type)
    if key in _FORCED_CHECKED:
        return forced
    backend = pick_backend(op, t, name)
    _FORCED_CHECKED.add(key)
    return backend


# ---------------------------------------------------------------------------------------------
# Custom-op schemas from NamedTuples.
# ---------------------------------------------------------------------------------------------
_SCHEMA_TYPES = {
    torch.Tensor: "Tensor", Optional[torch.Tensor]: "Tensor?", int: "SymInt", Optional[int]: "SymInt?",
    float: "float", Optional[float]: "float?", bool: "bool", str: "str", torch.dtype: "ScalarType",
    torch.device: "Device", list[int]: "SymInt[]",
}


def op_schema(args_type, returns: str) -> str:
    """'(Tensor sample, float eta, ...) -> returns' from a NamedTuple's annotations, in field order."""
    hints = typing.get_type_hints(args_type)
    parts = []
    for field in args_type._fields:
        kind = _SCHEMA_TYPES.get(hints[field])
        if kind is None:
            raise TypeError(f"{args_type.__name__}.{field}: no custom-op schema type for {hints[field]}")
        parts.append(f"{kind} {field}")
    return f"({', '.join(parts)}) -> {returns}"


def custom_op(name: str, args_type, returns: str, impl: Callable, fake: Callable):
    """A torch.library custom op taking the fields of `args_type` flat; impl/fake take one args_type."""

    def flat_impl(*flat):
        return impl(args_type(*flat))

    def flat_fake(*flat):
        return fake(args_type(*flat))

    flat_impl.__name__ = name.split("::")[-1]
    op = torch.library.custom_op(name, flat_impl, mutates_args=(), schema=op_schema(args_type, returns))
    op.register_fake(flat_fake)
    return op


def eager_function(op, setup_context: Callable, backward: Callable, name: str):
    """An autograd.Function that runs `op` with the setup_context/backward registered on it: the same
    forward and backward for eager calls that need a gradient, without torch's custom-op autograd wrapper,
    which re-reads the op's schema on every call (torch/_library/utils.py fill_defaults, quadratic in the
    argument count: ~60 us for the VAE op, ~180 us for the diffusion step)."""

    def forward(*flat):
        return op(*flat)

    def setup(ctx, inputs, output):
        setup_context(ctx, inputs, output)

    def run_backward(ctx, *grads):
        return backward(ctx, *grads)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "setup_context": staticmethod(setup),
                                                   "backward": staticmethod(run_backward)})


def eager_ok(*tensors) -> bool:
    """True when a call may skip the dispatcher (~10 µs) and run the op's body directly: plain tensors,
    not tracing or compiling, no dispatch or function modes active, and nothing needing autograd."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    if torch._C._is_torch_function_mode_enabled():
        return False
    return all(t is None or type(t) is torch.Tensor for t in tensors)
