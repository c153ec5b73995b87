"""Codegen gate for kernels/*.cu: what nvcc makes of each kernel for sm_80 and sm_90, checked without a GPU.

    python tools/cuda_codegen.py [--arch sm_80 sm_90] [--markdown FILE] [--json FILE] [--sass-dir DIR]

Compiles every kernels/*.cu to a cubin per architecture with `-Xptxas -v`, disassembles it with cuobjdump
-sass, and tabulates per kernel: registers, spill stores/loads, stack frame, shared memory, 128-bit global
loads/stores (LDG.E.128 / STG.E.128 on both sm_80 and sm_90), narrower global accesses, local-memory
instructions (LDL/STL), MUFU (special-function unit) and all SASS instructions (static counts, both
the vector and the scalar-tail paths). Exit status 1 when a kernel spills, has local-memory traffic or a
stack frame, or has fewer 128-bit accesses than its element-wise hot loop needs (EXPECTED below): a
vector access lost to a refactor shows up here before any GPU runs the code.

Needs nvcc (CUDA 12+) and cuobjdump + nvdisasm: from the toolkit, or the pip packages
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (found in site-packages/nvidia/cu*/bin).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"

# Minimum 128-bit global loads / stores in each kernel's SASS (one per tensor its vector path streams):
# random_fill writes out; the step reads sample, model, cond and writes out, out_x0; interpolate reads
# real and fake and writes out; the norm reads grad; its backward reads grad and writes out; the VAE
# forward reads mu, logvar, noise and writes z; the backward reads grad_z, mu, logvar, noise and writes
# grad_mu, grad_logvar.
EXPECTED = {
    "random_fill_kernel": (0, 1),
    "diffusion_step_kernel": (3, 2),
    # backward: reads sample, model (+ cond, grad_prev, grad_x0), writes grad_sample and grad_model
    "diffusion_step_backward_kernel": (3, 2),
    # the sampler step: reads sample, model (+ cond, the multistep history) and writes out
    "sampler_step_kernel": (2, 1),
    "interpolate_kernel": (2, 1),
    "norm_penalty_kernel": (1, 0),
    "norm_penalty_backward_kernel": (1, 1),
    "vae_forward_kernel": (3, 1),
    "vae_backward_kernel": (4, 2),
}

LDG128 = re.compile(r"\bLDG\.[A-Z0-9.]*\b128\b")
STG128 = re.compile(r"\bSTG\.[A-Z0-9.]*\b128\b")
LDG = re.compile(r"\bLDG\b")
STG = re.compile(r"\bSTG\b")
LOCAL = re.compile(r"\b(LDL|STL)\b")
MUFU = re.compile(r"\bMUFU\.")
INSTR = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?);")


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ""
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0
    ldg128: int = 0
    stg128: int = 0
    ldg_narrow: int = 0
    stg_narrow: int = 0
    local: int = 0
    mufu: int = 0
    instructions: int = 0
    problems: list = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.name.split("<")[0].split("::")[-1]


def _find_tool(name: str) -> str | None:
    env = os.environ.get(f"GENFAST_{name.upper()}")
    if env:
        return env
    found = shutil.which(name)
    if found:
        return found
    nvcc = shutil.which("nvcc")
    if nvcc and (Path(nvcc).parent / name).exists():
        return str(Path(nvcc).parent / name)
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        for hit in sorted(glob.glob(os.path.join(sp, "nvidia", "cu*", "bin", name))):
            return hit
    return None


def tools() -> dict[str, str]:
    found = {name: _find_tool(name) for name in ("nvcc", "cuobjdump", "nvdisasm", "c++filt")}
    missing = [n for n, p in found.items() if p is None and n != "c++filt"]
    if missing:
        raise FileNotFoundError(f"cuda_codegen: not found: {', '.join(missing)} (pip install nvidia-cuda-cuobjdump "
                                "nvidia-cuda-nvdisasm for the disassembler)")
    return found


def demangle(names: list[str], cxxfilt: str | None) -> dict[str, str]:
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    pretty = {}
    for n, d in zip(names, out):
        d = re.sub(r"genfast::\(anonymous namespace\)::", "", d)
        d = re.sub(r"\(.*\)$", "", d)  # drop the parameter list
        d = re.sub(r"^void ", "", d)
        d = d.replace("__nv_bfloat16", "bf16").replace("__half", "half")
        pretty[n] = d
    return pretty


def compile_one(cu: Path, arch: str, outdir: Path, nvcc: str) -> tuple[Path, str]:
    cubin = outdir / f"{cu.stem}.{arch}.cubin"
    cmd = [nvcc, "-cubin", f"-arch={arch}", "-O3", "-std=c++17", "-lineinfo", f"-I{cu.parent}", f"-I{cu.parent.parent / 'csrc'}",
           "-DGENFAST_WITH_CUDA=1", "-Xptxas", "-v", "-o", str(cubin), str(cu)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {cu.name} for {arch}:\n{proc.stderr}")
    return cubin, proc.stderr


def parse_ptxas(text: str, arch: str) -> dict[str, Kernel]:
    kernels: dict[str, Kernel] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(arch, m.group(1)))
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = kernels.get(m.group(1), current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current.registers = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current.smem = int(s.group(1)) if s else 0
    return kernels


def parse_sass(text: str, kernels: dict[str, Kernel]) -> None:
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = kernels.get(m.group(1))
            continue
        m = INSTR.match(line)
        if not m or current is None:
            continue
        ins = m.group(1)
        op = re.sub(r"^@!?U?P\w+\s+", "", ins)
        if op.startswith("NOP"):
            continue
        current.instructions += 1
        if LDG128.search(op):
            current.ldg128 += 1
        elif LDG.search(op):
            current.ldg_narrow += 1
        if STG128.search(op):
            current.stg128 += 1
        elif STG.search(op):
            current.stg_narrow += 1
        if LOCAL.search(op):
            current.local += 1
        if MUFU.search(op):
            current.mufu += 1


def check(k: Kernel) -> None:
    if k.spill_stores or k.spill_loads:
        k.problems.append(f"spills {k.spill_stores} B stored / {k.spill_loads} B loaded")
    if k.local:
        k.problems.append(f"{k.local} local-memory instructions (LDL/STL)")
    if k.stack:
        k.problems.append(f"{k.stack} B stack frame")
    need = EXPECTED.get(k.base)
    if need is None:
        k.problems.append("no 128-bit expectation recorded for this kernel (add it to EXPECTED)")
    else:
        if k.ldg128 < need[0]:
            k.problems.append(f"{k.ldg128} 128-bit global loads, expected >= {need[0]} (a vector access was lost)")
        if k.stg128 < need[1]:
            k.problems.append(f"{k.stg128} 128-bit global stores, expected >= {need[1]} (a vector access was lost)")


def analyse(archs: list[str], sass_dir: Path | None = None, kernels_dir: Path = KERNELS) -> list[Kernel]:
    t = tools()
    env = dict(os.environ)
    env["NVDISASM_PATH"] = str(Path(t["nvdisasm"]).parent)
    sources = sorted(p for p in kernels_dir.glob("*.cu"))
    results: list[Kernel] = []
    with tempfile.TemporaryDirectory(prefix="genfast-codegen-") as tmp:
        jobs = [(cu, arch) for arch in archs for cu in sources]
        workers = max(1, min(len(jobs), os.cpu_count() or 2))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            compiled = list(pool.map(lambda j: (j, compile_one(j[0], j[1], Path(tmp), t["nvcc"])), jobs))
        for (cu, arch), (cubin, ptxas) in compiled:
            kernels = parse_ptxas(ptxas, arch)
            if not kernels:
                continue
            sass = subprocess.run([t["cuobjdump"], "-sass", str(cubin)], capture_output=True, text=True, env=env)
            if sass.returncode != 0:
                raise RuntimeError(f"cuobjdump failed on {cubin.name}:\n{sass.stderr}")
            if sass_dir:
                sass_dir.mkdir(parents=True, exist_ok=True)
                (sass_dir / f"{cu.stem}.{arch}.sass").write_text(sass.stdout)
            parse_sass(sass.stdout, kernels)
            names = demangle(list(kernels), t.get("c++filt"))
            for k in kernels.values():
                k.name = names[k.mangled]
                check(k)
                results.append(k)
    results.sort(key=lambda k: (k.arch, k.base, k.name))
    return results


def probes(arch: str = "sm_90") -> dict[str, tuple[int, int]]:
    """SASS instructions and MUFU of each probe kernel (tools/codegen_probes.cu) beyond probe_copy's."""
    t = tools()
    env = dict(os.environ)
    env["NVDISASM_PATH"] = str(Path(t["nvdisasm"]).parent)
    with tempfile.TemporaryDirectory(prefix="genfast-probes-") as tmp:
        src = Path(__file__).resolve().parent / "codegen_probes.cu"
        cubin = Path(tmp) / "probes.cubin"
        cmd = [t["nvcc"], "-cubin", f"-arch={arch}", "-O3", "-std=c++17", f"-I{KERNELS}", f"-I{ROOT / 'csrc'}",
               "-DGENFAST_WITH_CUDA=1", "-o", str(cubin), str(src)]
        subprocess.run(cmd, check=True, capture_output=True)
        sass = subprocess.run([t["cuobjdump"], "-sass", str(cubin)], capture_output=True, text=True, env=env,
                              check=True).stdout
    counts: dict[str, list[int]] = {}
    name = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            counts[name] = [0, 0]
            continue
        m = INSTR.match(line)
        if m and name:
            op = re.sub(r"^@!?U?P\w+\s+", "", m.group(1))
            if op.startswith("NOP") or re.match(r"BRA 0x[0-9a-f]+$", op) and False:
                continue
            counts[name][0] += 1
            counts[name][1] += bool(MUFU.search(op))
    base = counts.pop("probe_copy")
    return {k: (v[0] - base[0], v[1] - base[1]) for k, v in sorted(counts.items())}


