"""torchrun with 2 processes on the CPU (gloo): sampling splits the batch and gathers one grid, training
runs DistributedDataParallel and keeps the ranks' weights identical."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _torchrun(args, tmp_path, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_sample_gathers_the_same_grid_as_one_process(tmp_path):
    from genfast.cli import main
    from genfast.training.zoo import embedded_path

    if not embedded_path("vae").exists():
        pytest.skip("the embedded vae weights are not in this checkout")
    proc = _torchrun(["-m", "genfast", "sample", "--model", "vae", "--num-images", "11", "--seed", "3",
                      "--out", str(tmp_path / "two.png"), "--device", "cpu", "--quiet"], tmp_path)
    assert "x 2 processes" in proc.stdout and proc.stdout.count("wrote") == 1  # rank 0 alone writes
    assert main(["sample", "--model", "vae", "--n", "11", "--seed", "3", "--out", str(tmp_path / "one.png"),
                 "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "two.png").read_bytes() == (tmp_path / "one.png").read_bytes()


@pytest.mark.parametrize("model", ["vae", "wgan-gp"])
def test_torchrun_train_keeps_ranks_in_sync(tmp_path, model):
    result = tmp_path / "result.json"
    _torchrun([str(REPO / "tests" / "dist_train_check.py"), model, str(tmp_path / "run"), str(result)], tmp_path)
    got = json.loads(result.read_text())
    assert got == {"world": 2, "same": True, "step": 3}
    assert (tmp_path / "run" / "last.safetensors").exists()
