"""genfast.schedulers.EulerDiscreteScheduler, EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler
against diffusers' own classes (the oracle) over the option matrix, the swap into diffusers pipelines,
from_diffusers mid-loop, genfast's stream without a generator, and the no-sync first step index."""
import copy
import itertools
import warnings

import pytest
import torch

import genfast
import genfast.schedulers as gs

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)

SHAPE = (2, 3, 6, 5)


def _rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _float64_twin(ref):
    """A copy of a diffusers scheduler whose sigma table is float64, so its step computes in float64 (the
    fp32 samples it is given are exact in float64)."""
    twin = copy.deepcopy(ref)
    twin.sigmas = ref.sigmas.double()
    return twin


def _fp32_draws(shape, generator=None, device=None, dtype=None, layout=None):
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def _close(ours, ref32, ref64, what):
    """fp32 relative error <= 1e-5 against diffusers; where diffusers' own fp32 arithmetic is that far off,
    genfast must be as close to diffusers run in float64 as diffusers' fp32 is."""
    nan = torch.isnan(ref32)
    if nan.any():  # diffusers computes NaN here (a zero step in log-SNR): genfast must agree on where
        assert torch.equal(torch.isnan(ours), nan), what
        ours, ref32, ref64 = ours[~nan], ref32[~nan], ref64[~nan]
        if ours.numel() == 0:
            return
    err = _rel_err(ours, ref32)
    if err <= 1e-5:
        return
    err64, ref_err64 = _rel_err(ours, ref64), _rel_err(ref32, ref64)
    assert err64 <= max(1e-5, 2 * ref_err64), f"{what}: {err} vs diffusers fp32, {err64} vs float64 ({ref_err64})"


def _run_both(ref, ours, steps=None, *, step_kw=None, seed=0, channels_out=3, set_kw=None, model_fix=None):
    """The same model outputs and generator seeds into both, through a pipeline-like loop (init_noise_sigma,
    scale_model_input, step); prev_sample (and pred_original_sample) compared at every step."""
    set_kw = set_kw if set_kw is not None else {"num_inference_steps": steps}
    ref.set_timesteps(**set_kw)
    ours.set_timesteps(**set_kw)
    assert torch.equal(ref.timesteps, ours.timesteps) and ref.timesteps.dtype == ours.timesteps.dtype
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    ref64 = _float64_twin(ref)
    torch.manual_seed(seed)
    x = torch.randn(SHAPE) * float(ref.init_noise_sigma)
    step_kw = step_kw or {}
    for t in ref.timesteps:
        xin = ref.scale_model_input(x, t)
        torch.testing.assert_close(ours.scale_model_input(x, t), xin, rtol=0, atol=0)
        ref64.scale_model_input(x.double(), t)
        m = torch.randn((SHAPE[0], channels_out) + SHAPE[2:])
        if model_fix is not None:
            m = model_fix(m)
        g_ref, g_ours, g64 = (torch.Generator().manual_seed(int(t) + 7) for _ in range(3))
        try:
            a = ref.step(m, t, x, generator=g_ref, **step_kw)
        except Exception as exc:  # diffusers fails here: so must genfast, with the same exception type
            with pytest.raises(type(exc)):
                ours.step(m, t, x, generator=g_ours, **step_kw)
            return x
        b = ours.step(m, t, x, generator=g_ours, **step_kw)
        module = type(ref).__module__
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from unittest import mock
            with mock.patch(f"{module}.randn_tensor", _fp32_draws):
                c = ref64.step(m.double(), t, x.double(), generator=g64, **step_kw)
        _close(b.prev_sample, a.prev_sample, c.prev_sample, f"prev_sample at t={float(t)}")
        assert b.prev_sample.dtype == a.prev_sample.dtype
        if hasattr(a, "pred_original_sample"):
            _close(b.pred_original_sample, a.pred_original_sample, c.pred_original_sample, f"x0 at t={float(t)}")
            assert b.pred_original_sample.dtype == a.pred_original_sample.dtype
        assert torch.equal(g_ref.get_state(), g_ours.get_state())  # generators consumed identically
        assert ours.step_index == ref.step_index
        if hasattr(ref, "lower_order_nums"):
            assert ours.lower_order_nums == ref.lower_order_nums
            for h_ours, h_ref in zip(ours.model_outputs, ref.model_outputs):
                assert (h_ours is None) == (h_ref is None)
                if h_ref is not None:
                    assert _rel_err(h_ours, h_ref) <= 1e-5 or _rel_err(h_ours, h_ref) <= 2 * _rel_err(
                        h_ref, h_ref.double()) + 1e-5
        x = a.prev_sample
    return x


