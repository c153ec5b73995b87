"""Small jit helpers shared by genfast's Triton kernels."""
import triton
import triton.language as tl


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
