"""Backend discovery and dispatch (design.md, "Backends and dispatch")."""
import pytest
import torch

import genfast
from genfast import _backend


def test_backends_report_every_backend_with_a_reason():
    info = genfast.backends()
    assert set(info) == {"reference", "triton", "cuda", "cpu", "cuda-emulated"}
    assert info["reference"].available
    for b in info.values():
        assert b.reason, f"{b.name} has no reason"
        assert str(b).startswith(b.name)
    if not torch.cuda.is_available():
        assert not info["cuda"].available and "CUDA" in info["cuda"].reason or "extension" in info["cuda"].reason


def test_default_backend_per_device():
    cpu_expected = "cpu" if genfast.backends()["cpu"].available else "reference"
    assert _backend.select_backend("random", torch.device("cpu")) == cpu_expected
    assert _backend.select_backend("random", torch.device("meta")) == "reference"
    if torch.cuda.is_available():
        assert _backend.select_backend("random", torch.device("cuda")) in ("cuda", "triton")


def test_use_backend_nests_and_restores():
    with genfast.use_backend("reference"):
        assert _backend.forced_backend() == "reference"
        with genfast.use_backend(None):
            assert _backend.forced_backend() is None
        assert _backend.select_backend("random", torch.device("cpu")) == "reference"
    assert _backend.forced_backend() is None


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv("GENFAST_BACKEND", "reference")
    assert _backend.select_backend("random", torch.device("cpu")) == "reference"
    with genfast.use_backend("cpu" if genfast.backends()["cpu"].available else "reference"):
        assert _backend.forced_backend() != "triton"  # the context manager wins over the variable


def test_unknown_backend_names_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="use_backend"):
        with genfast.use_backend("cudnn"):
            pass
    monkeypatch.setenv("GENFAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="GENFAST_BACKEND"):
        genfast.ops.randn(3, seed=0)
