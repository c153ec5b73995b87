"""benchmarks/gpu_check.sh, the one command for a GPU machine, tested where there is none: its syntax,
its dry run (every step named with its command), and its step runner with a stand-in interpreter
(a failed step and a step over its time limit are reported, and the run goes on past them)."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "build", "info", "tests", "memcheck", "racecheck", "bench_small", "bench_default", "sampling"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(out: Path, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def _rows(summary: Path) -> dict:
    rows = {}
    for line in summary.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in STEPS:
            rows[cells[0]] = cells
    return rows


def test_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dry_run_names_every_step_and_its_command(tmp_path):
    proc = _run(tmp_path / "out", GPU_CHECK_DRY_RUN="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(tmp_path / "out" / "summary.md")
    assert list(rows) == STEPS
    assert all(r[1] == "dry-run" for r in rows.values())
    assert "pip install -e . --no-build-isolation" in rows["build"][3]
    assert "-m pytest" in rows["tests"][3]
    for tool in ("memcheck", "racecheck"):
        command = rows[tool][3]
        assert f"--tool {tool}" in command and "-k cuda" in command
        for test_file in ("test_random.py", "test_diffusion_ops.py", "test_gradient_penalty.py", "test_vae.py"):
            assert test_file in command
    for size in ("small", "default"):
        assert f"genfast bench --json --device cuda --size {size}" in rows[f"bench_{size}"][3]
    assert "bench_sampling_loop.py" in rows["sampling"][3]
    # the default limits fit in the 10 minutes of one device command
    limits = [int(x) for x in __import__("re").findall(r"\(limit (\d+)s\)", proc.stdout)]
    assert len(limits) == len(STEPS) and sum(limits) < 600


def test_no_gpu_is_reported(tmp_path):
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\nexit 1\n")  # torch.cuda.is_available() -> False
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    proc = _run(tmp_path / "out", PYTHON=str(stub))
    assert proc.returncode == 2
    assert "no CUDA device" in (tmp_path / "out" / "summary.md").read_text()


def test_failed_and_slow_steps_are_reported_and_the_run_goes_on(tmp_path):
    # A stand-in for python (and for compute-sanitizer): pytest runs too long, `genfast bench` fails,
    # everything else succeeds and says which step it was.
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\n"
                    "case \"$*\" in\n"
                    "  *'-m pytest'*) sleep 30 ;;\n"
                    "  *'genfast bench --help'*) echo '  --size {small,default}' ;;\n"
                    "  *'genfast bench'*) echo 'bench broke' >&2; exit 3 ;;\n"
                    "  *) echo \"stub ran: $*\" ;;\n"
                    "esac\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    sanitizer = tmp_path / "compute-sanitizer"
    sanitizer.write_text("#!/usr/bin/env bash\nwhile [ \"$1\" != \"$PYTHON\" ]; do shift; done\nexec \"$@\"\n")
    sanitizer.chmod(sanitizer.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    proc = _run(out, PYTHON=str(stub), COMPUTE_SANITIZER=str(sanitizer), GPU_CHECK_FORCE="1",
                GPU_CHECK_T_TESTS="1", GPU_CHECK_T_MEMCHECK="1", GPU_CHECK_T_RACECHECK="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _rows(out / "summary.md")
    assert rows["build"][1] == "ok" and "pip install -e . --no-build-isolation" in rows["build"][3]
    for step in ("tests", "memcheck", "racecheck"):
        assert rows[step][1] == "timeout (1s)", rows[step]
    for size in ("small", "default"):
        assert rows[f"bench_{size}"][1] == "fail (exit 3)", rows[f"bench_{size}"]
        assert "bench broke" in (out / "logs" / f"bench_{size}.log").read_text()
    assert rows["sampling"][1] == "ok"  # ran after the failures
    assert (out / "logs.tar.gz").is_file()
