"""Seeds and offsets of genfast's random stream, shared by every op that draws noise.

A seed is a Python int in [0, 2^64), an int64 tensor of one element on the data's device (so a
captured CUDA graph reads a new seed on each replay), or None: then one is drawn from torch's
default generator, so `torch.manual_seed` keeps runs repeatable. Offsets likewise (None -> 0).

Inside the ops, seeds travel as the signed int64 with the same bits (custom-op ints are int64).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

U64 = 1 << 64
MASK32 = 0xFFFFFFFF


def to_signed64(v: int) -> int:
    return v - U64 if v >= (1 << 63) else v


def to_unsigned64(v: int) -> int:
    return v + U64 if v < 0 else v


@dataclass(frozen=True)
class Stream:
    """A resolved (seed, offset): ints as signed-int64 bit patterns, or int64 device tensors."""

    seed: int
    offset: int
    seed_tensor: torch.Tensor | None
    offset_tensor: torch.Tensor | None


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
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int in [0, 2**64) or an int64 tensor, got {type(value).__name__}")
    if not 0 <= value < U64:
        raise ValueError(f"{name}: {value} is outside [0, 2**64)")
    return to_signed64(value), None


def resolve_stream(seed, offset, device) -> Stream:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if seed is None:
        seed = draw_seed()
    if offset is None:
        offset = 0
    s, st = _resolve(seed, "seed", device)
    o, ot = _resolve(offset, "offset", device)
    return Stream(s, o, st, ot)
