"""genfast.samplers.sample_euler / sample_euler_ancestral / sample_dpm_solver against diffusers' schedulers
driven by hand with the same noise: plain, classifier-free guidance, class labels, img2img strength, bad
input; the CUDA-graph loop against the eager one on a GPU."""
from unittest import mock

import pytest
import torch

import genfast
from genfast.samplers import INIT_NOISE_OFFSET, sample_dpm_solver, sample_euler, sample_euler_ancestral

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 2, 4, 5)
CONFIG = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
              timestep_spacing="trailing", clip_sample=True, variance_type="fixed_small")  # a DDPM training config


class ToyModel:
    null_class = 5

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, class_labels=None):
        self.calls.append((x.shape[0], t.clone(), None if class_labels is None else class_labels.clone()))
        out = 0.3 * x + (t.float() / 100.0).reshape(-1, *([1] * (x.dim() - 1)))
        if class_labels is not None:
            out = out + 0.1 * class_labels.float().reshape(-1, *([1] * (x.dim() - 1)))
        return out


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _reference(name, x, steps, seed, model=None, start=0, image=None, **options):
    """The diffusers scheduler's own loop, with genfast's stream as its noise (step i at offset i)."""
    model = model or ToyModel()
    ref = getattr(diffusers, name).from_config(CONFIG, **options)
    ref.set_timesteps(steps)
    if image is not None:
        ref.set_begin_index(start)
        z = genfast.ops.randn(x.shape, seed=seed, offset=INIT_NOISE_OFFSET)
        x = ref.add_noise(image, z, ref.timesteps[start:start + 1])
    else:
        x = x * ref.init_noise_sigma
    module = type(ref).__module__
    for i, t in enumerate(ref.timesteps):
        if i < start:
            continue
        z = genfast.ops.randn(x.shape, seed=seed, offset=i)
        m = model(ref.scale_model_input(x, t), t.expand(x.shape[0]))
        with mock.patch(f"{module}.randn_tensor", lambda *a, **k: z.to(k.get("dtype") or z.dtype)):
            x = ref.step(m, t, x, generator=None).prev_sample
    return x


CASES = [
    ("EulerDiscreteScheduler", sample_euler, {}, {}),
    ("EulerDiscreteScheduler", sample_euler, dict(use_karras_sigmas=True), {}),
    ("EulerDiscreteScheduler", sample_euler, {}, dict(s_churn=2.0)),
    ("EulerAncestralDiscreteScheduler", sample_euler_ancestral, {}, {}),
    ("DPMSolverMultistepScheduler", sample_dpm_solver, {}, {}),
    ("DPMSolverMultistepScheduler", sample_dpm_solver, dict(solver_order=3, use_karras_sigmas=True), {}),
    ("DPMSolverMultistepScheduler", sample_dpm_solver, dict(algorithm_type="sde-dpmsolver++", solver_type="heun"), {}),
]


@pytest.mark.parametrize("name,fn,options,step_kw", CASES)
def test_sampler_equals_diffusers_loop(name, fn, options, step_kw):
    x = torch.randn(SHAPE)
    model = ToyModel()
    out = fn(model, x, CONFIG, steps=7, seed=321, thresholding=None, progress=False, **options, **step_kw)
    if step_kw:  # Euler's churn: diffusers takes it as step arguments
        with mock.patch.object(diffusers.EulerDiscreteScheduler, "step",
                               lambda self, *a, _step=diffusers.EulerDiscreteScheduler.step, **k: _step(
                                   self, *a, **step_kw, **k)):
            expected = _reference(name, x, 7, 321, **options)
    else:
        expected = _reference(name, x, 7, 321, **options)
    assert _rel(out, expected) <= 1e-5
    assert len(model.calls) == 7 and all(c[0] == SHAPE[0] for c in model.calls)


