"""genfast.samplers: the loops against diffusers' schedulers fed the same noise, classifier-free guidance
batching, class labels, img2img, step subsets, progress bar, seeds, bad input; the CUDA-graph loop on a GPU."""
from unittest import mock

import pytest
import torch

import genfast
from genfast.samplers import INIT_NOISE_OFFSET, NoiseSchedule, make_timesteps, sample_ddim, sample_ddpm

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 2, 4, 5)


class ToyModel:
    """A deterministic model(x, t, class_labels=None) that records its calls."""

    null_class = 5

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, class_labels=None):
        self.calls.append((x.shape[0], t.clone(), None if class_labels is None else class_labels.clone()))
        out = 0.3 * x + (t.float() / 1000.0).reshape(-1, *([1] * (x.dim() - 1)))
        if class_labels is not None:
            out = out + 0.1 * class_labels.float().reshape(-1, *([1] * (x.dim() - 1)))
        return out


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _diffusers_ddim_loop(model_fn, x, ref, steps, eta, seed, start=0):
    ref.set_timesteps(steps)
    for i, t in enumerate(ref.timesteps):
        if i < start:
            continue
        m = model_fn(x, t.expand(x.shape[0]))
        z = genfast.ops.randn(x.shape, seed=seed, offset=i)
        x = ref.step(m, t, x, eta=eta, variance_noise=z).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("cfg", [dict(), dict(prediction_type="v_prediction", timestep_spacing="trailing",
                                              clip_sample=False), dict(thresholding=True, sample_max_value=1.5)])
def test_ddim_sampler_equals_diffusers_loop(eta, cfg):
    ref = diffusers.DDIMScheduler(num_train_timesteps=100, **cfg)
    x = torch.randn(SHAPE)
    model = ToyModel()
    out = sample_ddim(model, x, ref.config, steps=6, eta=eta, seed=123, progress=False)
    expected = _diffusers_ddim_loop(lambda x, t: ToyModel()(x, t), x, ref, 6, eta, 123)
    assert _rel(out, expected) <= 1e-5
    assert [int(c[1][0]) for c in model.calls] == ref.timesteps.tolist()


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("offset", [0, 1])
def test_ddpm_sampler_equals_diffusers_loop(variance_type, offset):
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, variance_type=variance_type, steps_offset=offset)
    x = torch.randn(SHAPE)
    out = sample_ddpm(ToyModel(), x, ref, steps=8, seed=7, progress=False)
    ref.set_timesteps(8)
    y = x
    for i, t in enumerate(ref.timesteps):
        z = genfast.ops.randn(x.shape, seed=7, offset=i)
        with mock.patch("diffusers.schedulers.scheduling_ddpm.randn_tensor", lambda *a, **k: z):
            y = ref.step(ToyModel()(y, t.expand(x.shape[0])), t, y).prev_sample
    assert _rel(out, y) <= 1e-5


def test_full_schedule_default_and_noise_schedule_object():
    sched = NoiseSchedule.from_config(num_train_timesteps=20)
    model = ToyModel()
    out = sample_ddpm(model, torch.randn(SHAPE), sched, seed=1, progress=False)
    assert len(model.calls) == 20 and torch.isfinite(out).all()


def test_guidance_is_one_batched_call_and_equals_two_calls():
    ref = diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    x = torch.randn(SHAPE)
    labels = torch.tensor([0, 3, 1])
    model = ToyModel()
    w = 2.5
    out = sample_ddim(model, x, ref, steps=5, eta=0.5, class_labels=labels, guidance_scale=w, seed=9, progress=False)
    assert len(model.calls) == 5
    for batch, t, cl in model.calls:  # one call per step on [uncond; cond]
        assert batch == 2 * SHAPE[0]
        assert cl.tolist() == [ToyModel.null_class] * 3 + labels.tolist()

    def guided(x, t):
        u = ToyModel()(x, t, class_labels=torch.full_like(labels, ToyModel.null_class))
        c = ToyModel()(x, t, class_labels=labels)
        return u + w * (c - u)

    expected = _diffusers_ddim_loop(guided, x, ref, 5, 0.5, 9)
    assert _rel(out, expected) <= 1e-5
    # explicit cond / uncond dicts give the same
    out2 = sample_ddim(ToyModel(), x, ref, steps=5, eta=0.5, cond={"class_labels": labels},
                       uncond={"class_labels": torch.full_like(labels, 5)}, guidance_scale=w, seed=9, progress=False)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