def markdown(results: list[Kernel]) -> str:
    head = ("| arch | kernel | regs | spill st/ld B | stack B | smem B | LDG.128 | STG.128 | LDG/STG narrower | "
            "LDL/STL | MUFU | SASS instr | gate |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for k in results:
        gate = "ok" if not k.problems else "FAIL: " + "; ".join(k.problems)
        rows.append(f"| {k.arch} | `{k.name}` | {k.registers} | {k.spill_stores}/{k.spill_loads} | {k.stack} | {k.smem} | "
                    f"{k.ldg128} | {k.stg128} | {k.ldg_narrow}/{k.stg_narrow} | {k.local} | {k.mufu} | "
                    f"{k.instructions} | {gate} |")
    return head + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print it)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--sass-dir", type=Path, help="keep the SASS listings here")
    parser.add_argument("--probes", action="store_true",
                        help="print the building-block instruction counts of tools/codegen_probes.cu and exit")
    parser.add_argument("--kernels", type=Path, default=KERNELS,
                        help="kernels/ folder of a checkout (its csrc/ beside it); default: this one")
    ns = parser.parse_args()
    if ns.probes:
        for arch in ns.arch:
            for k, (n, mufu) in probes(arch).items():
                print(f"{arch} {k}: {n} instructions beyond a copy, {mufu} MUFU")
        return 0
    try:
        results = analyse(ns.arch, ns.sass_dir, ns.kernels.resolve())
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    table = markdown(results)
    if ns.markdown:
        ns.markdown.write_text(table)
    print(table)
    if ns.json:
        ns.json.write_text(json.dumps([asdict(k) | {"base": k.base} for k in results], indent=1))
    bad = [k for k in results if k.problems]
    seen = {k.base for k in results}
    missing = sorted(set(EXPECTED) - seen)
    for name in missing:
        print(f"cuda_codegen: kernel {name} not found in any cubin", file=sys.stderr)
    for k in bad:
        print(f"cuda_codegen: FAIL {k.arch} {k.name}: {'; '.join(k.problems)}", file=sys.stderr)
    print(f"cuda_codegen: {len(results)} kernels, {len(bad)} failing the gate", file=sys.stderr)
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())
