"""genfast.ops.ddim_step / ddpm_step: the reference against diffusers' own step, every backend against
the reference, noise from genfast's stream, odd/empty/non-contiguous inputs, NaN, bad input, opcheck and
the Triton kernel's sm_90 compilation."""
import itertools
import warnings

import pytest
import torch

import genfast
from genfast.ops import ddim_step, ddpm_step
from genfast.ops.diffusion import VARIANCE_TYPES, diffusion_step_op
from tolerances import assert_close

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)

PRED = ["epsilon", "sample", "v_prediction"]
THRESH = (0.9, 2.0)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def _alphas(kind, a_t, a_p, B, device="cpu"):
    if kind == "float":
        return float(a_t), float(a_p)
    if kind == "0dim":
        return torch.as_tensor(a_t, dtype=torch.float32, device=device), torch.as_tensor(a_p, dtype=torch.float32, device=device)
    return (torch.as_tensor(a_t, dtype=torch.float32).expand(B).clone().to(device),
            torch.as_tensor(a_p, dtype=torch.float32).expand(B).clone().to(device))


# ---------------------------------------------------------------------------------------------
# The reference equals diffusers' step (fp32, relative error <= 1e-5) over the option matrix.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,clip,thresh,eta,use_clipped",
                         list(itertools.product(PRED, [False, True], [False, True], [0.0, 0.7], [False, True])))
