"""genfast.ops' sampler steps (euler_step, euler_ancestral_step, dpm_solver_step, sampler_step): the
coefficients against the textbook formulas, every backend against the float64 reference (fp32/fp16/bf16,
odd sizes, empty and non-contiguous inputs), genfast's stream, NaN, bad input, opcheck, torch.compile and
the Triton kernel's sm_90 compilation."""
import math

import pytest
import torch

import genfast
from genfast.ops import dpm_solver_step, euler_ancestral_step, euler_step, sampler_step
from genfast.ops import sampler_steps as ss
from tolerances import assert_close

THRESH = (0.9, 1.5)


# ---------------------------------------------------------------------------------------------
# The coefficients against the formulas written out (Karras et al. 2022; Lu et al. 2022).
# ---------------------------------------------------------------------------------------------
def _alpha_sigma(s):
    a = 1 / math.sqrt(s * s + 1)
    return a, s * a


def _lam(s):
    a, sg = _alpha_sigma(s)
    return math.log(a) - math.log(sg)


def test_euler_is_the_textbook_step():
    torch.manual_seed(0)
    x, m = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    s, s_next = 2.5, 1.2
    with genfast.use_backend("reference"):
        prev, x0 = euler_step(x, m, s, s_next, return_pred_original=True)
    d = (x - (x - s * m)) / s  # derivative of the probability-flow ODE with x0 = x - sigma * eps
    torch.testing.assert_close(prev, x + d * (s_next - s))
    torch.testing.assert_close(x0, x - s * m)
    # ancestral: deterministic step to sigma_down, then noise of std sigma_up
    z = torch.randn_like(x)
    up = math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2)
    down = math.sqrt(s_next ** 2 - up ** 2)
    with genfast.use_backend("reference"):
        prev = euler_ancestral_step(x, m, s, s_next, noise=z)
    torch.testing.assert_close(prev, x + m * (down - s) + up * z)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpm_solver_pp_2m_is_the_textbook_step(solver_type):
    torch.manual_seed(1)
    x, m0, m1 = (torch.randn(2, 3, 4, 5, dtype=torch.float64) for _ in range(3))
    s_t, s0, s1 = 0.8, 1.5, 2.7
    (a_t, sg_t), (_, sg0) = _alpha_sigma(s_t), _alpha_sigma(s0)
    h, h0 = _lam(s_t) - _lam(s0), _lam(s0) - _lam(s1)
    D1 = (m0 - m1) / (h0 / h)
    if solver_type == "midpoint":
        expect = sg_t / sg0 * x - a_t * (math.exp(-h) - 1) * m0 - 0.5 * a_t * (math.exp(-h) - 1) * D1
    else:
        expect = sg_t / sg0 * x - a_t * (math.exp(-h) - 1) * m0 + a_t * ((math.exp(-h) - 1) / h + 1) * D1
    with genfast.use_backend("reference"):
        # prediction_type="sample": the model output is x0 itself, so converted == m0
        prev, conv = dpm_solver_step(x, m0, (s_t, s0, s1), [m1], solver_type=solver_type, prediction_type="sample")
    torch.testing.assert_close(conv, m0)
    torch.testing.assert_close(prev, expect)


