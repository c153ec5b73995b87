"""Small helpers shared by genfast's Triton kernels and launchers."""
import contextlib

import torch
import triton
import triton.language as tl


def device_of(t: torch.Tensor):
    """Context in which to launch on `t`'s data: its CUDA device made current, so that Triton launches on
    that device and on its current stream (Triton launches on the current device, whatever the
    tensors). Entering costs a device exchange only when `t` is on another device than the current one."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@triton.jit
def cast_rne(v, DTYPE: tl.constexpr):
    """fp32 -> DTYPE rounding to nearest even, as torch's .to() and the CUDA/C++ kernels do.

    bf16 is rounded by hand: Triton's interpreter truncates fp32 -> bf16 casts, which would make
    the interpreted kernel disagree with every other backend in the last bit.
    """
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (rounded >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(v != v, v.to(tl.bfloat16), out)
    else:
        return v.to(DTYPE)


@triton.jit
def scaled_length(units, UNIT: tl.constexpr):
    """units * UNIT as an int64 scalar that Triton knows to be a multiple of UNIT.

    Row lengths travel as counts of 16-byte units where rows are 16-byte aligned: the product then
    tells the compiler that every row starts aligned, which Triton's launcher proves by itself only for
    lengths divisible by 16 (tl.multiple_of on a scalar argument is silently dropped). The sum with an
    int64 zero widens first (no int32 overflow) and also takes the constant Triton makes of units == 1.
    """
    return (tl.full((), 0, tl.int64) + units) * UNIT


# A tile wholly inside the tensor is read and written without a mask: Triton vectorizes a masked access
# only when it can prove the mask constant over each vector (the bound divisible by 16), so a masked
# access over a whole tensor of odd size would be scalar. `full` is a run-time scalar (the program's
# tile ends at or before the bound); only the tail program takes the masked path.
@triton.jit
def load_tile(ptrs, mask, full, other):
    if full:
        v = tl.load(ptrs)
    else:
        v = tl.load(ptrs, mask=mask, other=other)
    return v


@triton.jit
def store_tile(ptrs, values, mask, full):
    if full:
        tl.store(ptrs, values)
    else:
        tl.store(ptrs, values, mask=mask)