def test_class_labels_with_the_unet():
    from genfast.models import UNet

    torch.manual_seed(0)
    unet = UNet(in_channels=2, base_channels=8, channel_mults=(1,), attention_levels=(), num_classes=4).eval()
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        a = sample_ddim(unet, x, NoiseSchedule.from_config(num_train_timesteps=50), steps=3,
                        class_labels=torch.tensor([1, 2]), guidance_scale=3.0, seed=0, progress=False)
        b = sample_ddim(unet, x, NoiseSchedule.from_config(num_train_timesteps=50), steps=3,
                        class_labels=torch.tensor([1, 3]), guidance_scale=3.0, seed=0, progress=False)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_img2img_strength(strength):
    ref = diffusers.DDIMScheduler(num_train_timesteps=100)
    image = torch.rand(SHAPE) * 2 - 1
    model = ToyModel()
    steps = 10
    out = sample_ddim(model, image, ref, steps=steps, eta=1.0, strength=strength, seed=4, progress=False)
    run = int(steps * strength)
    assert len(model.calls) == run
    ref.set_timesteps(steps)
    start = steps - run
    t0 = ref.timesteps[start]
    noise = genfast.ops.randn(SHAPE, seed=4, offset=INIT_NOISE_OFFSET)
    noisy = ref.add_noise(image, noise, t0.reshape(1))
    expected = _diffusers_ddim_loop(lambda x, t: ToyModel()(x, t), noisy, ref, steps, 1.0, 4, start=start)
    assert _rel(out, expected) <= 1e-5


def test_steps_subset_of_training_schedule():
    model = ToyModel()
    sample_ddim(model, torch.randn(SHAPE), NoiseSchedule.from_config(num_train_timesteps=1000,
                                                                     timestep_spacing="linspace"),
                steps=7, progress=False, seed=0)
    assert [int(c[1][0]) for c in model.calls] == make_timesteps(7, 1000, "linspace").tolist()


def test_progress_bar_on_and_off(capsys):
    pytest.importorskip("tqdm")
    sched = NoiseSchedule.from_config(num_train_timesteps=10)
    sample_ddim(ToyModel(), torch.randn(SHAPE), sched, steps=3, progress=False, seed=0)
    assert capsys.readouterr().err == ""
    sample_ddim(ToyModel(), torch.randn(SHAPE), sched, steps=3, progress=True, seed=0)
    assert "genfast ddim" in capsys.readouterr().err


