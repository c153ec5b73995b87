"""Proof that the emulated CUDA tests can fail: plant bugs in a copy of kernels/*.cu and see each one caught.

    python tools/mutation_check.py [--build-dir DIR] [--only NAME ...]

Copies kernels/ to a temporary folder, builds genfast._C_emulated from the copy (CMake,
GENFAST_EMULATION_ONLY), checks that the pristine copy passes the selected tests, then for each mutation:
restores the pristine sources, applies the mutation (one exact text replacement), rebuilds (one
translation unit and the link) and runs the tests that should notice it, in a subprocess whose
`genfast` package is an overlay holding the mutant module. A mutation counts as caught when those tests
fail; the line that failed them (a KernelFault from the layer's checks, a mismatch with the reference,
an overwritten guard band) is printed. Exit status 0 only if every mutation is caught.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "test_cuda_emulation_layer.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to kernels/
    old: str
    new: str
    tests: str  # pytest -k expression that must fail
    what: str


MUTATIONS = [
    Mutation("tail-off-by-one", "random.cu",
             "for (int k = 0; k < kElems && base + k < n; ++k) out[base + k] = vals[k];",
             "for (int k = 0; k < kElems && base + k <= n; ++k) out[base + k] = vals[k];",
             "random_stream_matches_reference", "the scalar tail of random_fill_kernel writes one element too many"),
    Mutation("removed-syncthreads", "gradient_penalty.cu",
             "  if (lane == 0) shared[warp] = v;\n  __syncthreads();\n",
             "  if (lane == 0) shared[warp] = v;\n",
             "gp_norm_penalty_and_backward", "block_sum reads the warps' partial sums without the barrier"),
    Mutation("philox-counter", "diffusion.cu",
             "philox_block(seed, offset, static_cast<uint64_t>(g * kCPR + c))",
             "philox_block(seed, offset, static_cast<uint64_t>(g * kCPR))",
             "diffusion_step_matches_reference",
             "fp16/bf16 steps draw both halves of a group from the same Philox counter"),
    Mutation("vector-on-misaligned", "diffusion.cu",
             "auto a16 = [](uintptr_t ptr) { return ptr % 16 == 0; };",
             "auto a16 = [](uintptr_t ptr) { return ptr % 4 == 0; };",
             "diffusion_step_matches_reference", "the 16-byte vector path is taken on 4-byte aligned pointers"),
    Mutation("stale-ticket-counter", "gradient_penalty.cu",
             "  cuda_check(cudaMemsetAsync(reinterpret_cast<void*>(counter), 0, sizeof(unsigned int), s), "
             "\"cudaMemsetAsync (gp ticket counter)\");\n",
             "",
             "gp_norm_penalty_and_backward", "the launcher no longer zeroes the ticket counter before the launch"),
]


def _cmake() -> str:
    found = shutil.which("cmake")
    if not found:
        sys.exit("mutation_check: cmake not found")
    return found


def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def configure(src_kernels: Path, build_dir: Path, out_pkg: Path) -> None:
    import pybind11

    # -O1: the mutants run small test shapes; compiling faster matters more here than running faster
    args = [_cmake(), "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG",
            "-DGENFAST_EMULATION_ONLY=ON", f"-DGENFAST_KERNELS_DIR={src_kernels}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_pkg}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    _run(args, stdout=subprocess.DEVNULL)


def build(build_dir: Path) -> None:
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    _run([_cmake(), "--build", str(build_dir), "--parallel", jobs], stdout=subprocess.DEVNULL)


def run_tests(overlay: Path, selection: str) -> tuple[int, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(overlay), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["GENFAST_MUTANT_MODULE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir",
                           str(ROOT), "-k", selection, str(TESTS)], env=env, cwd=overlay, capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    for pattern in (r"(KernelFault: .*)", r"(AssertionError: .*)", r"(Mismatched elements: .*)", r"^E +(.*)$"):
        m = re.search(pattern, output, re.MULTILINE)
        if m:
            return m.group(1).strip()[:300]
    return output.strip().splitlines()[-1][:300] if output.strip() else "(no output)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="mutation names (default: all)")
    ns = parser.parse_args()
    chosen = [m for m in MUTATIONS if ns.only is None or m.name in ns.only]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="genfast-mutants-") as tmp:
        tmp = Path(tmp)
        kernels = tmp / "kernels"
        shutil.copytree(ROOT / "kernels", kernels)
        pristine = {m.file: (kernels / m.file).read_text() for m in chosen}
        overlay = tmp / "overlay"
        pkg = overlay / "genfast"
        shutil.copytree(ROOT / "genfast", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        build_dir = ns.build_dir or tmp / "build"
        configure(kernels, build_dir, pkg)
        build(build_dir)
        print(f"built the emulated module from the pristine copy ({time.time() - t0:.0f} s)", flush=True)
        selections = sorted({m.tests for m in chosen})
        rc, out = run_tests(overlay, " or ".join(selections))
        if rc != 0:
            print(out[-3000:])
            print("mutation_check: the PRISTINE kernels fail the selected tests; fix that first")
            return 2
        missed = []
        for m in chosen:
            path = kernels / m.file
            for f, text in pristine.items():
                (kernels / f).write_text(text)
            text = pristine[m.file]
            if text.count(m.old) != 1:
                print(f"mutation {m.name}: its text occurs {text.count(m.old)} times in kernels/{m.file} "
                      "(update tools/mutation_check.py to the current source)")
                missed.append(m.name)
                continue
            path.write_text(text.replace(m.old, m.new))
            t1 = time.time()
            build(build_dir)
            rc, out = run_tests(overlay, m.tests)
            caught = rc == 1
            print(f"{'CAUGHT' if caught else 'MISSED'} {m.name} ({m.what}; rebuild + tests "
                  f"{time.time() - t1:.0f} s): {first_failure(out) if caught else 'tests passed'}", flush=True)
            if not caught:
                missed.append(m.name)
        for f, text in pristine.items():
            (kernels / f).write_text(text)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutations caught in {time.time() - t0:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
