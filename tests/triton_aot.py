"""Ahead-of-time compilation of genfast's Triton kernels for sm_90 / sm_80 without a GPU.

The interpreter checks what a kernel computes; it does not check that the kernel compiles, nor what
the compiler makes of it. Triton's compiler runs on a CPU-only machine when given an explicit target,
so CI compiles the kernels to PTX and cubin and inspects them (16-byte global accesses, registers,
spills). Compilation runs in a subprocess with the interpreter off: in a process that has run
interpreted kernels, Triton's language module is patched, and under TRITON_INTERPRET=1 @triton.jit
gives interpreted functions that cannot be compiled.

Two ways in:
- `record_launches()` replaces the kernels of genfast.triton.* by recorders, so that running the
  launchers (or the public ops with the triton backend) on CPU tensors records each launch's real
  arguments without running anything. `compile_launches(launches, archs)` then compiles them with
  the specialization Triton's launcher computes from those arguments (Triton's own binder: an int
  equal to 1 becomes a constant, ints divisible by 16 and 16-byte aligned pointers get
  tt.divisibility, except where a kernel says do_not_specialize), and returns, per launch, the PTX
  and the resource report (registers, spills, stack, shared memory, 128-bit global accesses in the
  SASS).
- `compile_sm90(kernel, signature, constexprs, divisible=...)` / `compile_sm90_many([aot_spec(...)])`
  compile a hand-written signature (older tests).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent

TRITON_MODULES = tuple(f"genfast.triton.{m.name}" for m in __import__("pkgutil").iter_modules(
    [str(ROOT / "genfast" / "triton")]) if m.name != "common")  # every kernel module, new ones included


# ---- recording launches ---------------------------------------------------------------------------
@dataclass
class Launch:
    """One kernel launch as a launcher made it: the kernel, the grid and the arguments."""

    module: str
    name: str
    grid: tuple
    args: list
    kwargs: dict
    context: Any = None  # what record_launches' on_launch returned at the launch (e.g. the current device)
    label: str = ""
    expect: dict = field(default_factory=dict)  # free for the caller (expected vector accesses...)


def _is_jit_kernel(value) -> bool:
    return hasattr(value, "fn") and hasattr(value, "arg_names") and hasattr(value, "__getitem__")


class _Recorder:
    def __init__(self, kernel, module: str, name: str, log: list, on_launch):
        self.kernel, self.module, self.name, self.log, self.on_launch = kernel, module, name, log, on_launch
        self.arg_names = kernel.arg_names

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            context = self.on_launch() if self.on_launch is not None else None
            self.log.append(Launch(self.module, self.name, tuple(grid), list(args), dict(kwargs), context))
        return launch


@contextlib.contextmanager
def record_launches(on_launch: Callable[[], Any] | None = None, modules=TRITON_MODULES):
    """Within the block, genfast's Triton kernels record their launches (into the yielded list)
    instead of running. `on_launch()` is called at each launch; its value is kept as Launch.context."""
    log: list[Launch] = []
    patched = []
    try:
        for modname in modules:
            mod = importlib.import_module(modname)
            for attr, value in list(vars(mod).items()):
                if attr.endswith("_kernel") and _is_jit_kernel(value):
                    patched.append((mod, attr, value))
                    setattr(mod, attr, _Recorder(value, modname, attr, log, on_launch))
        yield log
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)


def _encode(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"__tensor__": str(value.dtype).removeprefix("torch."), "ptr_mod16": value.data_ptr() % 16,
                "numel": value.numel()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot describe a launch argument of type {type(value).__name__}")


def describe(launch: Launch) -> dict:
    """A JSON-able description of a launch: tensors become (dtype, address mod 16, numel)."""
    return {"module": launch.module, "name": launch.name, "grid": list(launch.grid),
            "args": [_encode(a) for a in launch.args], "kwargs": {k: _encode(v) for k, v in launch.kwargs.items()}}


# ---- compiling recorded launches --------------------------------------------------------------------
_LAUNCH_WORKER = r"""
import contextlib, importlib, io, json, os, re, subprocess, sys, tempfile
import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

launches, archs, jobs = json.load(open(sys.argv[1]))


class MockTensor:
    # what Triton's specialization reads of a tensor argument: its dtype and address
    def __init__(self, dtype, address):
        self.dtype, self.address = dtype, address

    def data_ptr(self):
        return self.address


def decode(v):
    if isinstance(v, dict) and "__tensor__" in v:
        return MockTensor(getattr(torch, v["__tensor__"]), 1 << 20 | v["ptr_mod16"])
    return v


def specialize(fn, backend, args, kwargs):
    # Exactly what JITFunction.run does before compiling, minus the device queries.
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    return fn._pack_args(backend, kwargs, bound_args, specialization, options)


def ptxas_report(log):
    regs = re.findall(r"Used (\d+) registers", log)
    frame = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    smem = re.findall(r"(\d+) bytes smem", log)
    return {"regs": int(regs[-1]) if regs else -1, "stack": int(frame[-1][0]) if frame else -1,
            "spill_stores": int(frame[-1][1]) if frame else -1, "spill_loads": int(frame[-1][2]) if frame else -1,
            "smem_static": int(smem[-1]) if smem else 0}


def sass_counts(cubin, tmp):
    path = os.path.join(tmp, "k.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", path], capture_output=True, text=True).stdout
    ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass, re.M)
    count = lambda pred: sum(1 for op in ops if pred(op))
    return {"ldg128": count(lambda op: op.startswith("LDG") and ".128" in op),
            "stg128": count(lambda op: op.startswith("STG") and ".128" in op),
            "ldg": count(lambda op: op.startswith("LDG")), "stg": count(lambda op: op.startswith("STG")),
            "ldl": count(lambda op: op.startswith("LDL")), "stl": count(lambda op: op.startswith("STL")),
            "mufu": count(lambda op: op.startswith("MUFU")), "instructions": len(ops)}


