"""Build genfast._C with CMake + Ninja (the pattern of pybind11's cmake_example).

The extension is optional: when CMake or a C++ compiler is missing, or the build fails, the package
still installs as pure Python (Triton and reference backends) and `genfast.backends()` says why the
compiled backends are absent.

Environment: GENFAST_CUDA=0 skips the CUDA kernels; GENFAST_CUDA_ARCHS="80;90" picks architectures;
GENFAST_BUILD_TYPE=Debug builds with asserts; GENFAST_REQUIRE_EXT=1 makes a failed build an error;
GENFAST_CUDA_EMULATION=1 also builds genfast._C_emulated, the CUDA kernels compiled for the CPU against
kernels/host_emulation/ (the `cuda-emulated` backend; needs the CUDA toolkit's headers, not a GPU).
"""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: Path = ROOT):
        super().__init__(name, sources=[])
        self.sourcedir = str(sourcedir)


def _cmake_executable():
    try:  # the `cmake` wheel, when pip installed it as a build requirement
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except Exception:
        return shutil.which("cmake")


def _emulation_requested() -> bool:
    return os.environ.get("GENFAST_CUDA_EMULATION", "0") == "1"


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        try:
            if ext.name == "genfast._C_emulated":
                # One CMake run (for genfast._C) builds both modules; this extension is declared only so
                # that setuptools installs its file (an editable install copies declared outputs only).
                built = Path(self.get_ext_fullpath(ext.name))
                if not built.exists():
                    raise RuntimeError(f"the CMake build did not produce {built.name}")
                return
            self._build(ext)
        except Exception as exc:  # the pure-Python install must still succeed
            if os.environ.get("GENFAST_REQUIRE_EXT", "0") == "1":
                raise
            warnings.warn(
                f"genfast: building the compiled extension failed ({exc}); installing the pure-Python "
                "package. The 'cpu' and 'cuda' backends will be unavailable; genfast.backends() says why."
            )
            print(f"WARNING: genfast._C not built: {exc}", file=sys.stderr)

    def _build(self, ext: CMakeExtension) -> None:
        cmake = _cmake_executable()
        if cmake is None:
            raise RuntimeError("cmake not found")
        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = os.environ.get("GENFAST_BUILD_TYPE", "Release")
        import pybind11

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DGENFAST_CUDA={os.environ.get('GENFAST_CUDA', '1')}",
        ]
        emulation = "ON" if _emulation_requested() else "OFF"
        args.append(f"-DGENFAST_CUDA_EMULATION={emulation}")
        archs = os.environ.get("GENFAST_CUDA_ARCHS")
        if archs:
            args.append(f"-DGENFAST_CUDA_ARCHS={archs}")
        ninja = shutil.which("ninja")
        try:
            import ninja as ninja_mod

            ninja = str(Path(ninja_mod.BIN_DIR) / "ninja")
        except Exception:
            pass
        if ninja:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run([cmake, ext.sourcedir, *args], cwd=build_temp, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


_extensions = [CMakeExtension("genfast._C")]
if _emulation_requested():
    _extensions.append(CMakeExtension("genfast._C_emulated"))
setup(ext_modules=_extensions, cmdclass={"build_ext": CMakeBuild})
