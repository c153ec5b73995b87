"""genfast.ops.reparameterize / reparameterize_kl on every backend against torch.distributions and the
float64 reference; gradients, noise replay, free bits, clamps, reductions, bad input, opcheck, AOT."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import genfast
from genfast.ops import randn, reparameterize, reparameterize_kl
from genfast.ops.vae import vae_forward_op
from tests.tolerances import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Odd sizes (not multiples of any block), D % 4 != 0 (per-element noise path) and D % 4 == 0.
SHAPES = [(5, 12), (3, 7), (4, 3, 5), (2, 4, 6, 6), (1, 1), (7,)]


def _inputs(shape, dtype, device, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g).to(dtype).to(device)
    lv = (0.5 * torch.randn(shape, generator=g)).to(dtype).to(device)
    if requires_grad:
        mu.requires_grad_(True)
        lv.requires_grad_(True)
    return mu, lv


def _torch_oracle(mu, lv, eps, free_bits=None, clamp=None):
    """z and per-sample KL by torch.distributions (float64), with the documented free bits/clamp."""
    lvc = lv.clamp(*clamp) if clamp else lv
    std = torch.exp(0.5 * lvc)
    z = mu + std * eps  # == Normal(mu, std).rsample() with that eps
    kl = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    kl = kl.reshape(mu.shape[0], -1)
    rows = kl.sum(1)
    if free_bits is not None:
        rows = rows + torch.relu(free_bits - kl.mean(0)).sum()
    return z, rows


# ----------------------------------------------------------------------------------------------
# Reference in float64 == torch.distributions (values and both gradients).
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("free_bits,clamp", [(None, None), (0.4, None), (None, (-0.3, 0.4)), (0.2, (-0.5, 0.5))])
def test_reference_matches_torch_distributions(shape, free_bits, clamp):
    mu, lv = _inputs(shape, torch.float64, "cpu", requires_grad=True)
    with genfast.use_backend("reference"):
        eps = randn(shape, seed=11, offset=3, dtype=torch.float64)
        z, kl = reparameterize_kl(mu, lv, seed=11, offset=3, reduction="none", free_bits=free_bits,
                                  logvar_clamp=clamp)
    z_ref, kl_ref = _torch_oracle(mu, lv, eps, free_bits, clamp)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-12, atol=1e-12)
    gz = torch.randn(shape, dtype=torch.float64)
    gk = torch.randn(shape[0], dtype=torch.float64)
    got = torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (mu, lv))
    want = torch.autograd.grad((z_ref * gz).sum() + (kl_ref * gk).sum(), (mu, lv))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Also with Normal.rsample drawing that eps (its noise comes from torch's generator: patch it in).
    d = Normal(mu, torch.exp(0.5 * (lv.clamp(*clamp) if clamp else lv)))
    torch.testing.assert_close(d.loc + d.scale * eps, z_ref)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_gradcheck_reference_float64(reduction):
    mu, lv = _inputs((3, 5), torch.float64, "cpu", requires_grad=True)
    with genfast.use_backend("reference"):
        f = lambda m, l: reparameterize_kl(m, l, seed=2, reduction=reduction, free_bits=0.3,  # noqa: E731
                                           logvar_clamp=(-0.6, 0.6))
        assert torch.autograd.gradcheck(f, (mu, lv))
        noise = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        g = lambda m, l, n: reparameterize_kl(m, l, noise=n, reduction=reduction)  # noqa: E731
        assert torch.autograd.gradcheck(g, (mu, lv, noise))
        assert torch.autograd.gradcheck(lambda m, l: reparameterize(m, l, seed=4), (mu, lv))


# ----------------------------------------------------------------------------------------------
# Every backend against the float64 reference.
# ----------------------------------------------------------------------------------------------
def _reference64(mu, lv, **kw):
    m = mu.detach().double().cpu().requires_grad_(True)
    l = lv.detach().double().cpu().requires_grad_(True)
    with genfast.use_backend("reference"):
        z, kl = reparameterize_kl(m, l, **kw)
    return m, l, z, kl


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backend_matches_reference(backend_device, dtype, shape):
    name, device = backend_device
    mu, lv = _inputs(shape, dtype, device, seed=hash((shape, str(dtype))) % 1000, requires_grad=True)
    kw = dict(seed=123456789012345, offset=7, reduction="none")
    z, kl = reparameterize_kl(mu, lv, **kw)
    assert z.dtype == dtype and z.shape == mu.shape and z.device == mu.device
    assert kl.dtype == torch.float32 and kl.shape == (shape[0],)
    m64, l64, z64, kl64 = _reference64(mu, lv, **kw)
    assert_close(z, z64, dtype, scale=2)
    # The KL sums D terms in fp32: relative tolerance grows with D.
    assert_close(kl, kl64, torch.float32, scale=20 * math.prod(shape[1:]))
    gz = torch.randn(shape).to(dtype).to(device)
    gk = torch.randn(shape[0]).to(device)
    g_mu, g_lv = torch.autograd.grad((z * gz).float().sum() + (kl * gk).sum(), (mu, lv))
    r_mu, r_lv = torch.autograd.grad((z64 * gz.double().cpu()).sum() + (kl64 * gk.double().cpu()).sum(), (m64, l64))
    assert g_mu.dtype == dtype and g_lv.dtype == dtype
    assert_close(g_mu, r_mu, dtype, scale=4)
    assert_close(g_lv, r_lv, dtype, scale=4)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("free_bits,clamp", [(None, None), (0.5, None), (None, (-0.4, 0.3)), (0.3, (-0.4, 0.3))])
def test_backend_options_match_reference(backend_device, reduction, free_bits, clamp):
    name, device = backend_device
    shape = (6, 3, 5)
    mu, lv = _inputs(shape, torch.float32, device, seed=3, requires_grad=True)
    kw = dict(seed=9, reduction=reduction, free_bits=free_bits, logvar_clamp=clamp)
    z, kl = reparameterize_kl(mu, lv, **kw)
    m64, l64, z64, kl64 = _reference64(mu, lv, **kw)
    assert kl.shape == kl64.shape
    assert_close(z, z64, torch.float32, scale=2)
    assert_close(kl, kl64, torch.float32, scale=200)
    w = torch.randn(kl.shape)
    g = torch.autograd.grad(z.sum() + (kl * w.to(device)).sum(), (mu, lv))
    r = torch.autograd.grad(z64.sum() + (kl64 * w.double()).sum(), (m64, l64))
    for a, b in zip(g, r):
        assert_close(a, b, torch.float32, scale=20)
    if clamp is not None:  # gradient of logvar is zero where the clamp is active
        outside = (lv < clamp[0]) | (lv > clamp[1])
        assert outside.any()
        g_only_z = torch.autograd.grad(reparameterize_kl(mu, lv, **kw)[0].sum(), lv)[0]
        assert (g_only_z[outside] == 0).all()


def test_noise_from_stream_identical_and_replayed(backend_device):
    """z - mu == std * eps with eps = genfast.ops.randn, and d z / d logvar = std * eps / 2 in the backward."""
    name, device = backend_device
    shape = (3, 2, 10)
    mu, lv = _inputs(shape, torch.float32, device, requires_grad=True)
    z = reparameterize(mu, lv, seed=77, offset=5)
    eps = randn(shape, seed=77, offset=5, device=device)
    std = torch.exp(0.5 * lv.detach())
    torch.testing.assert_close(z.detach(), mu.detach() + std * eps, rtol=1e-5, atol=1e-6)
    g_mu, g_lv = torch.autograd.grad(z.sum(), (mu, lv))
    torch.testing.assert_close(g_mu, torch.ones_like(mu))
    torch.testing.assert_close(g_lv, 0.5 * std * eps, rtol=1e-5, atol=1e-6)
    # Same seed -> same z; another offset -> other noise.
    z2 = reparameterize(mu, lv, seed=77, offset=5)
    z3 = reparameterize(mu, lv, seed=77, offset=6)
    assert torch.equal(z.detach(), z2.detach())
    assert not torch.allclose(z.detach(), z3.detach())


def test_noise_tensor_used_as_given(backend_device):
    name, device = backend_device
    shape = (4, 9)
    mu, lv = _inputs(shape, torch.float32, device, requires_grad=True)
    noise = torch.randn(shape, device=device)
    z, kl = reparameterize_kl(mu, lv, noise=noise)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * lv) * noise, rtol=1e-5, atol=1e-6)
    g_lv = torch.autograd.grad(z.sum(), lv)[0]
    torch.testing.assert_close(g_lv, 0.5 * torch.exp(0.5 * lv.detach()) * noise, rtol=1e-5, atol=1e-6)


def test_seed_tensor(backend_device):
    name, device = backend_device
    shape = (2, 8)
    mu, lv = _inputs(shape, torch.float32, device, requires_grad=True)
    seed = torch.tensor(31, dtype=torch.int64, device=device)
    z = reparameterize(mu, lv, seed=seed, offset=torch.tensor(2, dtype=torch.int64, device=device))
    seed.fill_(99)  # overwritten before the backward: the forward's noise must be replayed
    g_lv = torch.autograd.grad(z.sum(), lv)[0]
    eps = randn(shape, seed=31, offset=2, device=device)
    torch.testing.assert_close(g_lv, 0.5 * torch.exp(0.5 * lv.detach()) * eps, rtol=1e-5, atol=1e-6)


def test_empty_and_noncontiguous(backend_device):
    name, device = backend_device
    mu = torch.empty(0, 3, 4, device=device, requires_grad=True)
    lv = torch.empty(0, 3, 4, device=device, requires_grad=True)
    z, kl = reparameterize_kl(mu, lv, seed=1, reduction="none")
    assert z.shape == (0, 3, 4) and kl.shape == (0,)
    assert reparameterize_kl(mu, lv, seed=1, reduction="sum")[1].item() == 0
    assert math.isnan(reparameterize_kl(mu, lv, seed=1)[1].item())  # mean over no samples, like torch.mean
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == mu.shape
    z0, kl0 = reparameterize_kl(torch.zeros(3, 0, device=device), torch.zeros(3, 0, device=device), seed=1,
                                reduction="none")
    assert torch.equal(kl0, torch.zeros(3, device=device))
    # Non-contiguous: transposed and strided views give the values of their contiguous copies.
    base_mu, base_lv = _inputs((6, 10), torch.float32, device)
    mu_nc, lv_nc = base_mu.t()[:, ::2], base_lv.t()[:, ::2]
    assert not mu_nc.is_contiguous()
    z1, kl1 = reparameterize_kl(mu_nc, lv_nc, seed=3, reduction="none")
    z2, kl2 = reparameterize_kl(mu_nc.contiguous(), lv_nc.contiguous(), seed=3, reduction="none")
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(kl1, kl2)


def test_free_bits_semantics():
    """batch objective = sum_j max(lam, mean_b KL_bj); elements below the floor get no KL gradient."""
    mu = torch.tensor([[0.0, 2.0], [0.0, -2.0]], requires_grad=True)
    lv = torch.zeros(2, 2, requires_grad=True)
    lam = 0.5
    _, kl = reparameterize_kl(mu, lv, seed=0, free_bits=lam)
    # KL per element = mu^2 / 2: column 0 -> 0 (floored at 0.5), column 1 -> 2.
    assert kl.item() == pytest.approx(0.5 + 2.0)
    g_mu = torch.autograd.grad(kl, mu)[0]
    torch.testing.assert_close(g_mu, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    _, kl_none = reparameterize_kl(mu, lv, seed=0, free_bits=lam, reduction="none")
    torch.testing.assert_close(kl_none, torch.tensor([2.5, 2.5]))


def test_reductions_and_convention():
    mu, lv = _inputs((4, 6), torch.float64, "cpu")
    _, none = reparameterize_kl(mu, lv, seed=1, reduction="none")
    _, s = reparameterize_kl(mu, lv, seed=1, reduction="sum")
    _, bm = reparameterize_kl(mu, lv, seed=1)
    hand = (-0.5 * (1 + lv - mu**2 - lv.exp())).sum(1)
    torch.testing.assert_close(none, hand)
    torch.testing.assert_close(s, hand.sum())
    torch.testing.assert_close(bm, hand.mean())


def test_fp16_at_least_as_close_as_eager_fp16(backend_device):
    """Flash-attention rule: the fused fp16 result is no further from float64 than eager fp16 math."""
    name, device = backend_device
    shape = (8, 64)
    mu, lv = _inputs(shape, torch.float16, device, seed=5)
    noise = torch.randn(shape).half().to(device)
    z, _ = reparameterize_kl(mu, lv, noise=noise)
    z_eager = mu + torch.exp(0.5 * lv) * noise
    z64 = mu.double() + torch.exp(0.5 * lv.double()) * noise.double()
    assert (z.double() - z64).abs().max() <= (z_eager.double() - z64).abs().max() + 1e-12


# ----------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------
def test_bad_input():
    mu = torch.randn(3, 4)
    lv = torch.randn(3, 4)
    with pytest.raises(ValueError, match="logvar"):
        reparameterize_kl(mu, torch.randn(3, 5))
    with pytest.raises(TypeError, match="logvar"):
        reparameterize_kl(mu, lv.half())
    with pytest.raises(TypeError, match="mu"):
        reparameterize_kl(mu.long(), lv.long())
    with pytest.raises(TypeError, match="mu"):
        reparameterize(mu.numpy(), lv)
    with pytest.raises(ValueError, match="mu"):
        reparameterize(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="noise"):
        reparameterize(mu, lv, noise=torch.randn(4, 3))
    with pytest.raises(TypeError, match="noise"):
        reparameterize(mu, lv, noise=torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction"):
        reparameterize_kl(mu, lv, reduction="mean")
    with pytest.raises(ValueError, match="free_bits"):
        reparameterize_kl(mu, lv, free_bits=-1.0)
    with pytest.raises(TypeError, match="free_bits"):
        reparameterize_kl(mu, lv, free_bits="1")
    with pytest.raises(ValueError, match="logvar_clamp"):
        reparameterize_kl(mu, lv, logvar_clamp=(2.0, -2.0))
    with pytest.raises(ValueError, match="logvar_clamp"):
        reparameterize_kl(mu, lv, logvar_clamp=3.0)
    with pytest.raises(ValueError, match="seed"):
        reparameterize(mu, lv, seed=-1)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="logvar"):
            reparameterize(mu, lv.cuda())


def test_float64_dispatch():
    mu, lv = _inputs((3, 4), torch.float64, "cpu")
    z = reparameterize(mu, lv, seed=1)  # default dispatch: reference
    assert z.dtype == torch.float64
    if genfast.backends()["cpu"].available:
        with genfast.use_backend("cpu"), pytest.raises(TypeError, match="dtype"):
            reparameterize(mu, lv, seed=1)


# ----------------------------------------------------------------------------------------------
# torch.library registration.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_noise", [False, True])
def test_opcheck(backend_device, with_noise):
    name, device = backend_device
    mu, lv = _inputs((3, 8), torch.float32, device, requires_grad=True)
    noise = torch.randn(3, 8, device=device) if with_noise else None
    for col_sums, lo, hi in [(False, None, None), (True, -0.5, 0.5)]:
        args = (mu, lv, noise, 5, 1, None, None, True, col_sums, lo, hi, name)
        torch.library.opcheck(vae_forward_op, args)


def test_torch_compile_custom_op_fullgraph():
    """The custom op traces under torch.compile without graph breaks, forward and backward. (The public
    wrappers read genfast's backend context variable, which dynamo does not trace: that is a graph break
    in the dispatch, outside the op.)"""
    mu, lv = _inputs((4, 8), torch.float32, "cpu", requires_grad=True)

    def f(m, l):
        z, rows, cols = vae_forward_op(m, l, None, 3, 0, None, None, True, True, None, None, "reference")
        return z.sum() + (rows + torch.relu(0.1 - cols / 4).sum()).mean()

    eager = f(mu, lv)
    g_eager = torch.autograd.grad(eager, (mu, lv))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(mu, lv)
    g_comp = torch.autograd.grad(compiled, (mu, lv))
    torch.testing.assert_close(eager, compiled)
    for a, b in zip(g_eager, g_comp):
        torch.testing.assert_close(a, b)


# The Triton kernels' AOT compile (real launcher specializations, sm_90 and sm_80, 16-byte accesses,
# registers, spills) is tests/test_triton_codegen.py.


# ----------------------------------------------------------------------------------------------
# ConvVAE, VAE losses, beta schedules.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_conv_vae_shapes_and_backward(size, channels):
    from genfast.models import ConvVAE
    from genfast.losses import vae_loss

    torch.manual_seed(0)
    model = ConvVAE(image_size=size, in_channels=channels, latent_dim=8)
    x = torch.rand(2, channels, size, size)
    recon, mu, logvar, z, kl = model(x, seed=4)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (2, 8)
    assert kl.shape == ()
    eps = randn((2, 8), seed=4)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl, (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(1).mean(), rtol=1e-5, atol=1e-6)
    loss = vae_loss(recon, x, kl)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.sample(3, seed=1).shape == (3, channels, size, size)


def test_conv_vae_custom_channels_and_bad_size():
    from genfast.models import ConvVAE

    m = ConvVAE(image_size=32, in_channels=3, latent_dim=4, hidden_channels=(8, 16), likelihood="gaussian")
    out = m(torch.randn(1, 3, 32, 32), seed=0)
    assert out[0].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="image_size"):
        ConvVAE(image_size=30)


def test_reconstruction_nll_hand_formulas():
    from genfast.losses import vae_loss, vae_reconstruction_nll

    torch.manual_seed(1)
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    p = torch.sigmoid(logits)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).reshape(3, -1).sum(1)
    torch.testing.assert_close(vae_reconstruction_nll(logits, x, "bernoulli", reduction="none"), bce, rtol=1e-5,
                               atol=1e-5)
    sigma = 0.7
    gauss = ((x - logits) ** 2 / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)).reshape(3, -1).sum(1)
    torch.testing.assert_close(vae_reconstruction_nll(logits, x, "gaussian", sigma=sigma), gauss.mean())
    kl = torch.tensor(2.5)
    torch.testing.assert_close(vae_loss(logits, x, kl, beta=4.0), bce.mean() + 10.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae_loss(logits, x, kl, capacity=3.0, gamma=100.0), bce.mean() + 50.0, rtol=1e-5,
                               atol=1e-4)
    with pytest.raises(ValueError, match="likelihood"):
        vae_reconstruction_nll(logits, x, "poisson")
    with pytest.raises(ValueError, match="gamma"):
        vae_loss(logits, x, kl, capacity=3.0)


def test_beta_schedules():
    from genfast.losses import (CapacitySchedule, ConstantBeta, CyclicalBeta, LinearWarmupBeta, beta_vae_loss,
                                vae_loss)

    assert ConstantBeta(4.0)(0) == ConstantBeta(4.0)(10**6) == 4.0
    warm = LinearWarmupBeta(beta=2.0, warmup_steps=100)
    assert [warm(s) for s in (0, 25, 100, 500)] == [0.0, 0.5, 2.0, 2.0]
    cyc = CyclicalBeta(beta=1.0, cycle_steps=100, ratio=0.5, n_cycles=2)
    assert [cyc(s) for s in (0, 25, 50, 99, 100, 125, 199, 200, 225)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    cap = CapacitySchedule(c_max=25.0, steps=1000, gamma=1000.0)
    assert [cap(s) for s in (0, 400, 1000, 2000)] == [0.0, 10.0, 25.0, 25.0]
    kl = torch.tensor(12.0)
    assert cap.loss(kl, 400).item() == pytest.approx(2000.0)
    x = torch.rand(2, 1, 4, 4)
    logits = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(beta_vae_loss(logits, x, kl, 400, cap), vae_loss(logits, x, kl) - kl + 2000.0)
    torch.testing.assert_close(beta_vae_loss(logits, x, kl, 25, warm), vae_loss(logits, x, kl, beta=0.5))
