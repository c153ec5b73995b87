"""The genfast command."""
import subprocess
import sys

import pytest

from genfast.cli import main


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("reference", "triton", "cuda", "cpu"):
        assert name in out
    assert "torch" in out


def test_demo_checks_the_backend_against_the_reference(capsys):
    assert main(["demo", "--n", "1000", "--device", "cpu", "--backend", "reference"]) == 0
    assert "max |backend - reference| = 0.00e+00" in capsys.readouterr().out


def test_unavailable_backend_is_one_line_and_nonzero(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert main(["demo", "--n", "10", "--device", "cpu", "--backend", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unavailable" in err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "genfast", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "backends:" in proc.stdout


def test_bench_runs_an_op_script_with_its_arguments(capsys, monkeypatch):
    import os

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert main(["bench", "random", "--device", "cpu", "--sizes", "10"]) == 0
    out = capsys.readouterr().out
    assert "torch.randn" in out and "genfast reference" in out and "% of copy BW" in out


def test_unknown_command_arguments_are_rejected():
    with pytest.raises(SystemExit) as exc:
        main(["info", "--bogus"])
    assert exc.value.code == 2
