"""The Triton kernels against the reference where their structure has edges: seeds and offsets at the
32/64-bit boundaries (issue 15: Python ints in [2^31, 2^32) drew another stream), the unmasked-main /
masked-tail split at block boundaries, the per-sample index without a division, the VAE's odd latent
sizes and its backward looping over more row tiles than the grid holds, and the device guard.

On a CPU-only machine these run under Triton's interpreter (TRITON_INTERPRET=1, set by conftest), on
a GPU machine compiled on CUDA tensors. Shapes stay small: the interpreter is slow.
"""
import pytest
import torch

import genfast
from genfast._backend import backend_info
from genfast.ops import ddim_step, ddpm_step, interpolate, rand, randn, reparameterize_kl
from genfast.ops._stream import to_signed64
from tolerances import assert_close

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _triton_or_skip():
    info = backend_info("triton")
    if not info.available:
        pytest.skip(info.reason)
    if DEVICE not in info.devices:
        pytest.skip(f"triton does not serve {DEVICE} here: {info.reason}")


# Boundaries of the u64 seed/offset range (issue 15, item 6), as the u64 values users pass.
BOUNDARY_VALUES = [0, 1, 16, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**63 + 1,
                   2**64 - 1]


def _both(fn):
    """fn() under the triton backend and under the reference backend."""
    with genfast.use_backend("triton"):
        got = fn()
    with genfast.use_backend("reference"):
        want = fn()
    return got, want


@pytest.mark.parametrize("value", BOUNDARY_VALUES, ids=hex)
def test_stream_at_seed_and_offset_boundaries(value):
    _triton_or_skip()
    g = torch.Generator().manual_seed(value % 1000)
    for seed, offset in ((value, 3), (5, value), (value, value)):
        # uniforms: the same bits on every backend
        got, want_u = _both(lambda: rand(37, seed=seed, offset=offset, device=DEVICE))
        assert torch.equal(got.cpu(), want_u.cpu()), (hex(seed), hex(offset))
        got, want = _both(lambda: randn(37, seed=seed, offset=offset, device=DEVICE, dtype=torch.float16))
        assert_close(got, want, msg=f"randn seed={seed:#x} offset={offset:#x}")
        # seed and offset tensors (the signed-int64 bit patterns the ops carry) draw the same stream
        seed_t = torch.tensor(to_signed64(seed), dtype=torch.int64, device=DEVICE)
        offset_t = torch.tensor(to_signed64(offset), dtype=torch.int64, device=DEVICE)
        with genfast.use_backend("triton"):
            from_tensor = rand(37, seed=seed_t, offset=offset_t, device=DEVICE)
        assert torch.equal(from_tensor.cpu(), want_u.cpu()), (hex(seed), hex(offset))
    # and the noisy ops draw it too
    x = torch.randn(2, 3, 5, generator=g).to(DEVICE)
    eps = torch.randn(2, 3, 5, generator=g).to(DEVICE)
    got, want = _both(lambda: ddim_step(x, eps, 0.5, 0.7, eta=1.0, seed=value, offset=value))
    assert_close(got, want, msg="ddim_step")
    got, want = _both(lambda: ddpm_step(x, eps, 0.5, 0.7, seed=value, offset=1))
    assert_close(got, want, msg="ddpm_step")
    got, want = _both(lambda: interpolate(x, eps, seed=value, offset=value))
    assert_close(got, want, msg="interpolate")
    got, want = _both(lambda: reparameterize_kl(x, eps * 0.1, seed=value, offset=value)[0])
    assert_close(got, want, msg="reparameterize_kl")


def test_seed_words_are_int32_bit_patterns():
    pytest.importorskip("triton")
    from genfast.triton.random import stream_words

    for value in BOUNDARY_VALUES:
        lo, hi = stream_words(to_signed64(value))
        assert -2**31 <= lo < 2**31 and -2**31 <= hi < 2**31
        assert (lo & 0xFFFFFFFF) | ((hi & 0xFFFFFFFF) << 32) == value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_random_fill_around_block_boundaries(dtype):
    _triton_or_skip()
    from genfast.triton.random import random_fill
    from genfast.ops._stream import resolve_stream

    block = 8 * 16  # 16 rows per program: several full programs and a tail at small n
    for n in (1, 7, 8, block - 1, block, block + 1, 3 * block + 5):
        out = torch.full((n,), float("nan"), dtype=dtype, device=DEVICE)
        s = resolve_stream(9, 2, torch.device(DEVICE))
        random_fill(out, s.seed, s.offset, None, None, False, block_rows=16)
        with genfast.use_backend("reference"):
            want = rand(n, seed=9, offset=2, dtype=dtype, device=DEVICE)
        assert torch.equal(out.cpu(), want.cpu()), n


