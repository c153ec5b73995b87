"""The nvcc codegen gate (tools/cuda_codegen.py): kernels/*.cu for sm_80 and sm_90 without spills, stack
frames or local-memory traffic, and with the 128-bit global accesses their element-wise loops need.
Skipped without nvcc or without the disassembler (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("genfast_cuda_codegen", ROOT / "tools" / "cuda_codegen.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


codegen = _load_tool()
try:
    codegen.tools()
    _MISSING = None
except FileNotFoundError as exc:
    _MISSING = str(exc)


@pytest.fixture(scope="module")
def results():
    if _MISSING:
        pytest.skip(_MISSING)
    return codegen.analyse(["sm_80", "sm_90"])


def test_every_kernel_passes_the_gate(results):
    assert {k.base for k in results} == set(codegen.EXPECTED)
    assert len({k.arch for k in results}) == 2
    failing = [f"{k.arch} {k.name}: {'; '.join(k.problems)}" for k in results if k.problems]
    assert not failing, "\n".join(failing)


def test_gate_reads_real_numbers(results):
    # the parse found the ptxas report and the SASS of every kernel (a broken parse must not pass as "clean")
    for k in results:
        assert k.registers > 0 and k.instructions > 50, k
        assert k.ldg128 + k.stg128 > 0, k
    # the reductions use shared memory and the noisy kernels the special-function unit
    assert all(k.smem > 0 for k in results if k.base in ("norm_penalty_kernel", "vae_forward_kernel"))
    assert all(k.mufu > 0 for k in results if k.base in ("random_fill_kernel", "diffusion_step_kernel"))


def test_gate_flags_a_lost_vector_access_and_local_memory():
    k = codegen.Kernel("sm_90", "x", name="interpolate_kernel<float>", registers=20, ldg128=2, stg128=0, local=3)
    codegen.check(k)
    assert any("128-bit global stores" in p for p in k.problems)
    assert any("local-memory" in p for p in k.problems)
    ok = codegen.Kernel("sm_90", "y", name="interpolate_kernel<float>", registers=20, ldg128=2, stg128=1)
    codegen.check(ok)
    assert ok.problems == []