def test_dpm_solver_third_order_and_sde_are_the_textbook_steps():
    torch.manual_seed(2)
    x, m0, m1, m2, z = (torch.randn(2, 3, 4, 5, dtype=torch.float64) for _ in range(5))
    sig = (0.6, 1.1, 1.9, 3.2)
    a_t, sg_t = _alpha_sigma(sig[0])
    _, sg0 = _alpha_sigma(sig[1])
    lam = [_lam(s) for s in sig]
    h, h0, h1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
    r0, r1 = h0 / h, h1 / h
    d10, d11 = (m0 - m1) / r0, (m1 - m2) / r1
    D1 = d10 + r0 / (r0 + r1) * (d10 - d11)
    D2 = (d10 - d11) / (r0 + r1)
    e = math.exp(-h) - 1
    expect = sg_t / sg0 * x - a_t * e * m0 + a_t * (e / h + 1) * D1 - a_t * ((e + h) / h ** 2 - 0.5) * D2
    with genfast.use_backend("reference"):
        prev, _ = dpm_solver_step(x, m0, sig, [m1, m2], prediction_type="sample")
    torch.testing.assert_close(prev, expect)
    # SDE-DPM-Solver++ first order: exp(-h) decay of x, noise sigma_t sqrt(1 - exp(-2h))
    h = lam[0] - lam[1]
    expect = sg_t / sg0 * math.exp(-h) * x + a_t * (1 - math.exp(-2 * h)) * m0 + sg_t * math.sqrt(1 - math.exp(-2 * h)) * z
    with genfast.use_backend("reference"):
        prev, _ = dpm_solver_step(x, m0, sig[:2], algorithm_type="sde-dpmsolver++", prediction_type="sample", noise=z)
    torch.testing.assert_close(prev, expect)


def test_final_step_to_sigma_zero_returns_x0():
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for algorithm in ("dpmsolver++", "sde-dpmsolver++"):
        prev, x0 = dpm_solver_step(x, m, (0.0, 0.9), algorithm_type=algorithm, seed=1)
        assert_close(prev, x0)
    prev, x0 = euler_step(x, m, 0.9, 0.0, return_pred_original=True)
    assert_close(prev, x0)


# ---------------------------------------------------------------------------------------------
# Every backend against the float64 reference.
# ---------------------------------------------------------------------------------------------
def _cases():
    cases = [
        dict(co=ss.euler_coefficients(3.0, 2.1)),
        dict(co=ss.euler_coefficients(3.0, 2.1, "v_prediction", gamma=0.2, s_noise=1.003), noise="stream"),
        dict(co=ss.euler_coefficients(3.0, 2.1, gamma=0.3), noise="tensor", thresh=(0.8, 1.7)),
        dict(co=ss.euler_coefficients(1.5, 0.0, "sample"), guidance=2.5, aux=torch.float32),
        dict(co=ss.euler_ancestral_coefficients(2.0, 1.4), noise="stream", aux=torch.float32),
        dict(co=ss.euler_ancestral_coefficients(2.0, 1.4, "v_prediction"), noise="tensor", guidance=4.0),
    ]
    for order in (1, 2, 3):
        sig = (0.7, 1.3, 2.2, 3.5)[:order + 1]
        cases += [
            dict(co=ss.dpm_solver_coefficients(sig)),
            dict(co=ss.dpm_solver_coefficients(sig, "dpmsolver++", "heun", "v_prediction"), thresh=THRESH),
            dict(co=ss.dpm_solver_coefficients(sig, "sde-dpmsolver++", "midpoint", "epsilon"), noise="stream",
                 learned=True, guidance=3.0),
            dict(co=ss.dpm_solver_coefficients(sig, "dpmsolver", "heun", "sample"), thresh=THRESH),
        ]
    cases.append(dict(co=ss.dpm_solver_coefficients((0.5, 1.0, 1.4), "sde-dpmsolver", "heun"), noise="tensor"))
    cases.append(dict(co=ss.dpm_solver_coefficients((0.5, 1.0), flow_sigmas=True, prediction_type="flow_prediction"),
                      thresh=(0.5, 0.8)))  # sample_max_value < 1: torch.clamp's max wins
    return cases


CASES = _cases()


def _inputs(case, B, shape, dtype, device, gen):
    C = shape[0]
    mshape = (B, 2 * C if case.get("learned") else C) + tuple(shape[1:])

    def rnd(s, scale=1.0):
        return (torch.randn(s, generator=gen) * scale).to(dtype).to(device)

    x = rnd((B,) + tuple(shape), 2.0)
    m = rnd(mshape)
    mo = (m, rnd(mshape)) if case.get("guidance") is not None else m
    hist = [rnd(x.shape) for _ in range(case["co"].history)]
    noise = rnd(x.shape) if case.get("noise") == "tensor" else None
    return x, mo, hist, noise


