"""`genfast bench` (genfast/cli/bench.py): runs from the installed package, checks kernels before timing them,
times every candidate in interleaved repetitions next to a copy of the same footprint, and reports
self-consistent figures (JSON, table, plot). No assertion here is about speed."""
import argparse
import contextlib
import io
import json
import statistics
import sys

import pytest
import torch

import genfast
import genfast.cli.bench as bench
from genfast.cli import main as cli_main

ELEMENTS = 4 * 3 * 8 * 8  # the --size small shape
BYTES_PER_ELEMENT = {"randn": 1, "ddim eta=0": 3, "ddim eta=1": 3, "ddim eta=1 noise tensor": 4, "ddpm": 3,
                     "ddpm clip=1 noise tensor": 4, "norm penalty fwd+bwd": 3, "interpolate": 3,
                     "reparameterize_kl fwd+bwd": 8}
REPS = 3


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_json(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench.run(parse("--device", "cpu", "--size", "small", "--json", "--reps", str(REPS), *argv)) == 0
    return json.loads(out.getvalue())  # the whole of stdout is one JSON object


@pytest.fixture(scope="module")
def report():
    return run_json("--no-compile")


@pytest.fixture(scope="module")
def compiled_report():
    return run_json("--op", "gradient_penalty")  # torch.compile rows, for one op (compiling takes seconds)


def test_every_op_has_eager_and_each_cpu_backend(report):
    rows = report["rows"]
    assert {r["op"] for r in rows} == set(bench.OPS)
    expected = {"eager", "reference"} | ({"cpu"} if genfast.backends()["cpu"].available else set())
    for op, variant in {(r["op"], r["variant"]) for r in rows}:
        assert {r["backend"] for r in rows if (r["op"], r["variant"]) == (op, variant)} == expected, (op, variant)
    assert {r["variant"] for r in rows} == set(BYTES_PER_ELEMENT)
    assert all(r["shape"] == "4x3x8x8" and r["dtype"] == "float32" for r in rows)


def test_figures_are_consistent(report):
    m = report["machine"]
    assert m["copy_bandwidth_gbs"] > 0 and m["torch"] == torch.__version__
    assert m["llc_bytes"] > 0 and m["cpu_isa"] in ("base", "avx2", "avx512") and m["threads"] >= 1
    assert report["reps"] == REPS
    eager = {(r["op"], r["variant"]): r["us"] for r in report["rows"] if r["backend"] == "eager"}
    for r in report["rows"]:
        assert len(r["samples_us"]) == REPS and all(s > 0 for s in r["samples_us"])
        assert r["us"] == pytest.approx(statistics.median(r["samples_us"]), rel=1e-12)
        assert r["us_min"] == min(r["samples_us"]) and r["spread_pct"] >= 0
        assert r["bytes"] == BYTES_PER_ELEMENT[r["variant"]] * ELEMENTS * 4
        assert r["GB/s"] == pytest.approx(r["bytes"] / r["us"] / 1e3, rel=1e-9)
        # the copy moved the case's footprint (read + written) alongside it
        assert r["copy_us"] > 0 and r["copy_gbs"] == pytest.approx(r["bytes"] / r["copy_us"] / 1e3, rel=1e-9)
        assert r["pct_of_copy_bw"] == pytest.approx(100 * r["GB/s"] / r["copy_gbs"], rel=1e-9)
        assert r["speedup_vs_eager"] == pytest.approx(eager[(r["op"], r["variant"])] / r["us"], rel=1e-9)
        assert r["speedup_vs_compile"] is None  # --no-compile


def test_torch_compile_rows(compiled_report):
    rows = compiled_report["rows"]
    assert {r["op"] for r in rows} == {"gradient_penalty"}
    for variant in ("norm penalty fwd+bwd", "interpolate"):
        by_backend = {r["backend"]: r for r in rows if r["variant"] == variant}
        assert "torch.compile" in by_backend and "eager" in by_backend
        compile_us = by_backend["torch.compile"]["us"]
        for r in by_backend.values():
            assert r["speedup_vs_compile"] == pytest.approx(compile_us / r["us"], rel=1e-9)
        assert by_backend["torch.compile"]["speedup_vs_compile"] == pytest.approx(1.0)


def test_goals_are_checked_on_the_rows(compiled_report):
    goals = compiled_report["goals"]
    cpu = {r["variant"]: r for r in compiled_report["rows"] if r["backend"] == "cpu"}
    if not cpu:
        pytest.skip("the cpu backend is not built")
    by_goal = {(g["case"], g["goal"]): g for g in goals}
    g = by_goal[("gradient_penalty norm penalty fwd+bwd", ">= 1.3x torch.compile")]
    assert g["value"] == cpu["norm penalty fwd+bwd"]["speedup_vs_compile"] and g["met"] == (g["value"] >= 1.3)
    g = by_goal[("gradient_penalty interpolate", ">= 1x eager")]
    assert g["value"] == cpu["interpolate"]["speedup_vs_eager"]
    assert not any("bandwidth" in g["goal"] for g in goals)  # no out-of-cache shape in --size small


def test_goal_thresholds():
    def row(backend, variant, **kw):
        return {"op": "op", "variant": variant, "shape": "s", "backend": backend, **kw}

    rows = [row("cpu", "noisy", speedup_vs_compile=2.9, speedup_vs_eager=5, pct_of_copy_bw=81, draws_noise=True),
            row("cpu", "plain", speedup_vs_compile=1.31, speedup_vs_eager=5, pct_of_copy_bw=79, draws_noise=False),
            row("cpu", "interpolate", speedup_vs_compile=None, speedup_vs_eager=0.99, pct_of_copy_bw=90),
            row("eager", "plain", speedup_vs_compile=0.5, speedup_vs_eager=1, pct_of_copy_bw=10)]
    got = {(g["case"], g["goal"]): g["met"] for g in bench.cpu_goals(rows, {"s"})}
    assert got == {("op noisy", ">= 3x torch.compile"): False, ("op noisy", ">= 80% of copy bandwidth"): True,
                   ("op plain", ">= 1.3x torch.compile"): True, ("op plain", ">= 80% of copy bandwidth"): False,
                   ("op interpolate", ">= 1x eager"): False, ("op interpolate", ">= 80% of copy bandwidth"): True}


def test_interleaving_rotates_the_order():
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = bench.interleaved_us(candidates, torch.device("cpu"), reps=3, batch_us=0.0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    timed = calls[3 * 2:]  # after each candidate's warm-up call and single timing call
    assert timed == list("abc") + list("bca") + list("cab")


def test_shapes():
    llc = 32 << 20
    assert bench.out_of_cache_shape(torch.float32, llc) == (32, 3, 256, 256)
    assert bench.out_of_cache_shape(torch.bfloat16, llc) == (64, 3, 256, 256)
    big = bench.out_of_cache_shape(torch.float32, 256 << 20)  # scales with the cache
    assert big[0] * 3 * 256 * 256 * 4 >= 0.74 * (256 << 20)
    cpu = torch.device("cpu")
    assert bench.bench_shapes(cpu, "default", torch.float32) == [bench.CPU_CACHED_SHAPE,
                                                                 bench.out_of_cache_shape(torch.float32)]
    assert bench.bench_shapes(cpu, "small", torch.float32) == [bench.SMALL_SHAPE]


def test_table_mode_and_repeated_op(capsys):
    assert bench.run(parse("--device", "cpu", "--size", "small", "--op", "vae", "--op", "vae", "--reps", "2",
                           "--no-compile")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "copy bandwidth" in lines[0] and "torch" in lines[0] and "LLC" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("| op | variant | backend |"))
    assert "% of copy BW" in lines[header] and "vs torch.compile" in lines[header] and "spread" in lines[header]
    body = [line for line in lines[header + 2:] if line.startswith("|")]
    assert len(body) == len(bench.genfast_backends(torch.device("cpu"))) + 1  # vae once, not twice
    assert all(line.startswith("| vae | reparameterize_kl fwd+bwd |") for line in body)
    assert lines[-1].startswith("load average before")


def test_bad_reps_or_threads_is_a_clear_error():
    with pytest.raises(ValueError, match="--reps"):
        bench.run(parse("--device", "cpu", "--size", "small", "--reps", "0"))
    with pytest.raises(ValueError, match="--threads"):
        bench.run(parse("--device", "cpu", "--size", "small", "--threads", "0"))


def test_threads_option_applies_to_the_run_only():
    before = torch.get_num_threads()
    doc = run_json("--op", "random", "--no-compile", "--threads", "1")
    assert doc["machine"]["threads"] == 1 and torch.get_num_threads() == before


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ValueError, match="--device") as exc:
        bench.run(parse("--device", "cuda"))
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# --plot
# ---------------------------------------------------------------------------------------------
def test_plot_draws_the_report(tmp_path, report):
    pytest.importorskip("matplotlib")
    for suffix, magic in ((".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")):
        path = tmp_path / f"bench{suffix}"
        bench.plot_report(report, path)
        assert path.read_bytes().startswith(magic)


def test_plot_option_writes_the_file(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "out" / "bench.png"
    doc = run_json("--op", "random", "--no-compile", "--plot", str(path))
    assert doc["rows"] and path.read_bytes().startswith(b"\x89PNG")


def test_plot_without_matplotlib_is_a_one_line_error_before_any_timing(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    timed = []
    monkeypatch.setattr(bench, "interleaved_us", lambda *a, **k: timed.append(1))
    path = tmp_path / "bench.png"
    code = cli_main(["bench", "--device", "cpu", "--size", "small", "--plot", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not timed and not path.exists()
    assert "\n" not in err and "matplotlib" in err and err.startswith("genfast bench: error:")


@pytest.mark.parametrize("name, message", [("bench.txt", r"\.png, \.pdf or \.svg"), ("", "directory")])
def test_bad_plot_path_is_refused_before_any_timing(tmp_path, monkeypatch, name, message):
    pytest.importorskip("matplotlib")
    timed = []
    monkeypatch.setattr(bench, "interleaved_us", lambda *a, **k: timed.append(1))
    target = tmp_path / name if name else tmp_path / "dir.png"
    if not name:
        target.mkdir()
    with pytest.raises(ValueError, match=message):
        bench.run(parse("--device", "cpu", "--size", "small", "--plot", str(target)))
    assert not timed


@pytest.mark.skipif(not genfast.backends()["cpu"].available, reason="the cpu backend is not built")
@pytest.mark.parametrize("op, module, table", [
    ("random", "genfast.ops.random", "random_fill"),  # a forward kernel
    ("gradient_penalty", "genfast.ops.gradient_penalty", "norm_penalty_backward_kernel"),  # a backward kernel
])
def test_a_wrong_kernel_is_caught_before_timing(monkeypatch, capsys, op, module, table):
    import importlib

    kernels = getattr(importlib.import_module(module), table).impls
    right = kernels["cpu"]

    def off_by_a_tenth_of_a_percent(launch, *args):  # the output: last argument of the backward, first of random
        right(launch, *args)
        args[-1].mul_(1.001) if table == "norm_penalty_backward_kernel" else args[0].mul_(1.001)

    monkeypatch.setitem(kernels, "cpu", off_by_a_tenth_of_a_percent)
    with pytest.raises(RuntimeError, match=f"{op} .*cpu backend disagrees with the reference"):
        bench.run(parse("--device", "cpu", "--size", "small", "--op", op, "--no-compile"))
    assert capsys.readouterr().out == ""  # no figure for a wrong kernel
