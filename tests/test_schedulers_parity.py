"""Parity of genfast's five drop-in schedulers with diffusers' classes, walked from diffusers' side: every
method and property (the underscore helpers pipelines call included) with its signature, every attribute
that __init__ and set_timesteps set (value, dtype, device), config keys and defaults, the values each
option accepts, the errors it raises, and the types, dtypes and devices of what the methods return."""
import inspect
import itertools
import warnings

import numpy as np
import pytest
import torch

import genfast.schedulers as gs

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)

NAMES = ["DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
         "DPMSolverMultistepScheduler"]
SHAPE = (2, 3, 4, 4)


def _pair(name, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, name)(num_train_timesteps=60, **cfg)
        ours = getattr(gs, name)(num_train_timesteps=60, **cfg)
    return ref, ours


def _members(cls):
    """(name, kind) of what diffusers' class defines beyond object: methods, properties, class attributes."""
    out = {}
    for name in dir(cls):
        if name.startswith("__"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            out[name] = "property"
        elif isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw):
            out[name] = "method"
        else:
            out[name] = "attribute"
    return out


def _params(fn):
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", NAMES)
def test_every_member_with_its_signature(name):
    ref_cls, ours_cls = getattr(diffusers, name), getattr(gs, name)
    ours_members = _members(ours_cls)
    for member, kind in _members(ref_cls).items():
        assert member in ours_members, f"{name}.{member} is missing"
        assert ours_members[member] == kind, f"{name}.{member}: {ours_members[member]} vs diffusers' {kind}"
        if kind == "method":
            ref_fn, ours_fn = getattr(ref_cls, member), getattr(ours_cls, member)
            assert _params(ours_fn) == _params(ref_fn), f"{name}.{member}{inspect.signature(ref_fn)}"
        elif kind == "attribute" and not member.startswith("_"):
            assert getattr(ours_cls, member) == getattr(ref_cls, member), f"{name}.{member}"
    assert ours_cls._compatibles == ref_cls._compatibles
    assert _params(ours_cls.__init__) == _params(ref_cls.__init__)


def _same_value(a, b, what):
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor), what
        assert a.dtype == b.dtype and a.device == b.device and a.shape == b.shape, \
            f"{what}: {a.dtype} {a.device} {tuple(a.shape)} vs {b.dtype} {b.device} {tuple(b.shape)}"
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, equal_nan=True, msg=what)
    elif isinstance(b, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=what)
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _same_value(x, y, f"{what}[{i}]")
    elif isinstance(b, float) and b != b:
        assert a != a, what
    else:
        assert type(a) is type(b) and a == b, f"{what}: {a!r} vs {b!r}"


def _public_state(s):
    return {k: v for k, v in vars(s).items() if k != "_internal_dict"}


CONFIGS = {
    "DDIMScheduler": [{}, dict(set_alpha_to_one=False, timestep_spacing="trailing", rescale_betas_zero_snr=True)],
    "DDPMScheduler": [{}, dict(variance_type="learned_range", beta_schedule="sigmoid")],
    "EulerDiscreteScheduler": [{}, dict(use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1),
                               dict(timestep_type="continuous", prediction_type="v_prediction")],
    "EulerAncestralDiscreteScheduler": [{}, dict(timestep_spacing="trailing", rescale_betas_zero_snr=True)],
    "DPMSolverMultistepScheduler": [{}, dict(solver_order=3, use_lu_lambdas=True),
                                    dict(use_flow_sigmas=True, prediction_type="flow_prediction")],
}


@pytest.mark.parametrize("name,cfg", [(n, c) for n in NAMES for c in CONFIGS[n]])
def test_attributes_after_init_set_timesteps_and_steps(name, cfg):
    ref, ours = _pair(name, **cfg)
    ref_state = _public_state(ref)
    for key, value in ref_state.items():
        assert hasattr(ours, key), f"{name}.{key} (set by __init__) is missing"
        _same_value(getattr(ours, key), value, f"{name}.{key} after __init__")
    for prop in ("init_noise_sigma", "step_index", "begin_index"):
        if hasattr(ref, prop):
            _same_value(getattr(ours, prop), getattr(ref, prop), f"{name}.{prop}")
    for device in (None, "cpu"):
        ref.set_timesteps(7, device=device)
        ours.set_timesteps(7, device=device)
        for key, value in _public_state(ref).items():
            _same_value(getattr(ours, key), value, f"{name}.{key} after set_timesteps(device={device})")
        _same_value(ours.init_noise_sigma, ref.init_noise_sigma, f"{name}.init_noise_sigma")
    x = torch.randn(SHAPE) * float(ref.init_noise_sigma)
    for t in ref.timesteps[:3]:
        xs = ref.scale_model_input(x, t)
        _same_value(ours.scale_model_input(x, t), xs, f"{name}.scale_model_input")
        m = torch.randn(SHAPE[:1] + (6 if "learned" in str(cfg) else 3,) + SHAPE[2:])
        a = ref.step(m, t, x, generator=torch.Generator().manual_seed(0))
        b = ours.step(m, t, x, generator=torch.Generator().manual_seed(0))
        assert type(b) is type(a)
        for key in a.keys():
            assert getattr(b, key).dtype == getattr(a, key).dtype and getattr(b, key).device == getattr(a, key).device
        x = a.prev_sample
    for key, value in _public_state(ref).items():  # step state: indices, model-output history, counters
        if key in ("model_outputs",):
            assert [v is None for v in getattr(ours, key)] == [v is None for v in value]
            continue
        _same_value(getattr(ours, key), value, f"{name}.{key} after 3 steps")


