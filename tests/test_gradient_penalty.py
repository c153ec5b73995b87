"""genfast.ops.gradient_penalty: every backend against the plain-autograd penalty."""
import pytest
import torch
from torch import nn

import genfast
from genfast.ops.gradient_penalty import (
    gradient_norm_penalty,
    gradient_penalty,
    interpolate,
    interpolate_op,
    norm_penalty_backward_op,
    norm_penalty_op,
    reference_gradient_penalty,
)

MODES = ["two-sided", "one-sided", "r1"]
# Penalty / parameter-gradient tolerances (rtol, atol) per dtype. fp16/bf16: the critic itself runs in
# that dtype (the plain penalty too), so the bound is the dtype's, a few ulps over a double backward.
PEN_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-2, 2e-2), torch.bfloat16: (8e-2, 8e-2)}


def mlp_critic(in_features, dtype, device):
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.Tanh(), nn.Linear(16, 1)).to(device, dtype)


def conv_critic(dtype, device):
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Softplus(), nn.Flatten(), nn.Linear(4 * 3 * 3, 1),
    ).to(device, dtype)


def param_grads(critic):
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in critic.parameters()]


def run_penalty(fn, critic, real, fake, mode, **kw):
    critic.zero_grad(set_to_none=True)
    p = fn(critic, real, fake, mode=mode, seed=77, offset=3, **kw)
    p.backward()
    return p.detach(), param_grads(critic)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_penalty_and_param_grads_fp32(backend_device, kind, mode):
    name, device = backend_device
    b = 5
    real = torch.randn(b, 3, 9, 9, device=device)
    fake = torch.randn(b, 3, 9, 9, device=device)
    critic = mlp_critic(3 * 81, torch.float32, device) if kind == "mlp" else conv_critic(torch.float32, device)
    p, g = run_penalty(gradient_penalty, critic, real, fake, mode)
    with genfast.use_backend("reference"):
        p_ref, g_ref = run_penalty(reference_gradient_penalty, critic, real, fake, mode)
    rtol, atol = PEN_TOL[torch.float32]
    torch.testing.assert_close(p, p_ref, rtol=rtol, atol=atol)
    for a, e in zip(g, g_ref):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_penalty_low_precision(backend_device, dtype, mode):
    name, device = backend_device
    b = 4
    real = torch.randn(b, 2, 5, 5, device=device, dtype=dtype)
    fake = torch.randn(b, 2, 5, 5, device=device, dtype=dtype)
    critic = mlp_critic(50, dtype, device)
    p, g = run_penalty(gradient_penalty, critic, real, fake, mode)
    # The oracle: the plain penalty on an fp32 copy of the critic and data.
    critic32 = mlp_critic(50, torch.float32, device)
    p_ref, g_ref = run_penalty(reference_gradient_penalty, critic32, real.float(), fake.float(), mode)
    rtol, atol = PEN_TOL[dtype]
    assert p.dtype == dtype
    torch.testing.assert_close(p.float(), p_ref, rtol=rtol, atol=atol * max(1.0, float(p_ref.abs())))
    for a, e in zip(g, g_ref):
        torch.testing.assert_close(a.float(), e, rtol=rtol, atol=atol * max(1.0, float(e.abs().max())))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3, 1), (7, 37), (2, 3, 17, 19), (1, 5000), (4, 0)])
def test_norm_penalty_vs_reference(backend_device, mode, shape):
    name, device = backend_device
    g = torch.randn(shape, device=device)
    if shape[0] > 1:
        g[1] = 0.0  # an exactly-zero row
    g1 = g.clone().requires_grad_(True)
    p = gradient_norm_penalty(g1, weight=3.0, center=0.7, mode=mode)
    p.backward()
    g2 = g.clone().double().requires_grad_(True)
    n = g2.reshape(shape[0], -1).norm(dim=1)
    if mode == "r1":
        q = 1.5 * (n * n).mean()
    else:
        d = n - 0.7
        q = 3.0 * ((torch.relu(d) if mode == "one-sided" else d) ** 2).mean()
    q.backward()
    torch.testing.assert_close(p.double(), q.detach(), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(g1.grad).all()
    torch.testing.assert_close(g1.grad.double(), g2.grad, rtol=1e-5, atol=1e-6)


def test_zero_gradient_rows_finite(backend_device):
    name, device = backend_device

    def critic(x):  # samples 0 and 2 do not depend on x: their gradient rows are exactly zero
        mask = torch.tensor([0.0, 1.0, 0.0, 1.0], device=x.device).view(-1, 1)
        return (x.flatten(1) * mask).sum(1) * 2.0 + 1.0

    real = torch.randn(4, 6, device=device)
    fake = torch.randn(4, 6, device=device)
    w = torch.ones((), device=device, requires_grad=True)
    for mode in MODES:
        p = gradient_penalty(lambda x: critic(x) * w, real, fake, mode=mode, seed=1)
        (gw,) = torch.autograd.grad(p, w)
        assert torch.isfinite(p) and torch.isfinite(gw)
    g = torch.zeros(3, 8, device=device, requires_grad=True)
    p = gradient_norm_penalty(g)
    p.backward()
    assert float(p.detach()) == pytest.approx(10.0)
    assert torch.equal(g.grad, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 5), (9, 3, 7, 7), (4, 4096), (0, 3)])
