"""Run tests against an AddressSanitizer + UBSan build of genfast._C_emulated (the CUDA kernels on the CPU).

compute-sanitizer's memcheck, for the machine without a GPU: every global-memory access of the kernels is
checked by ASan (torch's CPU tensors come from malloc, so ASan knows their bounds), UBSan checks
misaligned pointers, overflow and the rest; one report fails the run (-fno-sanitize-recover).

    python tools/emulation_sanitizers.py [--build-dir DIR] [-- PYTEST ARGS...]

Builds the variant (CMake, GENFAST_EMULATION_ONLY + GENFAST_EMULATION_SANITIZERS) into an overlay copy of
the genfast package, then runs pytest in a subprocess whose PYTHONPATH puts the overlay first and whose
LD_PRELOAD loads the ASan runtime before Python (ASan must come first in the process). The race check is
absent from this build (ThreadSanitizer's instrumentation and ASan exclude each other); the plain
emulated module has it. Default tests: tests/test_cuda_emulation_layer.py and the cuda-emulated cases of
the op tests.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The op tests, run on their cuda-emulated cases (the backend the conftest parametrizes them with).
OP_TESTS = ("test_random.py", "test_diffusion_ops.py", "test_gradient_penalty.py", "test_vae.py", "test_ops_direct.py")


def _cmake() -> str:
    try:
        import cmake  # the pip wheel, where present

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except Exception:
        found = shutil.which("cmake")
        if not found:
            sys.exit("emulation_sanitizers: cmake not found")
        return found


def _runtime(name: str, compiler: str = "c++") -> str:
    out = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"emulation_sanitizers: {compiler} has no {name}")
    return os.path.realpath(path)


def preload() -> str:
    """LD_PRELOAD for an ASan-instrumented extension in a plain Python: the ASan runtime first (it must
    initialize before anything else), then libstdc++, so that ASan's __cxa_throw interceptor finds the real
    function at start-up (Python itself does not link libstdc++; without it the first C++ exception
    thrown by the module trips ASan's "real___cxa_throw != 0" check)."""
    return " ".join([_runtime("libasan.so"), _runtime("libstdc++.so")])


def build(build_dir: Path, overlay: Path) -> Path:
    import pybind11

    pkg = overlay / "genfast"
    if pkg.exists():
        shutil.rmtree(pkg)
    # the pure-Python package, without compiled modules: the overlay's only extension is the ASan build
    shutil.copytree(ROOT / "genfast", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    args = [_cmake(), "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            "-DGENFAST_EMULATION_ONLY=ON", "-DGENFAST_EMULATION_SANITIZERS=ON", f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={pkg}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    subprocess.run([_cmake(), "--build", str(build_dir), "--parallel", jobs], check=True)
    return pkg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", type=Path, default=None, help="CMake build folder (default: a temporary one)")
    parser.add_argument("--overlay", type=Path, default=None, help="where to put the overlay package (default: temporary)")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest arguments")
    ns = parser.parse_args()
    t = ROOT / "tests"
    tests = ns.pytest_args or ["-q", str(t / "test_cuda_emulation_layer.py"), *(str(t / f) for f in OP_TESTS),
                               "-k", "cuda-emulated or test_cuda_emulation_layer"]
    with tempfile.TemporaryDirectory(prefix="genfast-asan-") as tmp:
        build_dir = ns.build_dir or Path(tmp) / "build"
        overlay = ns.overlay or Path(tmp) / "overlay"
        overlay.mkdir(parents=True, exist_ok=True)
        build(build_dir, overlay)
        env = dict(os.environ)
        # the overlay's genfast first; the checkout after it, for `tests.tolerances` (not for genfast)
        env["PYTHONPATH"] = os.pathsep.join([str(overlay), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["LD_PRELOAD"] = " ".join(filter(None, [preload(), env.get("LD_PRELOAD", "")]))
        # Python and torch keep memory until exit by design: no leak report. Stop at the first error. The
        # reports go to files (pytest's capture would swallow them when the process aborts), printed below.
        log = Path(tmp) / "sanitizer"
        env["ASAN_OPTIONS"] = f"detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0:log_path={log}"
        env["UBSAN_OPTIONS"] = f"print_stacktrace=1:halt_on_error=1:log_path={log}"
        env["GENFAST_EXPECT_SANITIZERS"] = "1"  # the tests check that the overlay's module is the ASan one
        print(f"== pytest {' '.join(tests)} with {env['LD_PRELOAD']}", flush=True)
        # cwd: the overlay, since `python -m` puts the working directory first on sys.path
        rc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                             *tests], env=env, cwd=overlay).returncode
        reports = sorted(Path(tmp).glob("sanitizer*"))
        for report in reports:
            print(report.read_text(errors="replace"), file=sys.stderr)
        if rc < 0:
            print(f"emulation_sanitizers: pytest died of signal {-rc}", file=sys.stderr)
        if reports and rc == 0:
            rc = 1  # a report is a failure even if the process survived it
        return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
