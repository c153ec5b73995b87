"""Proof that the emulated CUDA tests can fail (tools/mutation_check.py): bugs planted in a copy of
kernels/*.cu -- an off-by-one in a tail, a removed __syncthreads, a wrong Philox counter, a vector path on a
misaligned pointer, a stale ticket counter -- are each caught by the layer's checks or by the comparison
with the reference. Rebuilds the emulated module in a temporary folder (about 2 minutes on 2 cores).
Skipped when genfast._C_emulated is not built here (its build needs the CUDA toolkit's headers) or
GENFAST_SKIP_MUTATIONS=1."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_planted_bug_is_caught():
    if os.environ.get("GENFAST_SKIP_MUTATIONS") == "1":
        pytest.skip("GENFAST_SKIP_MUTATIONS=1")
    if os.environ.get("GENFAST_MUTANT_MODULE") == "1":
        pytest.skip("already inside a mutation run")
    try:
        from genfast import _C_emulated  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"genfast._C_emulated is not built ({exc})")
    if not shutil.which("cmake") or not shutil.which("c++"):
        pytest.skip("cmake or a C++ compiler is missing")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "mutation_check.py")], capture_output=True, text=True,
                          timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    spec = importlib.util.spec_from_file_location("genfast_mutation_check", ROOT / "tools" / "mutation_check.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    spec.loader.exec_module(tool)
    assert len(tool.MUTATIONS) >= 4
    for m in tool.MUTATIONS:
        assert f"CAUGHT {m.name}" in out, out[-6000:]