def test_interpolate_alpha_from_stream(backend_device, dtype, shape):
    name, device = backend_device
    real = torch.randn(shape, device=device).to(dtype)
    fake = torch.randn(shape, device=device).to(dtype)
    x = interpolate(real, fake, seed=2**63 + 11, offset=5)
    alpha = genfast.ops.rand([shape[0]], seed=2**63 + 11, offset=5, device=device)
    assert torch.equal(alpha, genfast.ops.rand([shape[0]], seed=2**63 + 11, offset=5, device=device))
    a = alpha.view((-1,) + (1,) * (len(shape) - 1))
    expected = (a * real.float() + (1 - a) * fake.float()).to(dtype)
    # one rounding of the output dtype apart at most (Triton's interpreter rounds bf16 differently)
    ulp = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(x, expected, rtol=ulp, atol=1e-6)
    # alpha given as a tensor, non-contiguous inputs
    if shape[0] and len(shape) == 2:
        rt = torch.randn(shape[1], shape[0], device=device).to(dtype).t()
        x2 = interpolate(rt, fake, alpha=alpha)
        torch.testing.assert_close(x2, (a * rt.float() + (1 - a) * fake.float()).to(dtype), rtol=ulp, atol=1e-6)


def test_alpha_identical_across_backends():
    real = torch.randn(37, 5)
    fake = torch.randn(37, 5)
    outs = {}
    for name in ("reference", "cpu", "triton"):
        info = genfast.backends()[name]
        if not info.available or not ({"cpu", "any"} & set(info.devices)):
            continue
        with genfast.use_backend(name):
            outs[name] = interpolate(real, fake, seed=99, offset=1)
    base = outs.pop("reference")
    for name, x in outs.items():
        torch.testing.assert_close(x, base, rtol=0, atol=1e-6, msg=name)


def test_interpolate_grad_and_gradgradcheck():
    real = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda r, f, a: interpolate(r, f, alpha=a), (real, fake, alpha))
    torch.autograd.gradgradcheck(lambda r, f, a: interpolate(r, f, alpha=a), (real, fake, alpha))
    torch.autograd.gradcheck(lambda r, f: interpolate(r, f, seed=5), (real, fake))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64_penalty_through_double_backward(mode):
    # The penalty as a function of the critic's weights and the data, in float64 on the reference path:
    # gradcheck compares the analytic gradient (the custom backward + the critic's double backward) with
    # finite differences.
    torch.manual_seed(0)
    w1 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    real = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(3, 4, dtype=torch.float64)

    def pen(w1, w2, real, fn=gradient_penalty):
        critic = lambda x: (torch.tanh(x @ w1.t()) @ w2.t()).squeeze(1)  # noqa: E731
        return fn(critic, real, fake, mode=mode, seed=3, weight=2.0, center=0.5)

    torch.autograd.gradcheck(pen, (w1, w2, real))
    # The plain-autograd reference is twice differentiable: gradgradcheck it.
    torch.autograd.gradgradcheck(lambda a, b, c: pen(a, b, c, reference_gradient_penalty), (w1, w2, real))


def test_third_derivative_raises():
    w = torch.randn(1, 4, requires_grad=True)
    real, fake = torch.randn(3, 4), torch.randn(3, 4)
    p = gradient_penalty(lambda x: torch.tanh(x @ w.t()), real, fake, seed=1)
    (gw,) = torch.autograd.grad(p, w, create_graph=True)
    with pytest.raises(RuntimeError, match="once-differentiable"):
        torch.autograd.grad(gw.sum(), w)


def test_float64_forced_compiled_backend_raises():
    if not genfast.backends()["cpu"].available:
        pytest.skip(genfast.backends()["cpu"].reason)
    with genfast.use_backend("cpu"), pytest.raises(TypeError, match="grad"):
        gradient_norm_penalty(torch.randn(2, 3, dtype=torch.float64))