def test_seeds():
    sched = NoiseSchedule.from_config(num_train_timesteps=50)
    x = torch.randn(SHAPE)
    a = sample_ddpm(ToyModel(), x, sched, steps=5, seed=1, progress=False)
    b = sample_ddpm(ToyModel(), x, sched, steps=5, seed=1, progress=False)
    c = sample_ddpm(ToyModel(), x, sched, steps=5, seed=2, progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    torch.manual_seed(3)
    d = sample_ddpm(ToyModel(), x, sched, steps=5, progress=False)
    torch.manual_seed(3)
    e = sample_ddpm(ToyModel(), x, sched, steps=5, progress=False)
    torch.testing.assert_close(d, e, rtol=0, atol=0)


def test_bad_input():
    sched = NoiseSchedule.from_config(num_train_timesteps=50)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sample_ddim(ToyModel(), x, sched, steps=51, progress=False)
    with pytest.raises(ValueError, match="strength"):
        sample_ddim(ToyModel(), x, sched, steps=5, strength=0.0, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample_ddim(ToyModel(), x, sched, steps=5, guidance_scale=2.0, progress=False)
    with pytest.raises(ValueError, match="null_class"):
        sample_ddim(lambda x, t, class_labels=None: x, x, sched, steps=5, class_labels=torch.zeros(3, dtype=torch.long),
                    guidance_scale=2.0, progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        sample_ddim(ToyModel(), x, sched, steps=5, class_labels=torch.zeros(2, dtype=torch.long), progress=False)
    with pytest.raises(TypeError, match="schedule"):
        sample_ddim(ToyModel(), x, 3, steps=5, progress=False)
    with pytest.raises(TypeError, match="model"):
        sample_ddim(None, x, sched, steps=5, progress=False)
    with pytest.raises(ValueError, match="graph"):
        sample_ddim(ToyModel(), x, sched, steps=5, graph=True, progress=False)
    with pytest.raises(ValueError, match="prediction_type"):
        sample_ddim(ToyModel(), x, sched, steps=5, prediction_type="bogus", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA-graph capture needs one")
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_graph_equals_eager_and_draws_fresh_noise(kind):
    from genfast.models import UNet
    from genfast.samplers import clear_graphs

    torch.manual_seed(0)
    unet = UNet(in_channels=3, base_channels=16, num_classes=4).cuda().eval()
    sched = NoiseSchedule.from_config(num_train_timesteps=100)
    sample = sample_ddim if kind == "ddim" else sample_ddpm
    extra = {"eta": 1.0} if kind == "ddim" else {}
    x = torch.randn(2, 3, 8, 8, device="cuda")
    labels = torch.tensor([1, 2], device="cuda")
    with torch.no_grad():
        kw = dict(steps=6, class_labels=labels, guidance_scale=2.0, progress=False, **extra)
        eager = [sample(unet, x, sched, seed=s, **kw) for s in (11, 12)]
        first = sample(unet, x, sched, seed=11, graph=True, **kw)    # warm-up + capture
        replay = [sample(unet, x, sched, seed=s, graph=True, **kw) for s in (11, 12, 11)]
    torch.testing.assert_close(first, eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replay[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replay[1], eager[1], rtol=1e-5, atol=1e-5)  # new seed, no re-capture
    torch.testing.assert_close(replay[2], replay[0], rtol=0, atol=0)
    assert not torch.allclose(replay[0], replay[1])
    clear_graphs(unet)


class _ReplayByRerun:
    """Stands in for a CUDA graph on the CPU: replay re-runs the captured body into the static output."""

    def __init__(self, body, out):
        self.body, self.out, self.replays = body, out, 0

    def replay(self):
        self.out.copy_(self.body())
        self.replays += 1


def test_graph_bookkeeping_on_cpu(monkeypatch):
    """The graph path's static buffers, seed tensor and cache, with capture replaced by re-running the
    body (the real capture needs CUDA; see the GPU test above): the first call is the eager warm-up,
    later calls replay with a new seed and new inputs and equal the eager loop, without re-capture."""
    from genfast.samplers import clear_graphs, graph

    captures = []

    def fake_capture(body, device):
        g = _ReplayByRerun(body, body())
        captures.append(g)
        return g, g.out

    monkeypatch.setattr(graph, "_check_device", lambda x: None)
    monkeypatch.setattr(graph, "_warm_up", lambda body, device: body().clone())
    monkeypatch.setattr(graph, "_capture", fake_capture)
    sched = NoiseSchedule.from_config(num_train_timesteps=50)
    model = ToyModel()
    labels = torch.tensor([0, 1, 2])
    kw = dict(steps=4, eta=1.0, class_labels=labels, guidance_scale=2.0, progress=False)
    x1, x2 = torch.randn(SHAPE), torch.randn(SHAPE)
    eager = {(i, s): sample_ddim(model, x, sched, seed=s, **kw) for i, x in ((1, x1), (2, x2)) for s in (3, 4)}
    assert torch.equal(sample_ddim(model, x1, sched, seed=3, graph=True, **kw), eager[(1, 3)])  # warm-up
    assert len(captures) == 1
    for (i, s), expected in eager.items():
        out = sample_ddim(model, x1 if i == 1 else x2, sched, seed=s, graph=True, **kw)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert len(captures) == 1 and captures[0].replays == 4
    # new class labels go through the static buffers too
    other = sample_ddim(model, x1, sched, seed=3, graph=True, **{**kw, "class_labels": torch.tensor([2, 2, 2])})
    assert len(captures) == 1 and not torch.equal(other, eager[(1, 3)])
    # a different shape or option captures anew
    sample_ddim(model, x1[:2], sched, seed=3, graph=True, **{**kw, "class_labels": labels[:2]})
    sample_ddim(model, x1, sched, seed=3, graph=True, **{**kw, "eta": 0.5})
    assert len(captures) == 3
    clear_graphs(model)
    sample_ddim(model, x1, sched, seed=3, graph=True, **kw)
    assert len(captures) == 4
    clear_graphs()