def ptx_counts(ptx):
    return {"ld_v4": len(re.findall(r"ld\.global(?:\.[a-z0-9_:]+)*\.v4\.(?:b|f|u|s)32", ptx)),
            "st_v4": len(re.findall(r"st\.global(?:\.[a-z0-9_:]+)*\.v4\.(?:b|f|u|s)32", ptx)),
            "local_depot": sum(int(x) for x in re.findall(r"__local_depot\d+\[(\d+)\]", ptx))}


def compile_one(job):
    fn, arch, signature, constexprs, attrs, options = job
    knobs.nvidia.dump_ptxas_log = True
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)
        error = None
    except Exception as e:  # a failed compile is a result (the test reports it), not a crash
        cause = f" (caused by {type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
        compiled, error = None, f"{type(e).__name__}: {e}{cause}"[-3000:]
    names = fn.arg_names
    info = {"kernel": fn.__name__, "arch": arch, "error": error,
            "signature": {k: v for k, v in signature.items() if v != "constexpr"},
            "constexprs": {names[k[0]]: repr(v) for k, v in constexprs.items()},
            "divisible": sorted(names[k[0]] for k, v in attrs.items() if v), "num_warps": options.num_warps}
    if compiled is not None:
        with tempfile.TemporaryDirectory() as tmp:
            info.update(ptxas_report(log.getvalue()), **ptx_counts(compiled.asm["ptx"]),
                        **sass_counts(compiled.asm["cubin"], tmp), shared=compiled.metadata.shared,
                        ptx=compiled.asm["ptx"])
    return info


def compile_index(i):
    return compile_one(jobs_list[i])


# Specialize every launch (cheap), then compile each distinct variant once, on `jobs` processes.
jobs_list, keys, per_launch = [], {}, []
for spec in launches:
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    args = [decode(a) for a in spec["args"]]
    kwargs = {k: decode(v) for k, v in spec["kwargs"].items()}
    row = []
    for arch in archs:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        options, signature, constexprs, attrs = specialize(fn, backend, args, kwargs)
        key = repr((spec["module"], spec["name"], arch, sorted(signature.items()), sorted(constexprs.items()),
                    sorted(attrs.items()), sorted(options.__dict__.items())))
        if key not in keys:
            keys[key] = len(jobs_list)
            jobs_list.append((fn, arch, signature, constexprs, attrs, options))
        row.append(keys[key])
    per_launch.append(row)
if jobs > 1 and len(jobs_list) > 1:
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        # forked children see jobs_list: only indices and the results' dicts cross processes
        variants = pool.map(compile_index, range(len(jobs_list)), chunksize=1)
else:
    variants = [compile_one(job) for job in jobs_list]
json.dump({"variants": variants, "per_launch": per_launch}, open(sys.argv[2], "w"))
"""


def _run_worker(worker: str, payload, timeout: int = 900):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps(payload))
        # A private cache: every variant is really compiled (ptxas reports only on a real compile).
        env["TRITON_CACHE_DIR"] = str(Path(tmp) / "cache")
        proc = subprocess.run([sys.executable, "-c", worker, str(in_path), str(out_path)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
                pytest.skip("Triton cannot compile for CUDA here (no ptxas)")
            if "ImportError" in proc.stderr and "create_function_from_signature" in proc.stderr:
                pytest.skip("this Triton has no create_function_from_signature (AOT specialization needs 3.4+)")
            raise AssertionError(f"Triton AOT compilation failed:\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


@dataclass
class Compiled:
    """The compile of one launch for one architecture."""

    launch: Launch
    arch: int
    info: dict  # kernel, signature, constexprs, divisible, regs, spill_*, stack, shared, ldg128, stg128, ptx...

    @property
    def ptx(self) -> str:
        return self.info.get("ptx", "")


def compile_launches(launches: list[Launch], archs=(90,), jobs: int | None = None) -> list[list[Compiled]]:
    """Compile each launch (with the specialization Triton derives from its arguments) for each arch in
    one subprocess (its distinct variants compiled once each, on `jobs` processes: default, the CPUs this
    process may use, at most 4). Returns, per launch, one Compiled per arch."""
    if jobs is None:
        jobs = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    result = _run_worker(_LAUNCH_WORKER, [[describe(launch) for launch in launches], list(archs), jobs])
    variants = result["variants"]
    return [[Compiled(launch, arch, variants[i]) for arch, i in zip(archs, row)]
            for launch, row in zip(launches, result["per_launch"])]


def unique_variants(compiled: list[list[Compiled]]) -> list[Compiled]:
    """The distinct compiled variants, in first-seen order (the first launch that produced each)."""
    seen, out = set(), []
    for row in compiled:
        for c in row:
            if id(c.info) not in seen:
                seen.add(id(c.info))
                out.append(c)
    return out


# ---- hand-written signatures (older tests) ---------------------------------------------------------
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
    Pointer args are marked 16-byte aligned and ints named in `divisible` divisible by 16."""
    return {"module": module, "name": name, "signature": signature, "constexprs": constexprs,
            "divisible": list(divisible), "num_warps": num_warps}


def compile_sm90_many(specs: list[dict]) -> list[str]:
    """Compile every spec for sm_90 in one subprocess; returns their PTX in order."""
    return _run_worker(_WORKER, specs, timeout=600)


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