BETAS = ["linear", "scaled_linear", "squaredcos_cap_v2"]
SPACINGS = [("linspace", 0), ("leading", 1), ("trailing", 0)]
SIGMA_KINDS = [{}, dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True), dict(use_beta_sigmas=True)]


# ---------------------------------------------------------------------------------------------
# Euler
# ---------------------------------------------------------------------------------------------
# each spacing with one beta schedule (the schedules are exercised on every other axis by the DDIM/DDPM tests)
SPACED_BETAS = [(spacing, offset, beta) for (spacing, offset), beta in zip(SPACINGS, BETAS)]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing,offset,beta_schedule", SPACED_BETAS)
@pytest.mark.parametrize("sigmas", range(len(SIGMA_KINDS)))
def test_euler_matches_diffusers(prediction_type, spacing, offset, sigmas, beta_schedule):
    cfg = dict(num_train_timesteps=100, beta_schedule=beta_schedule, prediction_type=prediction_type,
               timestep_spacing=spacing, steps_offset=offset, **SIGMA_KINDS[sigmas])
    ref = diffusers.EulerDiscreteScheduler(**cfg)
    _run_both(ref, gs.EulerDiscreteScheduler.from_config(ref.config), 6)


@pytest.mark.parametrize("cfg,step_kw,set_kw", [
    (dict(interpolation_type="log_linear"), {}, None),
    (dict(final_sigmas_type="sigma_min"), {}, None),
    (dict(final_sigmas_type="sigma_min", use_karras_sigmas=True, sigma_min=0.1, sigma_max=20.0), {}, None),
    (dict(timestep_type="continuous", prediction_type="v_prediction"), {}, None),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction"), {}, None),
    (dict(), dict(s_churn=1.5), None),
    (dict(), dict(s_churn=20.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.003), None),
    (dict(prediction_type="sample"), dict(s_churn=3.0), None),
    (dict(), {}, dict(timesteps=[90, 61, 33, 7])),
    (dict(), {}, dict(sigmas=[9.0, 4.0, 1.5, 0.3, 0.0])),
    (dict(trained_betas=[0.001 * (i + 1) for i in range(100)]), {}, None),
])
def test_euler_options_match_diffusers(cfg, step_kw, set_kw):
    ref = diffusers.EulerDiscreteScheduler(**{"num_train_timesteps": 100, **cfg})
    _run_both(ref, gs.EulerDiscreteScheduler.from_config(ref.config), 6, step_kw=step_kw, set_kw=set_kw)


# ---------------------------------------------------------------------------------------------
# Euler ancestral
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing,offset,beta_schedule", SPACED_BETAS)
@pytest.mark.parametrize("rescale", [False, True])
def test_euler_ancestral_matches_diffusers(prediction_type, spacing, offset, beta_schedule, rescale):
    cfg = dict(num_train_timesteps=100, beta_schedule=beta_schedule, prediction_type=prediction_type,
               timestep_spacing=spacing, steps_offset=offset, rescale_betas_zero_snr=rescale)
    ref = diffusers.EulerAncestralDiscreteScheduler(**cfg)
    _run_both(ref, gs.EulerAncestralDiscreteScheduler.from_config(ref.config), 6)


# ---------------------------------------------------------------------------------------------
# DPM-Solver multistep
# ---------------------------------------------------------------------------------------------
ALGORITHMS = ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]


def _dpm(**cfg):
    cfg = {"num_train_timesteps": 100, **cfg}
    if cfg.get("algorithm_type", "dpmsolver++") in ("dpmsolver", "sde-dpmsolver"):
        cfg.setdefault("final_sigmas_type", "sigma_min")  # diffusers refuses "zero" for these
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepScheduler(**cfg)
        ours = gs.DPMSolverMultistepScheduler.from_config(ref.config)
    return ref, ours


@pytest.mark.parametrize("algorithm_type", ALGORITHMS)
@pytest.mark.parametrize("solver_order", [1, 2, 3])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_dpm_solver_matches_diffusers(algorithm_type, solver_order, solver_type, prediction_type):
    if algorithm_type == "sde-dpmsolver" and solver_order == 3:
        pytest.skip("diffusers has no third-order sde-dpmsolver update (it fails there)")
    ref, ours = _dpm(algorithm_type=algorithm_type, solver_order=solver_order, solver_type=solver_type,
                     prediction_type=prediction_type)
    _run_both(ref, ours, 7)