@pytest.mark.parametrize("fn", [sample_euler, sample_euler_ancestral, sample_dpm_solver])
def test_guidance_and_labels(fn):
    """cond and uncond in one model call ([uncond; cond]); the mix equals a model returning the guided
    output; the null class is the unconditional label."""
    x = torch.randn(SHAPE)
    labels = torch.tensor([1, 2, 3])
    model = ToyModel()
    out = fn(model, x, CONFIG, steps=5, seed=9, class_labels=labels, guidance_scale=3.0, progress=False,
             thresholding=(0.9, 1.5))
    assert all(c[0] == 2 * SHAPE[0] for c in model.calls)
    assert torch.equal(model.calls[0][2], torch.tensor([5, 5, 5, 1, 2, 3]))

    def guided(x, t, class_labels=None):
        u = ToyModel()(x, t, torch.full_like(labels, 5))
        c = ToyModel()(x, t, labels)
        return u + 3.0 * (c - u)

    expected = fn(guided, x, CONFIG, steps=5, seed=9, progress=False, thresholding=(0.9, 1.5))
    assert _rel(out, expected) <= 1e-5


@pytest.mark.parametrize("name,fn", [("EulerDiscreteScheduler", sample_euler),
                                     ("EulerAncestralDiscreteScheduler", sample_euler_ancestral),
                                     ("DPMSolverMultistepScheduler", sample_dpm_solver)])
def test_img2img_strength(name, fn):
    """strength < 1: diffusers' img2img convention (the last int(steps * strength) steps, set_begin_index,
    add_noise at the first of them with genfast's stream at INIT_NOISE_OFFSET)."""
    image = torch.rand(SHAPE) * 2 - 1
    model = ToyModel()
    out = fn(model, image, CONFIG, steps=8, seed=4, strength=0.5, progress=False, thresholding=None)
    assert len(model.calls) == 4
    expected = _reference(name, image, 8, 4, start=4, image=image)
    assert _rel(out, expected) <= 1e-5


@pytest.mark.parametrize("options", [{}, dict(algorithm_type="sde-dpmsolver++", solver_order=3)])
def test_clip_sample_of_the_config_is_thresholding_at_one(options):
    """A DDPM config's clip_sample (range 1) makes the DPM-Solver sampler clip x0 to [-1, 1]: diffusers'
    DPMSolverMultistepScheduler with thresholding=True, sample_max_value=1.0."""
    x = torch.randn(SHAPE) * 3
    out = sample_dpm_solver(lambda x, t: 2.0 * x, x, CONFIG, steps=6, seed=8, progress=False, **options)
    expected = _reference("DPMSolverMultistepScheduler", x, 6, 8, model=lambda x, t: 2.0 * x, thresholding=True,
                          sample_max_value=1.0, **options)
    unclipped = sample_dpm_solver(lambda x, t: 2.0 * x, x, CONFIG, steps=6, seed=8, progress=False,
                                  thresholding=None, **options)
    assert _rel(out, expected) <= 1e-5
    assert _rel(unclipped, expected) > 1e-2


