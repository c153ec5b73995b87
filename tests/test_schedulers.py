"""genfast.schedulers against diffusers' DDIMScheduler / DDPMScheduler (the oracle) over the option
matrix, the diffusers-pipeline swap, config round trips, genfast's stream and bad input."""
import copy
import importlib
import inspect
import sys
from unittest import mock

import pytest
import torch

import genfast
import genfast.schedulers as gs

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 6, 5)


def _rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _fp32_draws(shape, generator=None, device=None, dtype=None, layout=None):
    """diffusers' randn_tensor drawing in fp32 (then cast): the float64 oracle sees the same noise."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def _float64_twin(ref):
    """A copy of a diffusers scheduler whose tables are float64, so its step runs in float64."""
    twin = copy.deepcopy(ref)
    twin.alphas_cumprod = ref.alphas_cumprod.double()
    if hasattr(twin, "final_alpha_cumprod"):
        twin.final_alpha_cumprod = torch.as_tensor(ref.final_alpha_cumprod).double()
    if hasattr(twin, "one"):
        twin.one = twin.one.double()
    return twin


def _close_to_oracle(ours, ref32, ref64, what):
    """fp32 relative error <= 1e-5 against diffusers; where diffusers' own fp32 arithmetic is that far off
    (cancellation in 1 - a_prev - sigma^2 near alpha_T ~ 0), genfast must be as close to diffusers run in
    float64 as diffusers' fp32 is."""
    err = _rel_err(ours, ref32)
    if err <= 1e-5:
        return
    err64, ref_err64 = _rel_err(ours, ref64), _rel_err(ref32, ref64)
    assert err64 <= max(1e-5, 2 * ref_err64), f"{what}: {err} vs diffusers fp32, {err64} vs float64 ({ref_err64})"


def _run_both(ref, ours, steps, eta=None, use_clipped=False, channels_out=3, seed=0, check_x0=True,
              model_fix=None):
    """Same model outputs and same generator seeds into both; compare prev and x0 at every step."""
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    ref64 = _float64_twin(ref)
    assert torch.equal(ref.timesteps, ours.timesteps)
    torch.manual_seed(seed)
    x = torch.randn(SHAPE)
    for t in ref.timesteps:
        m = torch.randn((SHAPE[0], channels_out) + SHAPE[2:])
        if model_fix is not None:
            m = model_fix(m)
        kw = {} if eta is None else dict(eta=eta, use_clipped_model_output=use_clipped)
        g_ref, g_ours, g64 = (torch.Generator().manual_seed(int(t)) for _ in range(3))
        a = ref.step(m, t, x, generator=g_ref, **kw)
        b = ours.step(m, t, x, generator=g_ours, **kw)
        with mock.patch("diffusers.schedulers.scheduling_ddim.randn_tensor", _fp32_draws), \
                mock.patch("diffusers.schedulers.scheduling_ddpm.randn_tensor", _fp32_draws):
            c = ref64.step(m.double(), t, x.double(), generator=g64, **kw)
        _close_to_oracle(b.prev_sample, a.prev_sample, c.prev_sample, f"prev_sample at t={int(t)}")
        if check_x0:
            _close_to_oracle(b.pred_original_sample, a.pred_original_sample, c.pred_original_sample,
                             f"pred_original_sample at t={int(t)}")
        # generators consumed identically
        assert torch.equal(g_ref.get_state(), g_ours.get_state())
        x = a.prev_sample
    return x