@pytest.mark.parametrize("sigmas", [{}, dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True),
                                    dict(use_beta_sigmas=True), dict(use_lu_lambdas=True)])
@pytest.mark.parametrize("final_sigmas_type", ["zero", "sigma_min"])
@pytest.mark.parametrize("spacing,offset,finals", [
    ("linspace", 0, dict(lower_order_final=True)), ("leading", 1, dict(lower_order_final=False)),
    ("trailing", 0, dict(lower_order_final=False, euler_at_final=True))])
def test_dpm_solver_schedules_match_diffusers(sigmas, final_sigmas_type, spacing, offset, finals):
    algorithm = "sde-dpmsolver++" if offset else "dpmsolver++"
    ref, ours = _dpm(algorithm_type=algorithm, solver_order=3, final_sigmas_type=final_sigmas_type,
                     timestep_spacing=spacing, steps_offset=offset, beta_schedule="scaled_linear", **sigmas, **finals)
    _run_both(ref, ours, 8)


@pytest.mark.parametrize("algorithm_type", ALGORITHMS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sample_max_value", [0.7, 1.5])
def test_dpm_solver_thresholding_matches_diffusers(algorithm_type, prediction_type, sample_max_value):
    ref, ours = _dpm(algorithm_type=algorithm_type, prediction_type=prediction_type, thresholding=True,
                     dynamic_thresholding_ratio=0.9, sample_max_value=sample_max_value)
    _run_both(ref, ours, 5)


@pytest.mark.parametrize("cfg,set_kw", [
    (dict(solver_order=3), dict(num_inference_steps=16)),  # >= 15 steps: third order to the end
    (dict(solver_order=2, lower_order_final=False), dict(num_inference_steps=16)),
    (dict(variance_type="learned_range"), None),
    (dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0), None),
    (dict(lambda_min_clipped=-5.1, solver_order=3), None),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction"), None),
    (dict(algorithm_type="deis", solver_type="bh2", final_sigmas_type="sigma_min"), None),  # diffusers maps both to dpmsolver++/midpoint
    (dict(), dict(timesteps=[99, 80, 52, 31, 12, 3])),
    (dict(use_karras_sigmas=True, beta_schedule="squaredcos_cap_v2"), None),
])
def test_dpm_solver_options_match_diffusers(cfg, set_kw):
    ref, ours = _dpm(**cfg)
    learned = cfg.get("variance_type") == "learned_range"
    _run_both(ref, ours, 7, set_kw=set_kw, channels_out=6 if learned else 3)


def test_dpm_solver_variance_noise_and_tuple():
    ref, ours = _dpm(algorithm_type="sde-dpmsolver++")
    for s in (ref, ours):
        s.set_timesteps(5)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    z = torch.randn(SHAPE, dtype=torch.float64)
    for t in ref.timesteps[:3]:
        a = ref.step(m, t, x, variance_noise=z, return_dict=False)
        b = ours.step(m, t, x, variance_noise=z, return_dict=False)
        assert isinstance(b, tuple) and len(b) == 1
        assert _rel_err(b[0], a[0]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "DPMSolverMultistepScheduler"])
def test_half_precision_dtypes_and_values(name, dtype):
    """fp16/bf16 model outputs: the same output dtypes as diffusers (prev in the model's dtype; Euler's
    pred_original_sample in float32) and values within the dtype's rounding of diffusers'."""
    ref = getattr(diffusers, name)(num_train_timesteps=100)
    ours = getattr(gs, name).from_config(ref.config)
    for s in (ref, ours):
        s.set_timesteps(5)
    torch.manual_seed(3)
    x = (torch.randn(SHAPE) * float(ref.init_noise_sigma)).to(dtype)
    for t in ref.timesteps:
        ref.scale_model_input(x, t)
        ours.scale_model_input(x, t)
        m = torch.randn(SHAPE).to(dtype)
        a = ref.step(m, t, x, generator=torch.Generator().manual_seed(1))
        b = ours.step(m, t, x, generator=torch.Generator().manual_seed(1))
        assert b.prev_sample.dtype == a.prev_sample.dtype == dtype
        for key in ("prev_sample", "pred_original_sample"):
            if hasattr(a, key):
                assert getattr(b, key).dtype == getattr(a, key).dtype, key
                tol = 1e-2 if dtype == torch.float16 else 6e-2
                assert _rel_err(getattr(b, key), getattr(a, key)) <= tol, key
        x = a.prev_sample


