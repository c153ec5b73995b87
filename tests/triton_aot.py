"""Ahead-of-time compilation of Triton kernels for sm_90 without a GPU.

The interpreter checks what a kernel computes; it does not check that the kernel compiles. Triton's
compiler runs on a CPU-only machine when given an explicit target, so CI compiles every kernel to
PTX/cubin for Hopper and inspects the PTX (16-byte global accesses, no local-memory spills).
"""
import re

import pytest


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int = 4, divisible=()) -> str:
    """Compile `fn` (a @triton.jit function) for sm_90 and return its PTX.

    signature: arg name -> Triton type ("*fp32", "i64", ...). Pointer args are marked 16-byte aligned
    and the int args named in `divisible` divisible by 16, as Triton's launcher specializes them at
    run time for aligned tensors and such sizes.
    """
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    names = fn.arg_names
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items() if v.startswith("*") or k in divisible}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    except (RuntimeError, FileNotFoundError) as exc:  # ptxas missing from this Triton build
        if "ptxas" in str(exc):
            pytest.skip(f"Triton cannot compile for sm_90 here: {exc}")
        raise
    return compiled.asm["ptx"]


def widest_global_store_bits(ptx: str) -> int:
    """Width in bits of the widest vector global store in `ptx` (v4.b32 -> 128)."""
    best = 0
    for vec, bits in re.findall(r"st\.global(?:\.[a-z0-9_]+)*?\.v(\d)\.(?:b|f|u|s)(\d+)", ptx):
        best = max(best, int(vec) * int(bits))
    return best


def widest_global_load_bits(ptx: str) -> int:
    best = 0
    for vec, bits in re.findall(r"ld\.global(?:\.[a-z0-9_]+)*?\.v(\d)\.(?:b|f|u|s)(\d+)", ptx):
        best = max(best, int(vec) * int(bits))
    return best