BETAS = ["linear", "scaled_linear", "squaredcos_cap_v2"]
SPACINGS = [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
CLIPS = [dict(clip_sample=False), dict(clip_sample=True, clip_sample_range=1.5), dict(thresholding=True,
                                                                                       sample_max_value=2.0)]


@pytest.mark.parametrize("beta_schedule", BETAS)
@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("clip", range(len(CLIPS)))
@pytest.mark.parametrize("eta,use_clipped,set_alpha_to_one,rescale", [
    (0.0, False, True, False), (1.0, False, False, False), (0.5, True, True, True)])
def test_ddim_matches_diffusers(beta_schedule, spacing, offset, prediction_type, clip, eta, use_clipped,
                                set_alpha_to_one, rescale):
    if rescale and prediction_type == "epsilon":
        pytest.skip("zero terminal SNR makes alpha_T = 0: epsilon-prediction divides by 0 (diffusers too)")
    cfg = dict(num_train_timesteps=100, beta_schedule=beta_schedule, timestep_spacing=spacing, steps_offset=offset,
               prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one, rescale_betas_zero_snr=rescale,
               **CLIPS[clip])
    ref = diffusers.DDIMScheduler(**cfg)
    ours = gs.DDIMScheduler.from_config(ref.config)
    _run_both(ref, ours, 4, eta=eta, use_clipped=use_clipped)


VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]


@pytest.mark.parametrize("beta_schedule", BETAS + ["sigmoid"])
@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("clip", range(len(CLIPS)))
@pytest.mark.parametrize("variance_type", VARIANCES)
def test_ddpm_matches_diffusers(beta_schedule, spacing, offset, prediction_type, clip, variance_type):
    cfg = dict(num_train_timesteps=100, beta_schedule=beta_schedule, timestep_spacing=spacing, steps_offset=offset,
               prediction_type=prediction_type, variance_type=variance_type, **CLIPS[clip])
    ref = diffusers.DDPMScheduler(**cfg)
    ours = gs.DDPMScheduler.from_config(ref.config)
    learned = variance_type.startswith("learned")
    # "learned": the raw model output is the variance, keep it positive
    fix = (lambda m: torch.cat([m[:, :3], m[:, 3:].abs() * 0.01], 1)) if variance_type == "learned" else None
    _run_both(ref, ours, 4, channels_out=6 if learned else 3, model_fix=fix)


