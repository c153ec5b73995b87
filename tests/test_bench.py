"""`genfast bench` (genfast/bench.py): runs from the installed package, checks kernels before timing them,
and reports self-consistent figures. No assertion here is about speed."""
import argparse
import contextlib
import io
import json

import pytest
import torch

import genfast
import genfast.cli.bench as bench

ELEMENTS = 4 * 3 * 8 * 8  # the --size small shape
BYTES_PER_ELEMENT = {"randn": 1, "ddim eta=0": 3, "ddim eta=1": 3, "ddpm": 3, "norm penalty fwd+bwd": 3,
                     "interpolate": 3, "reparameterize_kl fwd+bwd": 8}


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_json(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench.run(parse("--device", "cpu", "--size", "small", "--json", *argv)) == 0
    return json.loads(out.getvalue())  # the whole of stdout is one JSON object


@pytest.fixture(scope="module")
def report():
    return run_json()


def test_every_op_has_eager_and_each_cpu_backend(report):
    rows = report["rows"]
    assert {r["op"] for r in rows} == set(bench.OPS)
    expected = {"eager", "reference"} | ({"cpu"} if genfast.backends()["cpu"].available else set())
    for op, variant in {(r["op"], r["variant"]) for r in rows}:
        assert {r["backend"] for r in rows if (r["op"], r["variant"]) == (op, variant)} == expected, (op, variant)
    assert {r["variant"] for r in rows} == set(BYTES_PER_ELEMENT)
    assert all(r["shape"] == "4x3x8x8" and r["dtype"] == "float32" for r in rows)


def test_figures_are_consistent(report):
    copy = report["machine"]["copy_bandwidth_gbs"]
    assert copy > 0 and report["machine"]["torch"] == torch.__version__
    eager = {(r["op"], r["variant"]): r["us"] for r in report["rows"] if r["backend"] == "eager"}
    for r in report["rows"]:
        assert r["us"] > 0
        assert r["bytes"] == BYTES_PER_ELEMENT[r["variant"]] * ELEMENTS * 4
        assert r["GB/s"] == pytest.approx(r["bytes"] / r["us"] / 1e3, rel=1e-9)
        assert r["pct_of_copy_bw"] == pytest.approx(100 * r["GB/s"] / copy, rel=1e-9)
        assert r["speedup_vs_eager"] == pytest.approx(eager[(r["op"], r["variant"])] / r["us"], rel=1e-9)


def test_table_mode_and_repeated_op(capsys):
    assert bench.run(parse("--device", "cpu", "--size", "small", "--op", "vae", "--op", "vae")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "copy bandwidth" in lines[0] and "torch" in lines[0]
    assert lines[2].startswith("| op | variant | backend |") and "% of copy BW" in lines[2]
    body = lines[4:]
    assert len(body) == len(bench.genfast_backends(torch.device("cpu"))) + 1  # vae once, not twice
    assert all(line.startswith("| vae | reparameterize_kl fwd+bwd |") for line in body)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ValueError, match="--device") as exc:
        bench.run(parse("--device", "cuda"))
    assert "\n" not in str(exc.value)


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
        bench.run(parse("--device", "cpu", "--size", "small", "--op", op))
    assert capsys.readouterr().out == ""  # no figure for a wrong kernel