def test_reference_matches_diffusers_ddim(pred, clip, thresh, eta, use_clipped):
    torch.manual_seed(1)
    sched = diffusers.DDIMScheduler(prediction_type=pred, clip_sample=clip, clip_sample_range=1.5, thresholding=thresh,
                                    dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    sched.set_timesteps(10)
    B = 2
    for t in (sched.timesteps[2].item(), sched.timesteps[-1].item()):
        x, m, z = torch.randn(B, 3, 5, 7) * 2, torch.randn(B, 3, 5, 7) * 2, torch.randn(B, 3, 5, 7)
        ref = sched.step(m, t, x, eta=eta, use_clipped_model_output=use_clipped, variance_noise=z if eta > 0 else None)
        prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
        a_t = sched.alphas_cumprod[t]
        a_p = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
        for kind in ("float", "0dim", "B"):
            at, ap = _alphas(kind, a_t, a_p, B)
            with genfast.use_backend("reference"):
                prev, x0 = ddim_step(x, m, at, ap, eta=eta, prediction_type=pred, clip_sample_range=1.5 if clip else None,
                                     thresholding=THRESH if thresh else None, use_clipped_model_output=use_clipped,
                                     noise=z, return_pred_original=True)
            assert _rel(prev, ref.prev_sample) <= 1e-5, kind
            assert _rel(x0, ref.pred_original_sample) <= 1e-5, kind


DDPM_VT = [v for v in VARIANCE_TYPES if v != "fixed_large_log"]


@pytest.mark.parametrize("pred,clip,thresh,vt", list(itertools.product(PRED, [False, True], [False, True], DDPM_VT)))
def test_reference_matches_diffusers_ddpm(pred, clip, thresh, vt):
    torch.manual_seed(2)
    sched = diffusers.DDPMScheduler(prediction_type=pred, clip_sample=clip, clip_sample_range=1.5, thresholding=thresh,
                                    dynamic_thresholding_ratio=0.9, sample_max_value=2.0, variance_type=vt)
    sched.set_timesteps(10)
    B, C = 2, 3
    for t in (sched.timesteps[3].item(), sched.timesteps[-1].item()):
        x = torch.randn(B, C, 5, 7) * 2
        m = torch.randn(B, 2 * C if vt.startswith("learned") else C, 5, 7)
        if vt == "learned":
            m[:, C:] = m[:, C:].abs() * 0.1
        ref = sched.step(m, t, x, generator=torch.Generator().manual_seed(5))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        prev_t = sched.previous_timestep(t)
        a_t = sched.alphas_cumprod[t]
        a_p = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.one
        for kind in ("float", "0dim", "B"):
            at, ap = _alphas(kind, a_t, a_p, B)
            with genfast.use_backend("reference"):
                prev, x0 = ddpm_step(x, m, at, ap, variance_type=vt, prediction_type=pred,
                                     clip_sample_range=1.5 if clip else None, thresholding=THRESH if thresh else None,
                                     noise=z, add_noise=bool(t > 0), return_pred_original=True)
            assert _rel(prev, ref.prev_sample) <= 1e-5, kind
            assert _rel(x0, ref.pred_original_sample) <= 1e-5, kind


def test_fixed_large_log_uses_log_variance():
    # diffusers returns sqrt(log(beta_t)) = NaN for fixed_large_log; genfast uses std = sqrt(beta_t).
    x, m, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = ddpm_step(x, m, 0.3, 0.5, variance_type="fixed_large_log", noise=z)
    b = ddpm_step(x, m, 0.3, 0.5, variance_type="fixed_large", noise=z)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_guidance_equals_combined_output():
    x, u, c = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    with genfast.use_backend("reference"):
        a = ddim_step(x, (u, c), 0.4, 0.6, guidance_scale=7.5)
        b = ddim_step(x, u + 7.5 * (c - u), 0.4, 0.6)
    torch.testing.assert_close(a, b)


def test_ddpm_add_noise_modes():
    x, m, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ap = torch.tensor([0.6, 1.0])
    auto = ddpm_step(x, m, torch.tensor([0.3, 0.9]), ap, variance_type="fixed_large", noise=z)
    never = ddpm_step(x, m, torch.tensor([0.3, 0.9]), ap, variance_type="fixed_large", noise=z, add_noise=False)
    always = ddpm_step(x, m, torch.tensor([0.3, 0.9]), ap, variance_type="fixed_large", noise=z, add_noise=True)
    torch.testing.assert_close(auto[1], never[1])  # alpha_prev == 1: no noise
    torch.testing.assert_close(auto[0], always[0])
    assert not torch.allclose(auto[0], never[0])


# ---------------------------------------------------------------------------------------------
# Every backend against the reference.
# ---------------------------------------------------------------------------------------------
def _ddim_cases(full):
    cases = []
    for pred, clip, thresh, eta, ucm, guid, alph in itertools.product(PRED, [None, 1.5], [None, THRESH], [0.0, 0.7],
                                                                      [False, True], [None, 3.0], ["float", "0dim", "B"]):
        cases.append(("ddim", dict(eta=eta, prediction_type=pred, clip_sample_range=clip, thresholding=thresh,
                                   use_clipped_model_output=ucm, guidance_scale=guid), alph))
    if full:
        return cases
    return cases[::23]  # a spread-out subset for the Triton interpreter


def _ddpm_cases(full):
    cases = []
    for pred, clip, thresh, vt, an, guid, alph in itertools.product(PRED, [None, 1.5], [None, THRESH], list(VARIANCE_TYPES),
                                                                     [None, True], [None, 2.0], ["float", "B"]):
        cases.append(("ddpm", dict(variance_type=vt, prediction_type=pred, clip_sample_range=clip, thresholding=thresh,
                                   add_noise=an, guidance_scale=guid), alph))
    if full:
        return cases
    return cases[::29]


def _inputs(kind, kw, alph, B, shape, dtype, device, gen):
    C = shape[0]
    learned = kind == "ddpm" and kw["variance_type"].startswith("learned")
    mshape = (B, 2 * C if learned else C) + tuple(shape[1:])
    x = (torch.randn((B,) + tuple(shape), generator=gen) * 2).to(dtype).to(device)
    m = torch.randn(mshape, generator=gen)
    c = torch.randn(mshape, generator=gen)
    if kind == "ddpm" and kw["variance_type"] == "learned":
        m[:, C:] = m[:, C:].abs() * 0.1
        c[:, C:] = c[:, C:].abs() * 0.1
    m, c = m.to(dtype).to(device), c.to(dtype).to(device)
    if alph == "float":
        at, ap = 0.3, 0.6
    elif alph == "0dim":
        at, ap = torch.tensor(0.3, device=device), torch.tensor(0.6, device=device)
    else:
        at = (torch.rand(B, generator=gen) * 0.5 + 0.1).to(device)
        ap = torch.tensor([0.7, 1.0, 0.8, 0.9][:B] + [0.75] * max(0, B - 4), device=device)
    mo = (m, c) if kw.get("guidance_scale") is not None else m
    return x, mo, at, ap


def _run(kind, x, mo, at, ap, kw, **extra):
    f = ddim_step if kind == "ddim" else ddpm_step
    return f(x, mo, at, ap, seed=11, offset=5, return_pred_original=True, **kw, **extra)


def _check_against_reference(backend, device, kind, kw, alph, dtype=torch.float32, B=3, shape=(3, 5, 7), scale=4.0):
    gen = torch.Generator().manual_seed(hash((kind, str(kw), alph)) % 2**31)
    x, mo, at, ap = _inputs(kind, kw, alph, B, shape, dtype, device, gen)
    with genfast.use_backend(backend):
        prev, x0 = _run(kind, x, mo, at, ap, kw)
    with genfast.use_backend("reference"):
        prev_r, x0_r = _run(kind, x, mo, at, ap, kw)
    assert prev.dtype == dtype and prev.shape == x.shape
    assert_close(prev, prev_r, dtype, scale=scale, msg=f"{backend} {kind} {kw} {alph}")
    assert_close(x0, x0_r, dtype, scale=scale, msg=f"{backend} {kind} {kw} {alph} (pred_original)")


def test_backend_matches_reference_ddim(backend_device):
    backend, device = backend_device
    for kind, kw, alph in _ddim_cases(full=backend != "triton" or device == "cuda"):
        _check_against_reference(backend, device, kind, kw, alph)


def test_backend_matches_reference_ddpm(backend_device):
    backend, device = backend_device
    for kind, kw, alph in _ddpm_cases(full=backend != "triton" or device == "cuda"):
        _check_against_reference(backend, device, kind, kw, alph)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backend_half_precision(backend_device, dtype):
    backend, device = backend_device
    cases = [("ddim", dict(eta=0.7, prediction_type="epsilon", thresholding=THRESH, guidance_scale=3.0), "float"),
             ("ddim", dict(eta=0.0, prediction_type="v_prediction", clip_sample_range=1.0), "B"),
             ("ddpm", dict(variance_type="learned_range", prediction_type="sample", guidance_scale=2.0), "0dim"),
             ("ddpm", dict(variance_type="fixed_small", prediction_type="epsilon", clip_sample_range=1.0), "B")]
    for kind, kw, alph in cases:
        gen = torch.Generator().manual_seed(3)
        x, mo, at, ap = _inputs(kind, kw, alph, 2, (4, 8, 9), dtype, device, gen)
        with genfast.use_backend(backend):
            prev, x0 = _run(kind, x, mo, at, ap, kw)
        # float64 truth from the same (rounded) inputs; the fused kernel (fp32 inside) must be at least as
        # close as the reference computing in the low precision would be within tolerances.
        to64 = (lambda t: t.double()) if not isinstance(mo, tuple) else None
        x64 = x.double()
        mo64 = tuple(t.double() for t in mo) if isinstance(mo, tuple) else mo.double()
        with genfast.use_backend("reference"):
            prev64, x064 = _run(kind, x64, mo64, at, ap, kw)
        assert prev.dtype == dtype
        assert_close(prev, prev64, dtype, scale=2.0)
        assert_close(x0, x064, dtype, scale=2.0)
        del to64


@pytest.mark.parametrize("B,shape", [(1, (1, 1, 1)), (3, (3, 7, 11)), (2, (5, 3)), (5, (1, 13, 17))])
def test_backend_odd_sizes(backend_device, B, shape):
    backend, device = backend_device
    for kind, kw, alph in [("ddim", dict(eta=0.5, thresholding=THRESH), "B"),
                           ("ddpm", dict(variance_type="learned_range", guidance_scale=1.5), "B"),
                           ("ddim", dict(eta=1.0, guidance_scale=2.0), "float")]:
        _check_against_reference(backend, device, kind, kw, alph, B=B, shape=shape)


def test_backend_empty_batch(backend_device):
    backend, device = backend_device
    x = torch.empty(0, 3, 4, 4, device=device)
    with genfast.use_backend(backend):
        out = ddim_step(x, torch.empty_like(x), 0.5, 0.7, eta=1.0, seed=1)
        out2, x0 = ddpm_step(x, torch.empty(0, 6, 4, 4, device=device), 0.5, 0.7, variance_type="learned",
                             thresholding=THRESH, seed=1, return_pred_original=True)
    assert out.shape == x.shape and out2.shape == x.shape and x0.shape == x.shape


def test_backend_non_contiguous(backend_device):
    backend, device = backend_device
    base = torch.randn(2, 8, 6, 3, device=device)
    x = base.permute(0, 3, 1, 2)  # [2, 3, 8, 6], non-contiguous
    m = torch.randn(2, 3, 8, 12, device=device)[:, :, :, ::2]  # strided
    z = torch.randn(2, 3, 6, 8, device=device).transpose(2, 3)
    assert not x.is_contiguous() and not m.is_contiguous() and not z.is_contiguous()
    with genfast.use_backend(backend):
        a = ddim_step(x, m, 0.4, 0.7, eta=0.8, noise=z, clip_sample_range=1.0)
    with genfast.use_backend("reference"):
        b = ddim_step(x.contiguous(), m.contiguous(), 0.4, 0.7, eta=0.8, noise=z.contiguous(), clip_sample_range=1.0)
    assert_close(a, b)


def test_backend_stream_noise_equals_randn(backend_device):
    """Noise drawn inside the step is genfast.ops.randn(sample.shape, seed, offset) on every backend."""
    backend, device = backend_device
    for shape in [(2, 3, 5, 7), (3, 4, 8, 8)]:
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(shape, device=device).to(dtype)
            m = torch.randn(shape, device=device).to(dtype)
            with genfast.use_backend(backend):
                z = genfast.ops.randn(shape, seed=1234, offset=9, device=device)
                a = ddim_step(x, m, 0.3, 0.6, eta=1.0, seed=1234, offset=9)
                b = ddim_step(x, m, 0.3, 0.6, eta=1.0, noise=z)
                c = ddpm_step(x, m, 0.3, 0.6, seed=1234, offset=9, add_noise=True)
                d = ddpm_step(x, m, 0.3, 0.6, noise=z, add_noise=True)
                seed_t = torch.tensor([1234], dtype=torch.int64, device=device)
                e = ddim_step(x, m, 0.3, 0.6, eta=1.0, seed=seed_t, offset=9)
            assert_close(a, b, dtype, scale=2.0)
            assert_close(c, d, dtype, scale=2.0)
            assert torch.equal(a, e)


def test_backend_nan_propagates(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 4, device=device)
    m = torch.randn(2, 3, 4, 4, device=device)
    m[0, 1, 2, 3] = float("nan")
    with genfast.use_backend(backend):
        for out in (ddim_step(x, m, 0.4, 0.6, eta=0.5, seed=1, clip_sample_range=1.0),
                    ddpm_step(x, m, 0.4, 0.6, seed=1, clip_sample_range=1.0),
                    ddim_step(x, (m, m), 0.4, 0.6, guidance_scale=2.0)):
            assert torch.isnan(out[0, 1, 2, 3])
            assert torch.isfinite(out[1]).all()
        out = ddim_step(x, m, 0.4, 0.6, thresholding=THRESH)  # thresholding: the NaN sample may go NaN
        assert torch.isnan(out[0, 1, 2, 3]) and torch.isfinite(out[1]).all()


# ---------------------------------------------------------------------------------------------
# Bad input names the argument.
# ---------------------------------------------------------------------------------------------
def test_bad_input():
    x = torch.randn(2, 3, 4, 4)
    m = torch.randn(2, 3, 4, 4)
    cases = [
        (lambda: ddim_step(x, torch.randn(2, 3, 4, 5), 0.5, 0.6), ValueError, "model_output"),
        (lambda: ddim_step(x, m.long(), 0.5, 0.6), TypeError, "model_output"),  # (float64 promotes, as diffusers)
        (lambda: ddim_step(x, torch.randn(3, 3, 4, 4), 0.5, 0.6), ValueError, "model_output"),  # not broadcastable
        (lambda: ddim_step(x, m.to("meta"), 0.5, 0.6), ValueError, "model_output"),
        (lambda: ddim_step(x, m, 0.5, 0.6, guidance_scale=2.0), ValueError, "guidance_scale"),
        (lambda: ddim_step(x, (m, m), 0.5, 0.6), ValueError, "guidance_scale"),
        (lambda: ddim_step(x, (m, m, m), 0.5, 0.6, guidance_scale=1.0), ValueError, "model_output"),
        (lambda: ddim_step(x, m, 0.5, 0.6, prediction_type="eps"), ValueError, "prediction_type"),
        (lambda: ddpm_step(x, m, 0.5, 0.6, variance_type="small"), ValueError, "variance_type"),
        (lambda: ddpm_step(x, m, 0.5, 0.6, variance_type="learned"), ValueError, "model_output"),
        (lambda: ddim_step(x, m, 0.0, 0.6), ValueError, "alpha_prod_t"),
        (lambda: ddim_step(x, m, 0.5, 1.5), ValueError, "alpha_prod_t_prev"),
        (lambda: ddim_step(x, m, torch.rand(3), 0.6), ValueError, "alpha_prod_t"),
        (lambda: ddim_step(x, m, 0.5, torch.rand(2, 1)), ValueError, "alpha_prod_t_prev"),
        (lambda: ddim_step(x, m, "0.5", 0.6), TypeError, "alpha_prod_t"),
        (lambda: ddim_step(x, m, 0.5, 0.6, eta=float("nan")), ValueError, "eta"),
        (lambda: ddim_step(x, m, 0.5, 0.6, eta=1.0, noise=torch.randn(2, 3, 4)), ValueError, "noise"),
        (lambda: ddim_step(x, m, 0.5, 0.6, thresholding=0.9), TypeError, "thresholding"),
        (lambda: ddim_step(x, m, 0.5, 0.6, thresholding=(1.5, 2.0)), ValueError, "thresholding"),
        (lambda: ddim_step(x, m, 0.5, 0.6, clip_sample_range=float("inf")), ValueError, "clip_sample_range"),
        (lambda: ddim_step(x.long(), m, 0.5, 0.6), TypeError, "sample"),
        (lambda: ddim_step(x, m, 0.5, 0.6, eta=1.0, seed=-3), ValueError, "seed"),
        (lambda: ddpm_step(x, m, 0.5, 0.6, add_noise="yes"), TypeError, "add_noise"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


# ---------------------------------------------------------------------------------------------
# Custom-op registration, float64 routing, compiled-extension checks, Triton AOT for sm_90.
# ---------------------------------------------------------------------------------------------
def test_opcheck(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 4, device=device)
    m = torch.randn(2, 3, 4, 4, device=device)
    at = torch.tensor([0.3, 0.5], device=device)
    args_list = [
        (0, x, m, None, 1.0, 0.4, 0.6, None, None, 0.5, 0, 1.0, None, 1.0, False, 0, 1, 2, None, 7, 0, None, None, True, backend),
        (1, x, torch.randn(2, 6, 4, 4, device=device), None, 1.0, 0.4, 0.6, at, None, 0.0, 2, None, 0.9, 2.0, False, 5, 2, 2,
         None, 7, 3, None, None, False, backend),
        (0, x, m, m * 2, 3.0, 0.2, 0.6, None, at, 1.0, 1, None, None, 1.0, True, 0, 1, 1, torch.randn_like(x), 0, 0, None,
         None, True, backend),
    ]
    for args in args_list:
        torch.library.opcheck(diffusion_step_op, args)


def test_torch_compile_traces_the_op():
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)

    def f(x, m):
        return ddim_step(x, m, 0.4, 0.6, eta=0.5, seed=3)

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, m), f(x, m))