def test_ddpm_fixed_large_log_is_sqrt_beta():
    """diffusers computes sqrt(log(beta_t)) = NaN there; genfast uses the intended std sqrt(beta_t)."""
    a = gs.DDPMScheduler(num_train_timesteps=50, variance_type="fixed_large_log")
    b = gs.DDPMScheduler(num_train_timesteps=50, variance_type="fixed_large")
    for s in (a, b):
        s.set_timesteps(5)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    t = a.timesteps[1]
    ra = a.step(m, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
    rb = b.step(m, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
    assert torch.isfinite(ra).all()
    torch.testing.assert_close(ra, rb)


def test_ddpm_full_schedule_without_set_timesteps_and_custom_timesteps():
    ref, ours = diffusers.DDPMScheduler(num_train_timesteps=20), gs.DDPMScheduler(num_train_timesteps=20)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    for t in (19, 7, 0):
        a = ref.step(m, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = ours.step(m, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        assert _rel_err(b, a) <= 1e-5
    ref.set_timesteps(timesteps=[15, 9, 4, 0])
    ours.set_timesteps(timesteps=[15, 9, 4, 0])
    assert torch.equal(ref.timesteps, ours.timesteps)
    for t in ref.timesteps:
        a = ref.step(m, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        b = ours.step(m, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        assert _rel_err(b, a) <= 1e-5


def test_variance_noise_and_return_tuple():
    ref, ours = diffusers.DDIMScheduler(), gs.DDIMScheduler()
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    x, m, z = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    a = ref.step(m, ref.timesteps[3], x, eta=0.7, variance_noise=z, return_dict=False)
    b = ours.step(m, ours.timesteps[3], x, eta=0.7, variance_noise=z, return_dict=False)
    assert isinstance(b, tuple) and len(b) == 2
    assert _rel_err(b[0], a[0]) <= 1e-5 and _rel_err(b[1], a[1]) <= 1e-5
    with pytest.raises(ValueError, match="generator"):
        ours.step(m, 1, x, eta=0.5, variance_noise=z, generator=torch.Generator())


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler"])
def test_add_noise_velocity_and_attributes(cls):
    ref, ours = getattr(diffusers, cls)(), getattr(gs, cls)()
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    ts = torch.tensor([3, 900])
    torch.testing.assert_close(ours.add_noise(x, z, ts), ref.add_noise(x, z, ts), rtol=0, atol=0)
    torch.testing.assert_close(ours.get_velocity(x, z, ts), ref.get_velocity(x, z, ts), rtol=0, atol=0)
    torch.testing.assert_close(ours.add_noise(x, z, torch.tensor(500)), ref.add_noise(x, z, torch.tensor(500)))
    assert ours.init_noise_sigma == 1.0 and ours.order == 1 and len(ours) == 1000
    assert ours.scale_model_input(x, 5) is x
    assert torch.equal(ours.timesteps, ref.timesteps)
    for name in ("betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=0, atol=0)
    # the step signature pipelines inspect
    keys = set(inspect.signature(ours.step).parameters)
    assert keys == set(inspect.signature(ref.step).parameters)


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler"])
def test_config_round_trip(cls, tmp_path):
    ours = getattr(gs, cls)(num_train_timesteps=123, prediction_type="v_prediction", timestep_spacing="trailing")
    assert dict(ours.config) .items() >= {"num_train_timesteps": 123, "prediction_type": "v_prediction"}.items()
    ours.save_pretrained(tmp_path)
    back = getattr(gs, cls).from_pretrained(tmp_path)
    assert back.config.num_train_timesteps == 123 and back.config.timestep_spacing == "trailing"
    as_diffusers = getattr(diffusers, cls).from_pretrained(tmp_path)  # the saved config is diffusers'
    assert as_diffusers.config.prediction_type == "v_prediction"
    # defaults equal diffusers'
    d_ref = dict(getattr(diffusers, cls)().config)
    d_ours = dict(getattr(gs, cls)().config)
    for k in d_ref:
        if not k.startswith("_"):
            assert d_ours[k] == d_ref[k], k


def test_config_changed_after_construction():
    """Pipelines call register_to_config after construction; step must read the config each time."""
    ref, ours = diffusers.DDIMScheduler(), gs.DDIMScheduler()
    for s in (ref, ours):
        s.register_to_config(clip_sample=False, prediction_type="sample")
        s.set_timesteps(5)
    x, m = torch.randn(SHAPE) * 3, torch.randn(SHAPE) * 3
    a = ref.step(m, ref.timesteps[0], x).prev_sample
    b = ours.step(m, ours.timesteps[0], x).prev_sample
    assert _rel_err(b, a) <= 1e-5


def test_genfast_stream_without_generator():
    """Without a generator the noise is genfast's stream: repeatable under torch.manual_seed, differing
    from step to step."""
    s = gs.DDIMScheduler()
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)

    def run():
        torch.manual_seed(11)
        s.set_timesteps(10)
        return [s.step(m, t, x, eta=1.0).prev_sample for t in s.timesteps[:3]]

    r1, r2 = run(), run()
    for a, b in zip(r1, r2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(r1[0], r1[1])
    # the noise of step i is genfast.ops.randn at (seed, offset=i)
    for i in (0, 1, 2):
        z = genfast.ops.randn(SHAPE, seed=s._stream.seed, offset=i)
        explicit = s.step(m, s.timesteps[i], x, eta=1.0, variance_noise=z).prev_sample
        torch.testing.assert_close(r1[i], explicit, rtol=1e-5, atol=1e-6)


def test_ddpm_stream_no_noise_at_t0():
    s = gs.DDPMScheduler()
    s.set_timesteps(10)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    a = s.step(m, 0, x).prev_sample
    b = s.step(m, 0, x).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_input_names_the_argument():
    s = gs.DDIMScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 10, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 1000, x)
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, -1, x)
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.randn(2, 3, 6, 6), 10, x)
    with pytest.raises(TypeError, match="model_output"):
        s.step(x.long(), 10, x)
    with pytest.raises(TypeError, match="model_output"):
        s.step(x.numpy(), 10, x)
    p = gs.DDPMScheduler()
    p.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep"):
        p.step(x, 5, x)  # not one of the inference timesteps
    with pytest.raises(ValueError, match="beta_schedule"):
        gs.DDPMScheduler(beta_schedule="bogus")
    q = gs.DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="model_output"):
        q.step(x, 5, x)
    with pytest.raises(ValueError, match="beta_schedule"):
        gs.DDIMScheduler(beta_schedule="bogus")


def test_device_timestep_table_lookup():
    """The no-sync lookup used for CUDA timesteps, exercised on the CPU through the table functions."""
    from genfast.schedulers._common import device_lookup

    s = gs.DDIMScheduler(num_train_timesteps=50)
    s.set_timesteps(7)
    ac, prev = s._build_device_tables(50 // 7)
    for t in s.timesteps.tolist():
        a, p = s._alphas(t, torch.empty(0))
        assert float(device_lookup(ac, torch.tensor(t))) == a
        assert float(device_lookup(prev, torch.tensor(t))) == p
    assert torch.isnan(device_lookup(ac, torch.tensor(50)))
    d = gs.DDPMScheduler(num_train_timesteps=50)
    d.set_timesteps(7)
    ac, prev = d._build_device_tables()
    for t in d.timesteps.tolist():
        pt = d.previous_timestep(t)
        assert float(prev[t]) == (d._alphas_host[pt] if pt >= 0 else 1.0)
    assert torch.isnan(prev[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the device-timestep path needs one")
def test_cuda_timesteps_match_host_timesteps():
    s = gs.DDIMScheduler()
    s.set_timesteps(10, device="cuda")
    x, m = torch.randn(SHAPE, device="cuda"), torch.randn(SHAPE, device="cuda")
    for t in s.timesteps:
        a = s.step(m, t, x, eta=0.5, variance_noise=m).prev_sample
        b = s.step(m, int(t.cpu()), x, eta=0.5, variance_noise=m).prev_sample
        torch.testing.assert_close(a, b)


def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_diffusers_pipeline_swap(kind):
    unet = _tiny_unet()
    if kind == "ddim":
        pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=100))
        kw = dict(num_inference_steps=5, eta=0.5)
    else:
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=100))
        kw = dict(num_inference_steps=5)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="np", **kw).images
    cls = gs.DDIMScheduler if kind == "ddim" else gs.DDPMScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, cls)
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), output_type="np", **kw).images
    assert abs(out - ref).max() <= 1e-5