@pytest.mark.parametrize("name", NAMES)
def test_config_keys_and_defaults(name):
    ref, ours = _pair(name)
    ref_cfg = {k: v for k, v in ref.config.items() if not k.startswith("_")}
    ours_cfg = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    assert ours_cfg.keys() == ref_cfg.keys()
    for k in ref_cfg:
        _same_value(ours_cfg[k], ref_cfg[k], f"{name}.config.{k}")


# Every value each option accepts (from diffusers' signatures and code); both classes must accept it.
ACCEPTED = {
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "prediction_type": ["epsilon", "sample", "v_prediction"],
    "timestep_spacing": ["linspace", "leading", "trailing"],
    "rescale_betas_zero_snr": [False, True],
    "steps_offset": [0, 1],
}
EXTRA = {
    "DDIMScheduler": dict(clip_sample=[False, True], set_alpha_to_one=[False, True], thresholding=[False, True],
                          sample_max_value=[0.5, 1.0, 3.0], clip_sample_range=[0.5, 2.0]),
    "DDPMScheduler": dict(variance_type=["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                                         "learned_range", "my_own_variance"], beta_schedule=["laplace", "sigmoid"],
                          thresholding=[True], sample_max_value=[0.5, 2.0]),
    "EulerDiscreteScheduler": dict(interpolation_type=["linear", "log_linear"], use_karras_sigmas=[True],
                                   use_exponential_sigmas=[True], use_beta_sigmas=[True], sigma_min=[0.05],
                                   sigma_max=[10.0], timestep_type=["discrete", "continuous"],
                                   final_sigmas_type=["zero", "sigma_min"], prediction_type=["original_sample"]),
    "EulerAncestralDiscreteScheduler": {},
    "DPMSolverMultistepScheduler": dict(solver_order=[1, 2, 3], algorithm_type=["dpmsolver++", "sde-dpmsolver++"],
                                        solver_type=["midpoint", "heun", "logrho", "bh1", "bh2"],
                                        lower_order_final=[False], euler_at_final=[True], use_karras_sigmas=[True],
                                        use_exponential_sigmas=[True], use_beta_sigmas=[True], use_lu_lambdas=[True],
                                        use_flow_sigmas=[True], final_sigmas_type=["sigma_min"],
                                        lambda_min_clipped=[-5.1], variance_type=["learned", "learned_range"],
                                        thresholding=[True], sample_max_value=[0.5, 2.0],
                                        prediction_type=["flow_prediction"]),
}


def _outcome(fn):
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - the exception type is what is compared
        return None, exc


@pytest.mark.parametrize("name", NAMES)
def test_accepted_values_behave_the_same(name):
    """Each accepted value: both construct, set_timesteps and step (results within 1e-5), or both fail with
    the same exception type (some combinations fail in diffusers itself)."""
    options = {**ACCEPTED, **EXTRA[name]}
    x = torch.randn(SHAPE)
    for key, values in options.items():
        for value in values:
            ref, err_ref = _outcome(lambda: _pair(name, **{key: value})[0])
            ours, err_ours = _outcome(lambda: _pair(name, **{key: value})[1])
            assert (err_ref is None) == (err_ours is None), f"{name}({key}={value!r}): {err_ref!r} vs {err_ours!r}"
            if err_ref is not None:
                assert isinstance(err_ours, type(err_ref)), f"{name}({key}={value!r}): {err_ours!r} vs {err_ref!r}"
                continue
            for s in (ref, ours):
                s.set_timesteps(5)
            _same_value(ours.timesteps, ref.timesteps, f"{name}({key}={value!r}).timesteps")
            channels = 6 if (value in ("learned", "learned_range") and name == "DDPMScheduler") else 3
            m = torch.randn(SHAPE[:1] + (channels,) + SHAPE[2:])
            t = ref.timesteps[1]
            for s in (ref, ours):
                s.scale_model_input(x, ref.timesteps[0])
            a, err_a = _outcome(lambda: ref.step(m, t, x, generator=torch.Generator().manual_seed(1)))
            b, err_b = _outcome(lambda: ours.step(m, t, x, generator=torch.Generator().manual_seed(1)))
            assert (err_a is None) == (err_b is None), f"{name}({key}={value!r}).step: {err_a!r} vs {err_b!r}"
            if err_a is not None:
                assert isinstance(err_b, type(err_a)), f"{name}({key}={value!r}).step: {err_b!r} vs {err_a!r}"
                continue
            if name == "DDPMScheduler" and value == "fixed_large_log":
                assert torch.isnan(a.prev_sample).all() and torch.isfinite(b.prev_sample).all()  # documented
                continue
            err = float((b.prev_sample - a.prev_sample).norm() / a.prev_sample.norm())
            assert err <= 1e-5 or (torch.isnan(a.prev_sample).any() and torch.equal(
                torch.isnan(a.prev_sample), torch.isnan(b.prev_sample))), f"{name}({key}={value!r}): {err}"


BAD = {
    "common": [dict(beta_schedule="bogus")],
    "DDIMScheduler": [],
    "DDPMScheduler": [],
    "EulerDiscreteScheduler": [dict(use_karras_sigmas=True, use_beta_sigmas=True)],
    "EulerAncestralDiscreteScheduler": [],
    "DPMSolverMultistepScheduler": [dict(algorithm_type="bogus"), dict(solver_type="bogus"),
                                    dict(algorithm_type="dpmsolver"),  # final_sigmas_type zero
                                    dict(use_exponential_sigmas=True, use_karras_sigmas=True)],
}
BAD_SET = {
    "EulerDiscreteScheduler": [dict(interpolation_type="cubic"), dict(final_sigmas_type="bogus"),
                               dict(timestep_spacing="bogus")],
    "DPMSolverMultistepScheduler": [dict(final_sigmas_type="bogus"), dict(timestep_spacing="bogus")],
    "EulerAncestralDiscreteScheduler": [dict(timestep_spacing="bogus")],
    "DDIMScheduler": [dict(timestep_spacing="bogus")],
    "DDPMScheduler": [dict(timestep_spacing="bogus")],
}


@pytest.mark.parametrize("name", NAMES)
def test_errors_are_diffusers_errors(name):
    for cfg in BAD["common"] + BAD[name]:
        _, err_ref = _outcome(lambda: _pair(name, **cfg)[0])
        _, err_ours = _outcome(lambda: _pair(name, **cfg)[1])
        assert err_ref is not None and isinstance(err_ours, type(err_ref)), f"{name}({cfg}): {err_ours!r} vs {err_ref!r}"
    for cfg in BAD_SET.get(name, []):
        ref, ours = _pair(name, **cfg)
        _, err_ref = _outcome(lambda: ref.set_timesteps(4))
        _, err_ours = _outcome(lambda: ours.set_timesteps(4))
        assert err_ref is not None and isinstance(err_ours, type(err_ref)), f"{name}({cfg}): {err_ours!r} vs {err_ref!r}"
    ref, ours = _pair(name)
    x = torch.randn(SHAPE)
    if name in ("DDIMScheduler", "DPMSolverMultistepScheduler"):  # step before set_timesteps
        for s in (ref, ours):
            with pytest.raises(ValueError, match="set_timesteps"):
                s.step(x, 10, x)
    if name.startswith("Euler"):  # integer indices refused
        for s in (ref, ours):
            s.set_timesteps(4)
            with pytest.raises(ValueError, match="integer indices"):
                s.step(x, 3, x)
    if name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDPMScheduler"):
        for s in (ref, ours):
            with pytest.raises(ValueError):
                s.set_timesteps(4, timesteps=[30, 20])


def test_ddpm_previous_timestep_and_get_variance():
    ref, ours = _pair("DDPMScheduler", variance_type="learned_range")
    assert ours.previous_timestep(5) == ref.previous_timestep(5) == 4  # before set_timesteps: t - 1, an int
    assert type(ours.previous_timestep(5)) is type(ref.previous_timestep(5))
    for s in (ref, ours):
        s.set_timesteps(6)
    for t in ref.timesteps:
        a, b = ref.previous_timestep(t), ours.previous_timestep(t)
        _same_value(b, a, f"previous_timestep({int(t)})")
        v = torch.rand(SHAPE)
        for vt in (None, "fixed_small", "fixed_small_log", "fixed_large", "learned_range"):
            _same_value(ours._get_variance(t, predicted_variance=v, variance_type=vt),
                        ref._get_variance(t, predicted_variance=v, variance_type=vt), f"_get_variance({int(t)}, {vt})")
    for s in (ref, ours):
        s.set_timesteps(timesteps=[50, 31, 12, 0])
    for t in (50, 31, 0):
        _same_value(ours.previous_timestep(t), ref.previous_timestep(t), f"custom previous_timestep({t})")


def test_ddim_helpers():
    ref, ours = _pair("DDIMScheduler", thresholding=True, sample_max_value=2.0)
    for s in (ref, ours):
        s.set_timesteps(6)
    for t, p in itertools.product((50, 10, 0), (40, 0, -10)):
        _same_value(ours._get_variance(t, p), ref._get_variance(t, p), f"_get_variance({t}, {p})")
    x = torch.randn(SHAPE) * 3
    _same_value(ours._threshold_sample(x), ref._threshold_sample(x), "_threshold_sample")
    _same_value(ours._threshold_sample(x.half()), ref._threshold_sample(x.half()), "_threshold_sample fp16")


def test_dpm_solver_unfused_helpers():
    """convert_model_output and the three update helpers equal diffusers' (pipelines such as the
    inversion ones call them)."""
    for cfg in (dict(solver_order=3), dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min",
                                           prediction_type="v_prediction", thresholding=True),
                dict(algorithm_type="sde-dpmsolver++", solver_type="heun")):
        ref, ours = _pair("DPMSolverMultistepScheduler", **cfg)
        for s in (ref, ours):
            s.set_timesteps(8)
            s._step_index = 3
        x, z = torch.randn(SHAPE), torch.randn(SHAPE)
        ms = [torch.randn(SHAPE) for _ in range(3)]
        conv = [ref.convert_model_output(m, sample=x) for m in ms]
        for c, m in zip(conv, ms):
            mine = ours.convert_model_output(m, sample=x)
            assert mine.dtype == c.dtype and float((mine - c).norm() / c.norm()) <= 1e-6, cfg
        noise = z if "sde" in cfg.get("algorithm_type", "") else None
        pairs = [(ours.dpm_solver_first_order_update(conv[0], sample=x, noise=noise),
                  ref.dpm_solver_first_order_update(conv[0], sample=x, noise=noise)),
                 (ours.multistep_dpm_solver_second_order_update(conv[:2], sample=x, noise=noise),
                  ref.multistep_dpm_solver_second_order_update(conv[:2], sample=x, noise=noise))]
        if "sde" not in cfg.get("algorithm_type", ""):
            pairs.append((ours.multistep_dpm_solver_third_order_update(conv, sample=x, noise=noise),
                          ref.multistep_dpm_solver_third_order_update(conv, sample=x, noise=noise)))
        for i, (b, a) in enumerate(pairs):
            assert float((b - a).norm() / a.norm()) <= 1e-5, (cfg, i)
        # the deprecated positional timestep arguments still work
        with pytest.warns(FutureWarning):
            ours.convert_model_output(ms[0], 5, x)


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_and_velocity(name):
    ref, ours = _pair(name)
    for s in (ref, ours):
        s.set_timesteps(6)
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    ts = ref.timesteps[[1, 4]]
    _same_value(ours.add_noise(x, z, ts), ref.add_noise(x, z, ts), f"{name}.add_noise")
    if hasattr(ref, "get_velocity"):
        _same_value(ours.get_velocity(x, z, ts), ref.get_velocity(x, z, ts), f"{name}.get_velocity")
    if hasattr(ref, "set_begin_index"):
        for s in (ref, ours):
            s.set_begin_index(2)
        _same_value(ours.add_noise(x, z, ts), ref.add_noise(x, z, ts), f"{name}.add_noise with begin_index")
        assert ours.begin_index == ref.begin_index == 2
    assert len(ours) == len(ref)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"])
def test_scale_model_input_warning_goes_to_diffusers_logger(name, caplog):
    """step before scale_model_input logs diffusers' warning on diffusers' logger for that class."""
    from diffusers.utils import logging as diffusers_logging

    module = getattr(diffusers, name).__module__
    logger = diffusers_logging.get_logger(module)
    for s in _pair(name):
        s.set_timesteps(4)
        records = []
        handler = type("H", (__import__("logging").Handler,), {"emit": lambda self, r: records.append(r)})()
        logger.addHandler(handler)
        try:
            s.step(torch.randn(SHAPE), s.timesteps[0], torch.randn(SHAPE))
        finally:
            logger.removeHandler(handler)
        assert any("scale_model_input" in r.getMessage() for r in records), type(s).__module__