def _step(case, x, mo, hist, noise):
    return sampler_step(x, mo, case["co"], history=hist, thresholding=case.get("thresh"),
                        guidance_scale=case.get("guidance"), noise=noise, seed=77, offset=3, aux_dtype=case.get("aux"))


def _to64(t):
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(v.double() for v in t)
    if isinstance(t, list):
        return [v.double() for v in t]
    return t.double()


def _check(backend, device, case, dtype, B, shape, scale):
    gen = torch.Generator().manual_seed(hash(str(case)) % 2 ** 31)
    x, mo, hist, noise = _inputs(case, B, shape, dtype, device, gen)
    with genfast.use_backend(backend):
        prev, conv = _step(case, x, mo, hist, noise)
    with genfast.use_backend("reference"):
        prev64, conv64 = _step(case, _to64(x), _to64(mo), _to64(hist), noise)
    assert prev.dtype == dtype and prev.shape == x.shape and prev.device == x.device
    assert conv.dtype == (case.get("aux") or dtype)
    assert_close(prev, prev64, dtype, scale=scale, msg=f"{backend} {case} prev")
    assert_close(conv, conv64, conv.dtype if conv.dtype != torch.float32 else dtype, scale=scale,
                 msg=f"{backend} {case} converted output")


def _subset(backend, device, cases):
    return cases if backend != "triton" or device == "cuda" else cases[::3]  # the interpreter is slow