def test_mixed_dtypes_promote_as_diffusers():
    for name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler"):
        ref = getattr(diffusers, name)(num_train_timesteps=100)
        ours = getattr(gs, name).from_config(ref.config)
        for s in (ref, ours):
            s.set_timesteps(4)
        x, m = torch.randn(SHAPE), torch.randn(SHAPE).half()
        t = ref.timesteps[0]
        a, b = ref.step(m, t, x), ours.step(m, t, x)
        assert a.prev_sample.dtype == b.prev_sample.dtype, name
        assert _rel_err(b.prev_sample, a.prev_sample) <= 1e-3, name


# ---------------------------------------------------------------------------------------------
# genfast's stream, the first step index, from_diffusers.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg,kw", [("EulerAncestralDiscreteScheduler", {}, {}),
                                         ("EulerDiscreteScheduler", {}, dict(s_churn=2.0)),
                                         ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), {})])
def test_stream_noise_without_generator(name, cfg, kw):
    """Without a generator the noise is genfast's stream: repeatable under torch.manual_seed, step i's noise
    is genfast.ops.randn(shape, seed, offset=i)."""
    s = getattr(gs, name)(**cfg)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)

    def run(noises=None):
        torch.manual_seed(11)
        s.set_timesteps(6)
        out = []
        for i, t in enumerate(s.timesteps[:3]):
            s.scale_model_input(x, t)
            if noises is None:
                out.append(s.step(m, t, x, **kw).prev_sample)
            else:
                kwn = {"variance_noise": noises[i]} if "DPM" in name else {}
                out.append(s.step(m, t, x, **kw, **kwn).prev_sample if kwn else None)
        return out

    r1, r2 = run(), run()
    for a, b in zip(r1, r2):
        assert torch.equal(a, b)
    seed = s._stream.seed
    assert seed is not None
    if "DPM" in name:
        z = [genfast.ops.randn(SHAPE, seed=seed, offset=i) for i in range(3)]
        for a, b in zip(r1, run(z)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    else:  # the same step with the stream's draws passed as a tensor
        from genfast.ops import sampler_step
        s.set_timesteps(6)
        sig = s.sigmas.tolist()
        gamma = min(kw.get("s_churn", 0.0) / (len(sig) - 1), 2 ** 0.5 - 1)
        from genfast.ops.sampler_steps import euler_ancestral_coefficients, euler_coefficients
        co = euler_coefficients(sig[0], sig[1], gamma=gamma) if kw else euler_ancestral_coefficients(sig[0], sig[1])
        expected, _ = sampler_step(x, m, co, noise=genfast.ops.randn(SHAPE, seed=seed, offset=0))
        torch.testing.assert_close(r1[0], expected, rtol=1e-5, atol=1e-6)


def test_first_step_index_without_a_device_read():
    """An element of scheduler.timesteps is located by its storage position (what a CUDA loop needs to avoid
    a sync); diffusers' value lookup (the second of repeated values) is what it returns."""
    s = gs.EulerDiscreteScheduler(num_train_timesteps=100)
    s.set_timesteps(6)
    t = s.timesteps[3]
    s.timesteps = s.timesteps  # same object: still found by position
    assert s._index_by_position(t) == 3
    assert s._index_by_position(t.clone()) is None  # another tensor: value lookup
    s._init_step_index(t.clone())
    assert s.step_index == 3
    d = gs.DPMSolverMultistepScheduler(num_train_timesteps=100)
    d.set_timesteps(timesteps=[80, 50, 50, 20])
    assert d._index_by_position(d.timesteps[1]) == 2 == d.index_for_timestep(50)  # diffusers: the second match
    assert d.index_for_timestep(7) == 3  # not in the schedule: the last index, as diffusers
    with pytest.raises(IndexError):
        s.index_for_timestep(12345.0)


@pytest.mark.parametrize("name,cfg", [("DDIMScheduler", dict(timestep_spacing="trailing")),
                                      ("DDPMScheduler", dict(variance_type="fixed_large")),
                                      ("EulerDiscreteScheduler", dict(use_karras_sigmas=True)),
                                      ("EulerAncestralDiscreteScheduler", {}),
                                      ("DPMSolverMultistepScheduler", dict(solver_order=3, thresholding=True,
                                                                           sample_max_value=1.2))])
def test_from_diffusers_mid_loop(name, cfg):
    """from_diffusers after a few steps carries the state on: the rest of the loop equals diffusers'."""
    ref = getattr(diffusers, name)(num_train_timesteps=100, **cfg)
    ref.set_timesteps(8)
    torch.manual_seed(0)
    x = torch.randn(SHAPE) * float(ref.init_noise_sigma)
    ms = [torch.randn(SHAPE) for _ in ref.timesteps]
    kw = {"eta": 0.5} if name == "DDIMScheduler" else {}

    def step(s, i, t, x):
        s.scale_model_input(x, t)
        return s.step(ms[i], t, x, generator=torch.Generator().manual_seed(i), **kw).prev_sample

    for i, t in enumerate(ref.timesteps[:3]):
        x = step(ref, i, t, x)
    ours = gs.from_diffusers(ref)
    assert type(ours) is getattr(gs, name)
    assert dict(ours.config) == dict(ref.config)
    twin = copy.deepcopy(ref)
    xa, xb = x, x
    for i, t in list(enumerate(ref.timesteps))[3:]:
        xa = step(twin, i, t, xa)
        xb = step(ours, i, t, xb)
        assert _rel_err(xb, xa) <= 1e-5, (name, i)
    assert gs.from_diffusers(ours) is ours


def test_from_diffusers_rejects_other_schedulers():
    with pytest.raises(gs.UnsupportedSchedulerError, match="PNDMScheduler"):
        gs.from_diffusers(diffusers.PNDMScheduler())
    with pytest.raises(TypeError, match="no drop-in"):
        gs.from_diffusers(object())


# ---------------------------------------------------------------------------------------------
# Swapped into diffusers pipelines: the same images.
# ---------------------------------------------------------------------------------------------
def _tiny_unet(in_channels=3):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=in_channels, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


SWAPS = [("EulerDiscreteScheduler", {}),  # DDIM/DDPM: tests/test_schedulers.py::test_diffusers_pipeline_swap
         ("EulerAncestralDiscreteScheduler", {}), ("DPMSolverMultistepScheduler", {}),
         ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True))]