def test_float64_runs_on_reference():
    x, m = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = ddim_step(x, m, 0.4, 0.6, eta=0.5, seed=3)
    with genfast.use_backend("reference"):
        ref = ddim_step(x, m, 0.4, 0.6, eta=0.5, seed=3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref)


def test_extension_rejects_bad_arguments():
    from genfast import _ext

    if _ext._C is None or not hasattr(_ext._C, "diffusion_step_cpu"):
        pytest.skip("genfast._C is not built")
    with pytest.raises(ValueError, match="expected 36"):
        _ext._C.diffusion_step_cpu(1, 2, 3)
    args = [0, 0, 16, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, 0, False, 0.5, 0.6, 0.0, 0, 0, False, 1.0, False, 0.0, 0, 0,
            0.0, 1.0, False, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="null data pointer"):
        _ext._C.diffusion_step_cpu(*args)
    x = torch.randn(16)
    args[4] = args[6] = args[7] = x.data_ptr()
    args[10] = 3  # float64 is not a compiled dtype
    with pytest.raises(ValueError, match="float64"):
        _ext._C.diffusion_step_cpu(*args)


# The Triton kernels' AOT compile (real launcher specializations, sm_90 and sm_80, 16-byte accesses,
# registers, spills) is tests/test_triton_codegen.py.