def test_backend_matches_reference(backend_device):
    backend, device = backend_device
    for case in _subset(backend, device, CASES):
        _check(backend, device, case, torch.float32, 3, (3, 5, 7), 4.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backend_half_precision(backend_device, dtype):
    """fp16/bf16 data, fp32 arithmetic inside: within the dtype's tolerance of float64 on the same inputs."""
    backend, device = backend_device
    for case in _subset(backend, device, CASES[::2]):
        _check(backend, device, case, dtype, 2, (4, 8, 9), 2.0)


@pytest.mark.parametrize("B,shape", [(1, (1, 1, 1)), (3, (3, 7, 11)), (2, (5, 3)), (5, (1, 13, 17))])
def test_backend_odd_sizes(backend_device, B, shape):
    backend, device = backend_device
    picks = [CASES[1], CASES[9], CASES[-3]]  # churn noise; thresholding + history; learned + guidance + noise
    for case in _subset(backend, device, picks) if backend != "triton" else picks[1:2]:
        _check(backend, device, case, torch.float32, B, shape, 4.0)


def test_backend_empty_batch(backend_device):
    backend, device = backend_device
    x = torch.empty(0, 3, 4, 4, device=device)
    co = ss.dpm_solver_coefficients((0.5, 1.0, 2.0), "sde-dpmsolver++")
    with genfast.use_backend(backend):
        prev, conv = sampler_step(x, torch.empty(0, 6, 4, 4, device=device), co, history=[x], thresholding=THRESH,
                                  seed=1)
    assert prev.shape == x.shape and conv.shape == x.shape


def test_backend_non_contiguous(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 8, 6, 3, device=device).permute(0, 3, 1, 2)
    m = torch.randn(2, 3, 8, 12, device=device)[:, :, :, ::2]
    h = torch.randn(2, 3, 6, 8, device=device).transpose(2, 3)
    assert not (x.is_contiguous() or m.is_contiguous() or h.is_contiguous())
    co = ss.dpm_solver_coefficients((0.5, 1.0, 2.0))
    with genfast.use_backend(backend):
        a = sampler_step(x, m, co, history=[h])
    with genfast.use_backend("reference"):
        b = sampler_step(x.contiguous(), m.contiguous(), co, history=[h.contiguous()])
    assert_close(a[0], b[0])
    assert_close(a[1], b[1])


def test_backend_stream_noise_equals_randn(backend_device):
    """The noise drawn inside the step is genfast.ops.randn(sample.shape, seed, offset) on every backend,
    also from an int64 seed tensor (CUDA-graph replay)."""
    backend, device = backend_device
    shape = (2, 3, 5, 7)
    for dtype in (torch.float32, torch.float16):
        x, m = torch.randn(shape, device=device).to(dtype), torch.randn(shape, device=device).to(dtype)
        with genfast.use_backend(backend):
            z = genfast.ops.randn(shape, seed=1234, offset=9, device=device)
            a = euler_ancestral_step(x, m, 2.0, 1.0, seed=1234, offset=9)
            b = euler_ancestral_step(x, m, 2.0, 1.0, noise=z)
            c = euler_step(x, m, 2.0, 1.0, gamma=0.3, seed=1234, offset=9)
            d = euler_step(x, m, 2.0, 1.0, gamma=0.3, noise=z)
            e = euler_ancestral_step(x, m, 2.0, 1.0, seed=torch.tensor([1234], device=device), offset=9)
        assert_close(a, b, dtype, scale=2.0)
        assert_close(c, d, dtype, scale=2.0)
        assert torch.equal(a, e)
        assert not torch.allclose(a.float(), euler_ancestral_step(x, m, 2.0, 1.0, seed=1234, offset=10).float())


def test_backend_nan_propagates(backend_device):
    backend, device = backend_device
    x, m, h = (torch.randn(2, 3, 4, 4, device=device) for _ in range(3))
    m[0, 1, 2, 3] = float("nan")
    with genfast.use_backend(backend):
        for prev, conv in (sampler_step(x, m, ss.dpm_solver_coefficients((0.5, 1.0, 2.0)), history=[h]),
                           sampler_step(x, (m, m), ss.euler_coefficients(2.0, 1.0), guidance_scale=2.0)):
            assert torch.isnan(prev[0, 1, 2, 3]) and torch.isnan(conv[0, 1, 2, 3])
            assert torch.isfinite(prev[1]).all()


def test_float64_runs_on_reference():
    x, m = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = euler_ancestral_step(x, m, 2.0, 1.0, seed=3)
    with genfast.use_backend("reference"):
        ref = euler_ancestral_step(x, m, 2.0, 1.0, seed=3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref)
    with genfast.use_backend("cpu"), pytest.raises(TypeError, match="float64"):
        euler_step(x, m, 2.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Bad input names the argument.
# ---------------------------------------------------------------------------------------------
def test_bad_input():
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    co2 = ss.dpm_solver_coefficients((0.5, 1.0, 2.0))
    cases = [
        (lambda: euler_step(x, torch.randn(2, 3, 4, 5), 1.0, 0.5), ValueError, "model_output"),
        (lambda: euler_step(x, m.double(), 1.0, 0.5), TypeError, "model_output"),
        (lambda: euler_step(x, m, 1.0, 0.5, guidance_scale=2.0), ValueError, "guidance_scale"),
        (lambda: euler_step(x, (m, m), 1.0, 0.5), ValueError, "guidance_scale"),
        (lambda: euler_step(x, m, "1.0", 0.5), TypeError, "sigma"),
        (lambda: euler_step(x, m, 1.0, float("nan")), ValueError, "sigma_next"),
        (lambda: euler_step(x, m, 1.0, 0.5, prediction_type="eps"), ValueError, "prediction_type"),
        (lambda: euler_ancestral_step(x, m, 1.0, 0.5, noise=torch.randn(2, 3, 4)), ValueError, "noise"),
        (lambda: euler_ancestral_step(x, m, 1.0, 0.5, seed=-3), ValueError, "seed"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0, 2.0)), ValueError, "history"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0, 2.0), [m.half()]), TypeError, "history"),
        (lambda: dpm_solver_step(x, m, (0.5,)), ValueError, "sigmas"),
        (lambda: dpm_solver_step(x, m, 0.5), TypeError, "sigmas"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0), algorithm_type="ddim"), ValueError, "algorithm_type"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0), solver_type="rk4"), ValueError, "solver_type"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0), thresholding=0.9), TypeError, "thresholding"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0), thresholding=(1.5, 2.0)), ValueError, "thresholding"),
        (lambda: dpm_solver_step(x, m, (0.5, 1.0), prediction_type="flow_prediction",
                                 algorithm_type="dpmsolver"), ValueError, "prediction_type"),
        (lambda: sampler_step(x, m, (1.0, 0.0)), TypeError, "coefficients"),
        (lambda: sampler_step(x, m, co2._replace(history=4)), ValueError, "coefficients.history"),
        (lambda: sampler_step(x, m, co2, history=[m], aux_dtype=torch.float16), TypeError, "aux_dtype"),
        (lambda: sampler_step(x.long(), m, co2, history=[m]), TypeError, "sample"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


# ---------------------------------------------------------------------------------------------
# Custom op, torch.compile, the compiled extension's own checks, Triton AOT for sm_90.
# ---------------------------------------------------------------------------------------------
def _op_args(backend, device):
    x, m, h = (torch.randn(2, 3, 4, 4, device=device) for _ in range(3))
    co = ss.dpm_solver_coefficients((0.5, 1.0, 2.0, 3.0), "sde-dpmsolver++")
    base = dict(sample=x, model_output=m, cond_output=None, guidance_scale=1.0, history1=h, history2=h * 2,
                **co._asdict(), threshold_ratio=None, threshold_max=1.0, aux_dtype=torch.float32, want_aux=True,
                noise_src=ss.NOISE_STREAM, noise=None, seed=7, offset=1, seed_tensor=None, offset_tensor=None,
                backend=backend)
    return [
        ss.SamplerStepArgs(**base),
        ss.SamplerStepArgs(**{**base, "model_output": torch.randn(2, 6, 4, 4, device=device), "threshold_ratio": 0.9,
                              "threshold_max": 2.0, "noise_src": ss.NOISE_TENSOR, "noise": torch.randn_like(x),
                              "aux_dtype": torch.float32, "want_aux": False}),
        ss.SamplerStepArgs(**{**base, "cond_output": m * 2, "guidance_scale": 3.0, "history": 1,
                              "seed_tensor": torch.tensor(5, device=device)}),
    ]


def test_opcheck(backend_device):
    backend, device = backend_device
    for args in _op_args(backend, device):
        torch.library.opcheck(ss.sampler_step_op, tuple(args))


def test_torch_compile_fullgraph():
    x, m, h = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)

    def f(x, m, h):
        prev, conv = dpm_solver_step(x, m, (0.5, 1.0, 2.0), [h], algorithm_type="sde-dpmsolver++", seed=3)
        return euler_ancestral_step(prev, conv, 1.0, 0.5, seed=4), conv

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    for a, b in zip(compiled(x, m, h), f(x, m, h)):
        torch.testing.assert_close(a, b)