@pytest.mark.parametrize("name,cfg", SWAPS)
def test_ddpm_pipeline_swap(name, cfg):
    """DDPMPipeline passes its generator to step: even the stochastic samplers give the same images."""
    pipe = diffusers.DDPMPipeline(unet=_tiny_unet(), scheduler=getattr(diffusers, name)(num_train_timesteps=100, **cfg))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=6, output_type="np").images
    pipe.scheduler = gs.from_diffusers(pipe.scheduler)
    assert isinstance(pipe.scheduler, getattr(gs, name))
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=6, output_type="np").images
    assert abs(out - ref).max() <= 1e-5


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler"])
def test_latent_diffusion_pipeline_swap(name):
    """LDMSuperResolutionPipeline scales the initial noise by init_noise_sigma and calls scale_model_input."""
    torch.manual_seed(1)
    vq = diffusers.VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8,),
                           layers_per_block=1, norm_num_groups=4, num_vq_embeddings=16,
                           down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import \
        LDMSuperResolutionPipeline

    pipe = LDMSuperResolutionPipeline(vqvae=vq, unet=_tiny_unet(6),
                                                scheduler=getattr(diffusers, name)(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    low = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = pipe(low, num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="np").images
    pipe.scheduler = gs.from_diffusers(pipe.scheduler)
    out = pipe(low, num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert abs(out - ref).max() <= 1e-5


def test_all_five_load_each_others_configs(tmp_path):
    """from_config across the five (pipelines swap schedulers this way); save_pretrained writes diffusers'
    format."""
    names = list(gs.SCHEDULERS)
    for a, b in itertools.product(names, names):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = getattr(gs, b).from_config(getattr(diffusers, a)(num_train_timesteps=50).config)
            theirs = getattr(diffusers, b).from_config(getattr(diffusers, a)(num_train_timesteps=50).config)
        assert dict(ours.config) == dict(theirs.config), (a, b)
    ours = gs.DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True)
    ours.save_pretrained(tmp_path)
    back = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert back.config.solver_order == 3 and back.config.use_karras_sigmas
    assert gs.DPMSolverMultistepScheduler.from_pretrained(tmp_path).config == back.config
