"""Seeds and offsets of genfast's random stream, shared by every op that draws noise.

A seed is a Python int in [0, 2^64), an int64 tensor of one element on the data's device (so a
captured CUDA graph reads a new seed on each replay), or None: then one is drawn from torch's
default generator, so `torch.manual_seed` keeps runs repeatable. Offsets likewise (None -> 0).

Inside the ops, seeds travel as the signed int64 with the same bits (custom-op ints are int64).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from genfast.ops import _checks

U64 = 1 << 64
U64_MASK = U64 - 1
MASK32 = 0xFFFFFFFF


def to_signed64(v: int) -> int:
    return v - U64 if v >= (1 << 63) else v


def to_unsigned64(v: int) -> int:
    return v + U64 if v < 0 else v


class Stream(NamedTuple):
    """A resolved (seed, offset): ints as signed-int64 bit patterns, or int64 device tensors (which win)."""

    seed: int
    offset: int
    seed_tensor: Optional[torch.Tensor]
    offset_tensor: Optional[torch.Tensor]

    def ints(self) -> tuple[int, int, int, int]:
        """(seed, offset) as uint64 and the two tensors' data pointers (0: none), for the compiled kernels."""
        return (self.seed & U64_MASK, self.offset & U64_MASK,
                0 if self.seed_tensor is None else self.seed_tensor.data_ptr(),
                0 if self.offset_tensor is None else self.offset_tensor.data_ptr())

    def check(self, device: torch.device, op: str) -> "Stream":
        """What a custom op checks before the values reach a kernel (the public wrappers check more)."""
        for name, value, t in (("seed", self.seed, self.seed_tensor), ("offset", self.offset, self.offset_tensor)):
            if not -(1 << 63) <= value < (1 << 63):
                raise ValueError(f"{op}: {name} {value} is not a signed-int64 bit pattern")
            if t is not None:
                if t.dtype != torch.int64 or t.numel() != 1:
                    raise ValueError(f"{op}: {name}_tensor must be one int64 element, got {t.dtype} {tuple(t.shape)}")
                if t.device != device:
                    raise ValueError(f"{op}: {name}_tensor is on {t.device} but the data are on {device}")
        return self._replace(seed_tensor=None if self.seed_tensor is None else self.seed_tensor.reshape(()),
                             offset_tensor=None if self.offset_tensor is None else self.offset_tensor.reshape(()))


def draw_seed() -> int:
    """A 63-bit seed from torch's default CPU generator (no device sync)."""
    return int(torch.empty((), dtype=torch.int64).random_())


def _resolve(value, name: str, device: torch.device) -> tuple[int, torch.Tensor | None]:
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64:
            raise TypeError(f"{name}: a tensor {name} must be int64, got {value.dtype}")
        if value.numel() != 1:
            raise ValueError(f"{name}: a tensor {name} must hold one element, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name}: the {name} tensor is on {value.device} but the data is on {device}")
        return 0, value.reshape(())
    try:
        value = _checks.integer(value, name)
    except TypeError:
        raise TypeError(f"{name}: expected an int in [0, 2**64) or an int64 tensor, got {type(value).__name__}") from None
    if not 0 <= value < U64:
        raise ValueError(f"{name}: {value} is outside [0, 2**64)")
    return to_signed64(value), None


def draw_seed_tensor(device: torch.device) -> torch.Tensor:
    """A seed drawn inside a torch.compile'd graph: a tensor op (an int would be data-dependent)."""
    return torch.randint(0, (1 << 63) - 1, (), dtype=torch.int64, device=device)


def resolve_stream(seed, offset, device) -> Stream:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if seed is None:
        # under torch.compile the seed comes from the compiled graph's random generator instead
        seed = draw_seed_tensor(device) if torch.compiler.is_compiling() else draw_seed()
    if offset is None:
        offset = 0
    s, st = _resolve(seed, "seed", device)
    o, ot = _resolve(offset, "offset", device)
    return Stream(s, o, st, ot)