def test_extension_rejects_bad_arguments():
    from genfast import _ext

    if _ext._C is None or not hasattr(_ext._C, "sampler_step_cpu"):
        pytest.skip("genfast._C is not built")
    with pytest.raises(ValueError, match="expected 39"):
        _ext._C.sampler_step_cpu(1, 2, 3)
    x, m = torch.randn(2, 8), torch.randn(2, 8)
    args = ss.SamplerStepArgs(x, m, None, 1.0, None, None, *ss.euler_coefficients(2.0, 1.0)[:12], 0, None, 1.0,
                              torch.float32, True, 0, None, 0, 0, None, None, "cpu")
    out = torch.empty_like(x)
    flat = list(ss._ext_args(args, out, out, None, 0.0, False))
    flat[6] = 0  # sample pointer
    with pytest.raises(ValueError, match="null data pointer"):
        _ext._C.sampler_step_cpu(*flat)
    flat = list(ss._ext_args(args, out, out, None, 0.0, False))
    flat[12] = 3  # float64 is not a compiled dtype
    with pytest.raises(ValueError, match="float64"):
        _ext._C.sampler_step_cpu(*flat)
    flat = list(ss._ext_args(args, out, out, None, 0.0, False))
    flat[15] = 2  # two history tensors announced, none given
    with pytest.raises(ValueError, match="history"):
        _ext._C.sampler_step_cpu(*flat)