def _alphas(b, gen):
    a_t = torch.rand(b, generator=gen) * 0.5 + 0.3
    a_p = torch.clamp(a_t + 0.2, max=0.99)
    return a_t.to(DEVICE), a_p.to(DEVICE)


# Sizes: inner a multiple of the row length (per-row sample index) or not (per element), n around
# the 1024-element (fp32) / 2048-element (fp16) program, B larger than a program's elements.
DIFFUSION_SHAPES = [(3, 4, 4), (5, 7), (2, 1025), (3, 683), (700, 1), (4, 2, 8)]


@pytest.mark.parametrize("shape", DIFFUSION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_diffusion_per_sample_paths(shape, dtype):
    _triton_or_skip()
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    eps = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    a_t, a_p = _alphas(shape[0], gen)
    # per-sample alphas, stream noise, clipping
    got, want = _both(lambda: ddim_step(x, eps, a_t, a_p, eta=0.7, clip_sample_range=1.5, seed=11, offset=1))
    assert_close(got, want, scale=4, msg="ddim per-sample alphas")
    # dynamic thresholding (per-sample bounds), scalar alphas
    got, want = _both(lambda: ddpm_step(x, eps, 0.4, 0.6, thresholding=(0.9, 1.2), seed=1, offset=1))
    assert_close(got, want, scale=4, msg="ddpm thresholding")
    # learned variance: model output [B, 2C, ...] read at b * 2 * inner + ...
    model = torch.cat([eps, torch.rand(shape, generator=gen).to(DEVICE, dtype) * 2 - 1], dim=1)
    got, want = _both(lambda: ddpm_step(x, model, a_t, a_p, variance_type="learned_range", seed=3, offset=16))
    assert_close(got, want, scale=4, msg="ddpm learned_range")


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 2 * 1024 + 3])
def test_diffusion_main_and_tail(n):
    _triton_or_skip()
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(1, n, generator=gen).to(DEVICE)
    eps = torch.randn(1, n, generator=gen).to(DEVICE)
    noise = torch.randn(1, n, generator=gen).to(DEVICE)
    got, want = _both(lambda: ddim_step(x, eps, 0.5, 0.8, eta=1.0, noise=noise, return_pred_original=True))
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("d", [1, 3, 5, 63, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vae_latent_not_a_multiple_of_4(d, dtype):
    _triton_or_skip()
    gen = torch.Generator().manual_seed(d)
    mu = torch.randn(6, d, generator=gen).to(DEVICE, dtype).requires_grad_()
    lv = (torch.randn(6, d, generator=gen) * 0.3).to(DEVICE, dtype).requires_grad_()
    gz = torch.randn(6, d, generator=gen).to(DEVICE, dtype)

    def run():
        z, kl = reparameterize_kl(mu, lv, seed=2**31 + 7, offset=1)
        return (z, kl) + torch.autograd.grad((z * gz).sum() + kl, (mu, lv))

    for g, w in zip(*_both(run)):
        assert_close(g, w, scale=4)


def test_vae_backward_loops_over_more_row_tiles_than_the_grid(monkeypatch):
    _triton_or_skip()
    from genfast.triton import vae as tv

    # A grid of at most 2 row programs: each loops over several row tiles (as with B > 65535 on a GPU).
    monkeypatch.setattr(tv, "MAX_GRID_Y", 2)
    monkeypatch.setattr(tv, "MAX_TILE", 64)
    gen = torch.Generator().manual_seed(0)
    b, d = 37, 16  # 4 rows per tile: 10 row tiles on 2 programs
    mu = torch.randn(b, d, generator=gen).to(DEVICE).requires_grad_()
    lv = (torch.randn(b, d, generator=gen) * 0.3).to(DEVICE).requires_grad_()
    gz = torch.randn(b, d, generator=gen).to(DEVICE)

    def run():
        z, kl = reparameterize_kl(mu, lv, seed=4, offset=1, free_bits=0.1)
        return (z, kl) + torch.autograd.grad((z * gz).sum() + kl, (mu, lv))

    rows, _ = tv.tile_shape(b, d)
    assert triton_cdiv(b, rows) > 2 * tv.MAX_GRID_Y  # the loop really runs
    for g, w in zip(*_both(run)):
        assert_close(g, w)


def triton_cdiv(a, b):
    return -(-a // b)


@pytest.mark.parametrize("row", [5, 20, 24, 2050])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gradient_penalty_row_alignments(row, dtype):
    _triton_or_skip()
    from genfast.ops import gradient_norm_penalty

    gen = torch.Generator().manual_seed(row)
    real = torch.randn(3, row, generator=gen).to(DEVICE, dtype)
    fake = torch.randn(3, row, generator=gen).to(DEVICE, dtype)
    got, want = _both(lambda: interpolate(real, fake, seed=2**32 - 1, offset=1))
    assert_close(got, want)
    g = real.float().requires_grad_()
    got, want = _both(lambda: torch.autograd.grad(gradient_norm_penalty(g * 0.1), g)[0])
    assert_close(got, want, scale=4)


# ---- device guard ----------------------------------------------------------------------------------
def _fake_cuda_launch_log(monkeypatch):
    """Run every Triton launcher on fake tensors of cuda:1 (no GPU needed: FakeTensorMode) with the
    kernels replaced by recorders, and torch.cuda.device replaced by a stand-in that tracks the
    'current device'; returns the launches with the device current at each."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from genfast.ops._stream import Stream
    from triton_aot import record_launches

    current = {"device": 0}

    class FakeDeviceGuard:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.prev, current["device"] = current["device"], self.index

        def __exit__(self, *exc):
            current["device"] = self.prev

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceGuard)
    from genfast.triton import gradient_penalty as tgp
    from genfast.triton import vae as tv
    from genfast.triton.diffusion import diffusion_step_triton
    from genfast.triton.random import random_fill

    with record_launches(on_launch=lambda: current["device"]) as log, \
            FakeTensorMode(allow_non_fake_inputs=True):
        dev = torch.device("cuda", 1)
        x = torch.empty(4, 3, 8, 8, device=dev)
        stream = Stream(5, 1, None, None)
        random_fill(x, 5, 1, None, None, True)
        diffusion_step_triton(0, torch.empty_like(x), None, x, torch.empty_like(x), None, 1.0, 0.5, 0.6, None, None,
                              1.0, 0, None, None, 0.0, 0.0, False, 0, 1, 2, None, stream)
        tgp.interpolate_launch(x, x, torch.empty_like(x), None, 5, 1, None, None)
        tgp.norm_penalty_launch(x, torch.empty(4, device=dev), torch.empty((), device=dev),
                                torch.zeros(1, dtype=torch.int32, device=dev), 10.0, 1.0, 0)
        tgp.norm_penalty_backward_launch(torch.empty((), device=dev), x, torch.empty(4, device=dev),
                                         torch.empty_like(x), 10.0, 1.0, 0)
        mu = torch.empty(4, 16, device=dev)
        tv.vae_forward(mu, mu, None, stream, True, True, None, None)
        tv.vae_backward(mu, torch.empty(4, device=dev), None, mu, mu, None, stream, None, None)
    return log


def test_launchers_launch_on_the_device_of_their_tensors(monkeypatch):
    log = _fake_cuda_launch_log(monkeypatch)
    kernels = {launch.name for launch in log}
    assert kernels == {"_random_fill_kernel", "_diffusion_step_kernel", "_interpolate_kernel", "_norm_penalty_kernel",
                       "_norm_penalty_backward_kernel", "_vae_forward_kernel", "_vae_backward_kernel"}
    for launch in log:
        assert launch.context == 1, f"{launch.name} launched with device {launch.context} current, not cuda:1"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (the guard's real test)")
def test_launch_on_second_gpu_with_first_current():
    _triton_or_skip()
    torch.cuda.set_device(0)
    x = torch.randn(3, 17, device="cuda:1")
    eps = torch.randn(3, 17, device="cuda:1")
    with genfast.use_backend("triton"):
        got = ddim_step(x, eps, 0.5, 0.7, eta=1.0, seed=2, offset=1)
        torch.cuda.synchronize(1)
    with genfast.use_backend("reference"):
        want = ddim_step(x.cpu(), eps.cpu(), 0.5, 0.7, eta=1.0, seed=2, offset=1)
    assert_close(got, want)
