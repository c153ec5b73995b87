"""`genfast train`: every kind trains and its checkpoint samples; resume and interruption are exact."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genfast.training.checkpoint import load_checkpoint
from genfast.training import TrainSettings, train
from genfast.training.zoo import MODEL_KINDS, build_networks, load_model, sampling_network

REPO = Path(__file__).resolve().parent.parent


def _settings(tmp_path, model, steps, **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("sample_images", 4)
    return TrainSettings(model=model, steps=steps, out_dir=str(tmp_path / model), save_every=steps,
                         sample_every=steps, progress=False, device="cpu", **kw)


@pytest.mark.parametrize("model", MODEL_KINDS)
def test_each_model_trains_checkpoints_and_samples(tmp_path, model):
    size = 8 if model == "ddpm" else 16  # the U-Net at 8 px keeps its preview sampling quick
    summary = train(_settings(tmp_path, model, 2, image_size=size), log=lambda s: None)
    assert summary["step"] == 2 and all(torch.isfinite(torch.tensor(v)) for v in summary["metrics"].values())
    tensors, meta = load_checkpoint(Path(summary["checkpoint"]))
    assert meta["model"] == model and meta["step"] == 2 and meta["data"]["image_size"] == size
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("optim.") for k in tensors)
    assert (tmp_path / model / "samples_000002.png").exists()
    # the sampling weights moved away from the seed's initialization
    m = load_model(model, summary["checkpoint"], "cpu")
    torch.manual_seed(0)
    fresh = build_networks(m.kind, m.config)[sampling_network(m.kind)]
    moved = any(not torch.equal(a, b) for a, b in zip(m.net.state_dict().values(), fresh.state_dict().values()))
    assert moved
    x = m.sample(3, seed=2, steps=2) if model == "ddpm" else m.sample(3, seed=2)
    assert x.shape == (3, 1, size, size) and x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("model", ["vae", "wgan-gp"])
def test_resume_continues_exactly(tmp_path, model):
    straight = train(_settings(tmp_path / "a", model, 4), log=lambda s: None)
    train(_settings(tmp_path / "b", model, 2), log=lambda s: None)
    resumed = train(_settings(tmp_path / "b", model, 4, resume=True), log=lambda s: None)
    a, _ = load_checkpoint(Path(straight["checkpoint"]))
    b, meta = load_checkpoint(Path(resumed["checkpoint"]))
    assert meta["step"] == 4 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_another_model(tmp_path):
    train(_settings(tmp_path, "vae", 1), log=lambda s: None)
    s = _settings(tmp_path, "beta-vae", 2, resume=True)
    s.out_dir = str(tmp_path / "vae")
    with pytest.raises(ValueError, match="--resume: .* was trained as vae"):
        train(s, log=lambda s: None)


def test_non_finite_checkpoint_is_refused_for_resume_and_sampling(tmp_path, capsys):
    """A diverged run's weights (NaN) are refused by --resume and by sample --checkpoint, one line each."""
    from genfast.cli import main
    from genfast.training.checkpoint import CheckpointError, save_checkpoint

    summary = train(_settings(tmp_path, "vae", 1), log=lambda s: None)
    path = Path(summary["checkpoint"])
    tensors, meta = load_checkpoint(path)
    name = next(k for k in tensors if k.startswith("train.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = float("nan")
    meta.pop("format")
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match=f"--resume: .*non-finite.*{name}"):
        train(_settings(tmp_path, "vae", 2, resume=True), log=lambda s: None)
    assert main(["sample", "--model", "vae", "--checkpoint", str(path), "--n", "2", "--out",
                 str(tmp_path / "g.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


def test_diverging_run_stops_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    from genfast.training import TrainingDiverged
    from genfast.training import loop

    train(_settings(tmp_path, "vae", 1), log=lambda s: None)
    good, _ = load_checkpoint(tmp_path / "vae" / "last.safetensors")
    real_step = loop.VAETrainer.train_step

    def poisoned(self, source):  # the step's update turns a weight NaN, as a too-high learning rate would
        out = real_step(self, source)
        with torch.no_grad():
            next(self.vae.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(loop.VAETrainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="step 2.*keeps the last finite checkpoint"):
        s = _settings(tmp_path, "vae", 3, resume=True)
        s.save_every = 1
        train(s, log=lambda s: None)
    kept, meta = load_checkpoint(tmp_path / "vae" / "last.safetensors")
    assert meta["step"] == 1 and all(torch.equal(good[k], kept[k]) for k in good)


def test_export_is_fp16_sampling_weights_that_sample(tmp_path, capsys):
    from genfast.cli import main

    export = tmp_path / "vae16.safetensors"
    train(_settings(tmp_path, "vae", 2, export=str(export)), log=lambda s: None)
    tensors, meta = load_checkpoint(export)
    assert all(k.startswith("model.") for k in tensors) and "optim" not in meta
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    assert main(["sample", "--model", "vae", "--checkpoint", str(export), "--n", "4", "--out",
                 str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


def test_sigint_checkpoints_and_resume_finishes(tmp_path):
    """Ctrl-C: the running step finishes, a checkpoint is written, exit 130 with one line; --resume goes on."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "genfast", "train", "vae", "--steps", "100000", "--save-every", "5",
           "--sample-every", "100000", "--batch-size", "16", "--out-dir", str(out), "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    # Not a fixed sleep (a loaded machine may still be importing): wait until training demonstrably runs
    # (the first checkpoint, at step 5), so the signal lands inside the loop whatever the machine's speed.
    deadline = time.monotonic() + 300
    while not (out / "last.safetensors").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "training did not reach step 5 in 300 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "--resume" in err and "Traceback" not in err, err
    _, meta = load_checkpoint(out / "last.safetensors")
    stopped = meta["step"]
    assert 0 < stopped < 100000
    summary = train(TrainSettings(model="vae", steps=stopped + 3, batch_size=16, out_dir=str(out), resume=True,
                                  save_every=1000, sample_every=1000, sample_images=4, progress=False,
                                  device="cpu"), log=lambda s: None)
    assert summary["step"] == stopped + 3


def test_dcgan_trains_with_the_fused_r1_penalty_and_old_configs_without(monkeypatch):
    """New DCGAN runs regularize the discriminator with R1 through genfast's fused gradient_penalty;
    a checkpoint config from before (no r1_weight) trains as it did, without a penalty."""
    from genfast.training import gan, loop
    from genfast.training.data import load_data
    from genfast.training.zoo import default_config

    calls = []
    real_fn = gan.gradient_penalty

    def spy(*args, **kw):
        calls.append(kw.get("mode"))
        return real_fn(*args, **kw)

    monkeypatch.setattr(gan, "gradient_penalty", spy)
    config = default_config("dcgan", 1, 16, None)
    assert config["r1_weight"] == 1.0
    nets = build_networks("dcgan", config)
    trainer = loop.make_trainer("dcgan", nets, config, None, lambda m: m)
    assert trainer.gan.penalty == "r1" and trainer.gan.penalty_weight == 1.0
    old = {k: v for k, v in config.items() if k != "r1_weight"}
    assert loop.make_trainer("dcgan", build_networks("dcgan", old), old, None, lambda m: m).gan.penalty is None
    trainer.train_step(loop.BatchSource(load_data("digits", 16), 8, 0, torch.device("cpu"), 0, 1))
    assert calls == ["r1"]
