"""`genfast train` / `genfast sample` for the kinds of issue 14, through the command line at tiny step
counts: each trains, is interrupted (the Ctrl-C path: checkpoint, exit 130), resumes and ends bit-identical
to an uninterrupted run, and its checkpoint samples. Plus what is particular to each kind (ProGAN's grown
resolutions, LDM's img2img, the distilled students' per-stage files, the image-to-image grids) and
torchrun for ProGAN, whose DDP must skip the layers of resolutions not grown yet."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genfast.cli import main
from genfast.training import loop
from genfast.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
NEW_KINDS = ["lsgan", "ae", "progan", "ldm", "distill", "pix2pix", "cyclegan", "srgan", "srresnet"]
COMMON = ["--batch-size", "8", "--sample-images", "4", "--save-every", "100", "--sample-every", "100",
          "--device", "cpu", "--quiet"]


class _StopAfter:
    """Stands in for the loop's SIGINT/SIGTERM handler: 'requested' after `steps` steps."""

    def __init__(self, steps):
        self.steps, self.asked = steps, 0

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.asked += 1
        return self.asked >= self.steps


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_cli_trains_is_interrupted_resumes_exactly_and_samples(tmp_path, kind, capsys, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", kind, "--steps", "4", "--out-dir", str(straight), *COMMON]) == 0
    with monkeypatch.context() as m:
        m.setattr(loop, "_StopRequest", _StopAfter(2))
        assert main(["train", kind, "--steps", "4", "--out-dir", str(split), *COMMON]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2" in err and "--resume" in err and "Traceback" not in err
    assert main(["train", kind, "--steps", "4", "--out-dir", str(split), "--resume", *COMMON]) == 0
    a, meta_a = load_checkpoint(straight / "last.safetensors")
    b, meta_b = load_checkpoint(split / "last.safetensors")
    assert meta_b["step"] == 4 and a.keys() == b.keys() and meta_a["config"] == meta_b["config"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (split / "samples_000004.png").stat().st_size > 0

    out = tmp_path / "g.png"
    assert main(["sample", "--checkpoint", str(straight / "last.safetensors"), "--n", "4", "--out", str(out),
                 "--device", "cpu", "--quiet", "--scale", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{kind}" in printed and out.stat().st_size > 0
    grid = _png(out)
    if kind in ("pix2pix", "srgan", "srresnet"):  # one band: input, output, target rows of 4
        assert grid.shape[:2] == (3 * 17 + 1, 4 * 17 + 1)
    elif kind == "cyclegan":  # b -> a band and a -> b band, 2 examples each
        assert grid.shape[:2] == (6 * 17 + 1, 2 * 17 + 1)
    else:
        # 4 samples: a 2 x 2 grid, or one row of a 10-column grid (one column per class)
        assert grid.shape[:2] in ((2 * 17 + 1, 2 * 17 + 1), (17 + 1, 10 * 17 + 1))
    if kind == "distill":  # each stage's student is written as sampling weights of its own
        for steps in (25, 12, 6, 3):
            _, meta = load_checkpoint(straight / f"distill-{steps}.safetensors")
            assert meta["student_steps"] == steps and "optim" not in meta


def test_progan_samples_each_grown_resolution_at_its_own_size(tmp_path):
    run = tmp_path / "p"
    assert main(["train", "progan", "--steps", "5", "--out-dir", str(run), *COMMON]) == 0
    _, meta = load_checkpoint(run / "last.safetensors")
    assert meta["config"]["phase_steps"] == 1  # 5 phases of one step: 4 stable, 8 fade/stable, 16 fade/stable
    for res in (4, 8, 16):
        out = tmp_path / f"r{res}.png"
        assert main(["sample", "--checkpoint", str(run / "last.safetensors"), "--resolution", str(res), "--n", "2",
                     "--out", str(out), "--scale", "1", "--device", "cpu", "--quiet"]) == 0
        assert _png(out).shape[:2] == (res + 2, 2 * (res + 1) + 1)


def test_ldm_img2img_from_an_init_image(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "l"
    # 4 steps: the first trains the autoencoder (its grid: digits over their reconstructions), then diffusion
    assert main(["train", "ldm", "--steps", "4", "--out-dir", str(run), *COMMON, "--sample-every", "1"]) == 0
    assert _png(run / "samples_000001.png").shape[:2] == (2 * 33 + 1, 2 * 33 + 1)  # 2 digits over 2 recons, scale 2
    _, meta = load_checkpoint(run / "last.safetensors")
    assert meta["config"]["autoencoder_steps"] == 1
    init = tmp_path / "three.png"
    Image.fromarray((np.eye(32) * 255).astype(np.uint8)).save(init)
    args = ["sample", "--checkpoint", str(run / "last.safetensors"), "--init-image", str(init), "--n", "3",
            "--steps", "10", "--device", "cpu", "--quiet"]
    assert main([*args, "--strength", "0.5", "--out", str(tmp_path / "a.png")]) == 0
    assert "img2img" in capsys.readouterr().out
    assert main([*args, "--strength", "0.5", "--out", str(tmp_path / "b.png")]) == 0
    assert main([*args, "--strength", "1.0", "--out", str(tmp_path / "c.png")]) == 0
    assert _png(tmp_path / "a.png").tobytes() == _png(tmp_path / "b.png").tobytes()  # same seed, same grid
    assert _png(tmp_path / "a.png").tobytes() != _png(tmp_path / "c.png").tobytes()


def test_model_specific_sample_arguments_are_one_line_errors(tmp_path, capsys):
    run = tmp_path / "s"
    assert main(["train", "srresnet", "--steps", "1", "--out-dir", str(run), *COMMON]) == 0
    ckpt = str(run / "last.safetensors")
    cases = [
        (["sample", "--checkpoint", ckpt, "--resolution", "8"], "--resolution: only progan"),
        (["sample", "--checkpoint", ckpt, "--init-image", "x.png"], "--init-image/--strength"),
        (["sample", "--checkpoint", ckpt, "--steps", "4"], "translates images in one pass"),
        (["sample", "--checkpoint", ckpt, "--data", str(tmp_path / "missing")], "--data"),
        (["sample", "--model", "vae", "--data", "digits"], "--data: only the image-to-image"),
        (["sample", "--model", "ddpm", "--strength", "0.5"], "--strength: img2img needs --init-image"),
        (["sample", "--model", "ddpm", "--init-image", str(tmp_path / "none.png")], "--init-image: cannot read"),
        (["train", "vae", "--teacher", ckpt], "--teacher/--stages: only for distill"),
        (["train", "distill", "--stages", "6,12"], "decreasing"),
        (["train", "distill", "--teacher", ckpt, "--out-dir", str(tmp_path / "d")], "not a ddpm"),
    ]
    for argv, expect in cases:
        rc = main([*argv, "--out" if argv[0] == "sample" else "--quiet", *( [str(tmp_path / "o.png")] if argv[0] == "sample" else [])])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and expect in err and "Traceback" not in err, (argv, err)


def test_torchrun_progan_keeps_ranks_in_sync(tmp_path):
    result = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "dist_train_check.py"), "progan", str(tmp_path / "run"), str(result)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(result.read_text()) == {"world": 2, "same": True, "step": 3}
