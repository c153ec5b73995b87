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


def test_bench_subcommand_prints_json_rows_checked_against_the_reference(capsys):
    import json

    assert main(["bench", "--op", "random", "--device", "cpu", "--size", "small", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    backends = {r["backend"] for r in out["rows"]}
    assert {"eager", "cpu"} <= backends and out["machine"]["copy_bandwidth_gbs"] > 0


def test_unknown_command_arguments_are_rejected():
    assert main(["info", "--bogus"]) == 2


# --- genfast sample / train / compare: what a user types, and bad input as one line -------------------
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.parametrize("model", ["vae", "dcgan", "wgan-gp"])
def test_sample_embedded_model_writes_the_grid_of_its_samples(tmp_path, capsys, model):
    from genfast.training.images import make_grid
    from genfast.ops import randn
    from genfast.training.zoo import embedded_path, load_model

    if not embedded_path(model).exists():
        pytest.skip(f"the embedded {model} weights are not in this checkout")
    out = tmp_path / "g.png"
    assert main(["sample", "--model", model, "--n", "6", "--seed", "5", "--out", str(out), "--device", "cpu",
                 "--scale", "1", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "images/s" in line and "backend cpu" in line
    m = load_model(model, None, "cpu")
    z = randn(m.latent_shape(6), seed=5, offset=1 << 41)
    expect = make_grid(m.sample(6, seed=5, init_noise=z), scale=1)
    got = _png(out)
    assert np.abs(got.reshape(expect.shape).astype(int) - expect.astype(int)).max() <= 1


def test_embedded_models_make_distinct_digit_like_images():
    """Not noise and not one image repeated: the embedded generators learned the digits."""
    from genfast.training.data import load_data
    from genfast.training.zoo import EMBEDDED, embedded_path, load_model

    digits = load_data("digits", 16).images
    for kind in EMBEDDED:
        if kind == "ddpm" or not embedded_path(kind).exists():
            continue  # the DDPM takes 50 U-Net calls; its sampler is covered in test_samplers
        x = load_model(kind, None, "cpu").sample(32, seed=1)
        assert x.shape == (32, 1, 16, 16)
        assert abs(x.mean() - digits.mean()) < 0.12, kind           # ink coverage like the digits'
        assert x.flatten(1).std(0).mean() > 0.1, kind               # samples differ from each other
        nearest = torch.cdist(x.flatten(1), digits.flatten(1)).min(1).values
        noise = torch.cdist(torch.rand(32, 256) * digits.max(), digits.flatten(1)).min(1).values
        assert nearest.mean() < 0.6 * noise.mean(), kind             # closer to real digits than noise is


def _one_line_error(capsys, argv, expect, code=2):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expect in err, err


def test_bad_sample_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["sample", "--model", "gan9"], "invalid choice: 'gan9'"),
        (["sample", "--steps", "0"], "--steps: must be a positive integer"),
        (["sample", "--n", "-3"], "--n/--num-images: must be a positive integer"),
        (["sample", "--model", "vae", "--out", str(blocker / "x.png")], "--out: cannot write"),
        (["sample", "--model", "vae", "--checkpoint", str(tmp_path / "none.safetensors"), "--out",
          str(tmp_path / "a.png")], "--checkpoint: no such file"),
        (["sample", "--model", "vae", "--checkpoint", str(bad), "--out", str(tmp_path / "a.png")],
         "not a readable safetensors file"),
        (["sample", "--model", "beta-vae", "--out", str(tmp_path / "a.png")], "no embedded beta-vae model"),
        (["sample", "--model", "vae", "--label", "3", "--out", str(tmp_path / "a.png")], "unconditional"),
        (["sample", "--model", "vae", "--guidance-scale", "3", "--out", str(tmp_path / "a.png")], "unconditional"),
        (["sample", "--model", "vae", "--device", "tpu", "--out", str(tmp_path / "a.png")], "--device"),
        (["sample", "--model", "vae", "--graph", "--out", str(tmp_path / "a.png")], "--graph"),
    ]
    for argv, expect in cases:
        _one_line_error(capsys, argv, expect)
    assert not (tmp_path / "a.png").exists()


def test_bad_train_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        (["train", "gan9"], "invalid choice: 'gan9'"),
        (["train", "vae", "--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["train", "vae", "--data", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "r")], "--data: no images"),
        (["train", "vae", "--resume", "--out-dir", str(tmp_path / "r2"), "--quiet"], "--resume: no such file"),
        (["train", "vae", "--batch-size", "5000", "--out-dir", str(tmp_path / "r3")], "--batch-size: 5000 exceeds"),
    ]
    for argv, expect in cases:
        _one_line_error(capsys, argv, expect)


def test_python_dash_m_sample_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "genfast", "sample", "--model", "vae", "--checkpoint",
                           str(tmp_path / "missing.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_compare_times_both_paths_and_their_samples_agree(tmp_path, capsys):
    import json

    from genfast.training.zoo import embedded_path

    if not embedded_path("vae").exists():
        pytest.skip("the embedded vae weights are not in this checkout")
    out = tmp_path / "c.png"
    assert main(["compare", "--train", "vae", "--sample", "vae", "--train-batches", "2", "--n", "4", "--out", str(out),
                 "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["task"], r["model"]) for r in rows] == [("train epoch", "vae"), ("sample batch", "vae")]
    for r in rows:
        assert r["genfast_s"] > 0 and r["reference_s"] > 0
        assert r["speedup"] == pytest.approx(r["reference_s"] / r["genfast_s"])
    assert rows[0]["batches"] == 2 and rows[1]["max_pixel_diff"] < 1e-4
    png = _png(out)
    half = (png.shape[1] - 6) // 2  # genfast | gap | reference: the two halves show the same samples
    assert np.abs(png[:, :half].astype(int) - png[:, half + 6:].astype(int)).max() <= 1