def test_imports_without_diffusers(monkeypatch):
    """Simulate diffusers absent: genfast.schedulers falls back to its own config holder."""
    for name in list(sys.modules):
        if name == "diffusers" or name.startswith("diffusers.") or name.startswith("genfast.schedulers"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    mod = importlib.import_module("genfast.schedulers")
    try:
        assert not mod.HAVE_DIFFUSERS
        s = mod.DDIMScheduler(num_train_timesteps=50, prediction_type="v_prediction")
        assert s.config.prediction_type == "v_prediction" and s.config["num_train_timesteps"] == 50
        s2 = mod.DDIMScheduler.from_config(s.config, clip_sample=False)
        assert s2.config.clip_sample is False and s2.config.num_train_timesteps == 50
        s2.register_to_config(steps_offset=1)
        assert s2.config.steps_offset == 1
        s2.set_timesteps(5)
        x = torch.randn(SHAPE)
        out = s2.step(x, s2.timesteps[0], x, eta=1.0, generator=torch.Generator().manual_seed(0))
        assert out.prev_sample.shape == x.shape and out[0] is out.prev_sample
        prev, x0 = s2.step(x, s2.timesteps[1], x, return_dict=False)
        p = mod.DDPMScheduler(num_train_timesteps=50)
        p.set_timesteps(5)
        assert p.step(x, p.timesteps[-1], x).prev_sample.shape == x.shape
        for cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"):
            e = getattr(mod, cls).from_config(dict(num_train_timesteps=50, prediction_type="v_prediction"))
            e.set_timesteps(4)
            for t in e.timesteps:
                out = e.step(x, t, e.scale_model_input(x, t), generator=torch.Generator().manual_seed(0))
                assert out.prev_sample.shape == x.shape and out[0] is out.prev_sample
            assert e.config.prediction_type == "v_prediction"
        assert mod.from_diffusers(e) is e
    finally:
        for name in list(sys.modules):
            if name.startswith("genfast.schedulers"):
                del sys.modules[name]


@pytest.mark.parametrize("kind", ["DDIMScheduler", "DDPMScheduler"])
def test_device_timestep_branch_matches_diffusers(kind):
    """The no-sync branch for accelerator timesteps (device tables, 0-dim tensor alphas), forced on
    CPU tensors: same results as diffusers."""
    module = importlib.import_module(f"genfast.schedulers.{kind[:4].lower()}")
    ref = getattr(diffusers, kind)(num_train_timesteps=100, prediction_type="v_prediction")
    ours = getattr(gs, kind).from_config(ref.config)
    ref.set_timesteps(5)
    ours.set_timesteps(5)
    x = torch.randn(SHAPE)
    with mock.patch.object(module, "is_device_timestep", lambda t: isinstance(t, torch.Tensor)):
        for t in ref.timesteps:
            m = torch.randn(SHAPE)
            kw = {"eta": 0.8} if kind == "DDIMScheduler" else {}
            a = ref.step(m, t, x, generator=torch.Generator().manual_seed(int(t)), **kw).prev_sample
            b = ours.step(m, t, x, generator=torch.Generator().manual_seed(int(t)), **kw).prev_sample
            assert _rel_err(b, a) <= 1e-5, int(t)
            x = a
        # a timestep outside the schedule gives NaN (no host check is possible without a sync)
        bad = ours.step(torch.randn(SHAPE), torch.tensor(100), x, generator=torch.Generator()).prev_sample
        assert torch.isnan(bad).all()


@pytest.mark.parametrize("cfg,eta", [(dict(clip_sample=True, clip_sample_range=0.0), 0.0),
                                     (dict(clip_sample=False), -0.5),
                                     (dict(thresholding=True, sample_max_value=0.5), 0.7)])
def test_ddim_edge_values_match_diffusers(cfg, eta):
    """Values no sensible schedule uses but diffusers accepts (clip range 0, negative eta, thresholding
    max below 1: torch.clamp with min > max gives max) give diffusers' results through the fused op."""
    ref = diffusers.DDIMScheduler(num_train_timesteps=100, **cfg)
    ours = gs.DDIMScheduler.from_config(ref.config)
    _run_both(ref, ours, 4, eta=eta)


@pytest.mark.parametrize("cfg", [dict(thresholding=True, sample_max_value=0.5, variance_type="fixed_small_log"),
                                 dict(thresholding=True, sample_max_value=0.8, variance_type="learned_range",
                                      prediction_type="v_prediction"),
                                 dict(thresholding=True, sample_max_value=0.6, variance_type="learned"),
                                 dict(variance_type="a_custom_name_passed_through", prediction_type="sample")])
def test_ddpm_edge_values_match_diffusers(cfg):
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, **cfg)
    ours = gs.DDPMScheduler.from_config(ref.config)
    learned = cfg["variance_type"].startswith("learned")
    fix = (lambda m: torch.cat([m[:, :3], m[:, 3:].abs() * 0.01], 1)) if cfg["variance_type"] == "learned" else None
    _run_both(ref, ours, 4, channels_out=6 if learned else 3, model_fix=fix)


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler"])
def test_mixed_and_half_dtypes(cls):
    """fp16 model output with an fp32 sample: promoted as diffusers' arithmetic promotes it."""
    ref, ours = getattr(diffusers, cls)(num_train_timesteps=100), getattr(gs, cls)(num_train_timesteps=100)
    for s in (ref, ours):
        s.set_timesteps(5)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE).half()
    for t in ref.timesteps[:2]:
        a = ref.step(m, t, x, generator=torch.Generator().manual_seed(2))
        b = ours.step(m, t, x, generator=torch.Generator().manual_seed(2))
        assert a.prev_sample.dtype == b.prev_sample.dtype == torch.float32
        # diffusers rounds sqrt(1 - a_t) * model_output to fp16 (a 0-dim fp32 tensor times an fp16 tensor);
        # genfast computes in fp32: they agree to fp16's precision
        assert _rel_err(b.prev_sample, a.prev_sample) <= 1e-3