def test_bad_input_names_the_argument():
    critic = lambda x: x.flatten(1).sum(1)  # noqa: E731
    real = torch.randn(4, 3)
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty(critic, real, torch.randn(4, 2))
    with pytest.raises(TypeError, match="fake"):
        gradient_penalty(critic, real, torch.randn(4, 3, dtype=torch.float64))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="fake"):
            gradient_penalty(critic, real, torch.randn(4, 3, device="cuda"))
    else:
        with pytest.raises(ValueError, match="fake"):
            gradient_penalty(critic, real, torch.randn(4, 3, device="meta"))
    with pytest.raises(ValueError, match="critic"):
        gradient_penalty(lambda x: x.sum(), real, torch.randn(4, 3))
    with pytest.raises(ValueError, match="critic"):
        gradient_penalty(lambda x: x, real, torch.randn(4, 3))
    with pytest.raises(ValueError, match="critic"):
        gradient_penalty(lambda x: torch.zeros(4), real, torch.randn(4, 3))
    with pytest.raises(TypeError, match="critic"):
        gradient_penalty(None, real, torch.randn(4, 3))
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty(critic, real)
    with pytest.raises(ValueError, match="mode"):
        gradient_penalty(critic, real, torch.randn(4, 3), mode="both")
    with pytest.raises(ValueError, match="alpha"):
        gradient_penalty(critic, real, torch.randn(4, 3), alpha=torch.rand(3))
    with pytest.raises(TypeError, match="real"):
        gradient_penalty(critic, torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="weight"):
        gradient_norm_penalty(torch.randn(2, 2), weight="10")
    with pytest.raises(ValueError, match="seed"):
        interpolate(real, real, seed=-1)


def test_r1_and_critic_kwargs(backend_device):
    name, device = backend_device
    torch.manual_seed(3)
    emb = nn.Embedding(3, 6).to(device)
    lin = nn.Linear(6, 1).to(device)

    def critic(x, y):
        return (lin(torch.tanh(x)) + (emb(y) * x).sum(1, keepdim=True))

    real = torch.randn(5, 6, device=device)
    y = torch.tensor([0, 1, 2, 1, 0], device=device)
    p = gradient_penalty(critic, real, mode="r1", weight=4.0, y=y)
    with genfast.use_backend("reference"):
        q = reference_gradient_penalty(critic, real, mode="r1", weight=4.0, y=y)
    torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-5)


def test_opcheck():
    g = torch.randn(3, 10, requires_grad=True)
    for backend in ("reference", "cpu", "triton"):
        info = genfast.backends()[backend]
        if not info.available or (backend != "reference" and "cpu" not in info.devices):
            continue
        torch.library.opcheck(norm_penalty_op, (g, 10.0, 1.0, 0, backend))
        torch.library.opcheck(norm_penalty_op, (g, 10.0, 1.0, 2, backend))
        norms = g.detach().norm(dim=1)
        torch.library.opcheck(norm_penalty_backward_op, (torch.tensor(1.0), g.detach(), norms, 10.0, 1.0, 1, backend))
        r = torch.randn(3, 4, 2, requires_grad=True)
        f = torch.randn(3, 4, 2, requires_grad=True)
        torch.library.opcheck(interpolate_op, (r, f, None, 5, 0, None, None, backend))
        torch.library.opcheck(interpolate_op, (r, f, torch.rand(3), 5, 0, None, None, backend))


# The Triton kernels' AOT compile (real launcher specializations, sm_90 and sm_80, 16-byte accesses,
# registers, spills) is tests/test_triton_codegen.py.


def test_noncontiguous_grad_seed_tensor_and_empty_batch(backend_device):
    name, device = backend_device
    base = torch.randn(9, 6, device=device)
    g = base.t()  # [6, 9], non-contiguous
    g1 = g.clone().requires_grad_(True)
    g2 = g.detach().requires_grad_(True)  # non-contiguous leaf
    p2 = gradient_norm_penalty(g2, mode="one-sided", center=2.0)
    p1 = gradient_norm_penalty(g1, mode="one-sided", center=2.0)
    torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-6)
    p1.backward()
    p2.backward()
    torch.testing.assert_close(g1.grad, g2.grad, rtol=1e-6, atol=1e-7)
    # a seed given as a device tensor (what a captured CUDA graph reads) draws the same alphas as the int
    real, fake = torch.randn(5, 7, device=device), torch.randn(5, 7, device=device)
    seed_t = torch.tensor([1234], dtype=torch.int64, device=device)
    offset_t = torch.tensor([2], dtype=torch.int64, device=device)
    torch.testing.assert_close(interpolate(real, fake, seed=seed_t, offset=offset_t),
                               interpolate(real, fake, seed=1234, offset=2), rtol=0, atol=0)
    # no samples: the mean over nothing is NaN (as torch.mean), and nothing crashes
    e = torch.zeros(0, 4, device=device, requires_grad=True)
    p = gradient_norm_penalty(e)
    assert torch.isnan(p)
    p.backward()
    assert e.grad.shape == (0, 4)
