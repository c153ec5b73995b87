"""Ahead-of-time compilation of Triton kernels for sm_90 without a GPU.

The interpreter checks what a kernel computes; it does not check that the kernel compiles. Triton's
compiler runs on a CPU-only machine when given an explicit target, so CI compiles every kernel to
PTX for Hopper and inspects it (16-byte global accesses). Compilation runs in a subprocess with the
interpreter off: in a process that has run interpreted kernels, Triton's language module is patched,
and under TRITON_INTERPRET=1 @triton.jit gives interpreted functions that cannot be compiled.

Use `compile_sm90(kernel, signature, constexprs, divisible=("n",))` for one kernel, or
`compile_sm90_many([aot_spec(...), ...])` to compile many variants in one subprocess (faster).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_WORKER = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
specs = json.load(open(sys.argv[1]))
out = []
for spec in specs:
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    names = fn.arg_names
    attrs = {(names.index(k),): [["tt.divisibility", 16]]
             for k, v in spec["signature"].items() if v.startswith("*") or k in spec["divisible"]}
    src = triton.compiler.ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": spec["num_warps"]})
    out.append(compiled.asm["ptx"])
json.dump(out, open(sys.argv[2], "w"))
"""


def aot_spec(module: str, name: str, signature: dict, constexprs: dict, divisible=(), num_warps: int = 4) -> dict:
    """One kernel variant: `module.name` with Triton types per arg ("*fp32", "i64", ...) and constexprs.
    Pointer args are marked 16-byte aligned and ints named in `divisible` divisible by 16, as Triton's
    launcher specializes them at run time for aligned tensors and such sizes."""
    return {"module": module, "name": name, "signature": signature, "constexprs": constexprs,
            "divisible": list(divisible), "num_warps": num_warps}


def compile_sm90_many(specs: list[dict]) -> list[str]:
    """Compile every spec for sm_90 in one subprocess; returns their PTX in order."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "specs.json", Path(tmp) / "ptx.json"
        spec_path.write_text(json.dumps(specs))
        proc = subprocess.run([sys.executable, "-c", _WORKER, str(spec_path), str(out_path)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
                pytest.skip("Triton cannot compile for sm_90 here (no ptxas)")
            raise AssertionError(f"Triton AOT compilation failed:\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


def jit_location(fn) -> tuple[str, str]:
    """(module, name) of a @triton.jit function, interpreted or not."""
    inner = getattr(fn, "fn", fn)
    return inner.__module__, inner.__name__


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int = 4, divisible=()) -> str:
    """Compile one @triton.jit kernel (the object, or a "module:name" string) for sm_90; its PTX."""
    module, name = fn.split(":") if isinstance(fn, str) else jit_location(fn)
    return compile_sm90_many([aot_spec(module, name, signature, constexprs, divisible, num_warps)])[0]


def _widest(ptx: str, op: str) -> int:
    best = 0
    for vec, bits in re.findall(op + r"(?:\.[a-z0-9_:]+)*?\.v(\d)\.(?:b|f|u|s)(\d+)", ptx):
        best = max(best, int(vec) * int(bits))
    return best


def widest_global_store_bits(ptx: str) -> int:
    """Width in bits of the widest vector global store in `ptx` (st.global.v4.b32 -> 128)."""
    return _widest(ptx, r"st\.global")


def widest_global_load_bits(ptx: str) -> int:
    return _widest(ptx, r"ld\.global")