def test_seed_repeats_and_differs():
    x = torch.randn(SHAPE)
    a = sample_euler_ancestral(ToyModel(), x, CONFIG, steps=5, seed=1, progress=False)
    b = sample_euler_ancestral(ToyModel(), x, CONFIG, steps=5, seed=1, progress=False)
    c = sample_euler_ancestral(ToyModel(), x, CONFIG, steps=5, seed=2, progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.manual_seed(3)
    d = sample_dpm_solver(ToyModel(), x, CONFIG, steps=5, algorithm_type="sde-dpmsolver++", progress=False)
    torch.manual_seed(3)
    e = sample_dpm_solver(ToyModel(), x, CONFIG, steps=5, algorithm_type="sde-dpmsolver++", progress=False)
    assert torch.equal(d, e)


def test_bad_input():
    x = torch.randn(SHAPE)
    with pytest.raises(TypeError, match="model"):
        sample_euler(None, x, CONFIG)
    with pytest.raises(ValueError, match="steps"):
        sample_euler(ToyModel(), x, CONFIG, steps=0)
    with pytest.raises(ValueError, match="strength"):
        sample_dpm_solver(ToyModel(), x, CONFIG, strength=1.5)
    with pytest.raises(TypeError, match="schedule"):
        sample_euler(ToyModel(), x, genfast.samplers.NoiseSchedule.from_config())
    with pytest.raises(ValueError, match="null_class"):
        sample_euler(lambda x, t, class_labels=None: x, x, CONFIG, class_labels=torch.tensor([1, 2, 3]),
                     guidance_scale=2.0)
    with pytest.raises(ValueError, match="algorithm_type"):
        sample_dpm_solver(ToyModel(), x, CONFIG, algorithm_type="bogus")
    with pytest.raises(ValueError, match="prediction_type"):
        sample_euler_ancestral(ToyModel(), x, {**CONFIG, "prediction_type": "sample"})
    with pytest.raises(TypeError, match="thresholding"):
        sample_euler(ToyModel(), x, CONFIG, thresholding=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA-graph capture needs one")
@pytest.mark.parametrize("fn", [sample_euler_ancestral, sample_dpm_solver])
def test_graph_equals_eager_on_cuda(fn):
    x = torch.randn(SHAPE, device="cuda")
    model = ToyModel()
    kw = dict(steps=6, class_labels=torch.tensor([1, 2, 3], device="cuda"), guidance_scale=2.0, progress=False)
    eager = fn(model, x, CONFIG, seed=5, **kw)
    first = fn(model, x, CONFIG, seed=5, graph=True, **kw)   # warm-up run, then capture
    replay = fn(model, x, CONFIG, seed=5, graph=True, **kw)
    other = fn(model, x, CONFIG, seed=6, graph=True, **kw)   # new seed, same graph: new noise
    torch.testing.assert_close(first, eager)
    torch.testing.assert_close(replay, eager)
    assert not torch.allclose(other, eager)


@pytest.mark.parametrize("fn,options", [(sample_euler_ancestral, {}),
                                        (sample_dpm_solver, dict(algorithm_type="sde-dpmsolver++", solver_order=3))])
def test_graph_path_with_a_stand_in_graph_on_cpu(monkeypatch, fn, options):
    """The CUDA-graph path's logic (static buffers, the plan copied for capture, the seed read from a device
    tensor on each replay) with the capture replaced by re-running the captured body: replays equal the
    eager loop, a new seed gives new noise without a new capture."""
    from genfast.samplers import graph as graph_module

    class StandIn:
        captures = 0

        def __init__(self, body):
            StandIn.captures += 1
            self.body = body
            self.out = body()

        def replay(self):
            self.out.copy_(self.body())

    def capture(body, device):
        g = StandIn(body)
        return g, g.out

    monkeypatch.setattr(graph_module, "_check_device", lambda x: None)
    monkeypatch.setattr(graph_module, "_warm_up", lambda body, device: body().clone())
    monkeypatch.setattr(graph_module, "_capture", capture)
    x = torch.randn(SHAPE)
    model = ToyModel()
    kw = dict(steps=6, class_labels=torch.tensor([1, 2, 3]), guidance_scale=2.0, progress=False, strength=0.7,
              **options)
    eager = fn(model, x, CONFIG, seed=5, **kw)
    first = fn(model, x, CONFIG, seed=5, graph=True, **kw)
    replay = fn(model, x, CONFIG, seed=5, graph=True, **kw)
    other = fn(model, x, CONFIG, seed=6, graph=True, **kw)
    assert StandIn.captures == 1
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(replay, eager, rtol=0, atol=0)
    assert not torch.allclose(other, eager)
    torch.testing.assert_close(other, fn(model, x, CONFIG, seed=6, **kw), rtol=0, atol=0)
    graph_module.clear_graphs(model)
