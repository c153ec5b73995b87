"""The registered ops called directly (torch.ops.genfast.*: what torch.compile, export and other libraries
call), with each class of hostile tensor: expanded (stride 0), transposed, offset views, too-short
per-sample tensors, wrong dtypes, devices and ranks. Each call either equals the reference backend's
answer for the same values or raises a clean TypeError/ValueError -- never a crash or a silent wrong
number."""
import pytest
import torch

import genfast  # noqa: F401  (registers the ops)
from conftest import backend_device_params

OPS = torch.ops.genfast
COMPILED_PAIRS = [("cpu", "cpu"), ("triton", "cpu"), ("cuda-emulated", "cpu"), ("triton", "cuda"), ("cuda", "cuda")]


def _variants(t: torch.Tensor):
    """The same values as t in layouts a kernel must not misread."""
    yield "contiguous", t
    if t.dim() >= 1 and t.shape[0] > 0:
        yield "expanded", t[:1].expand(t.shape)  # stride 0 along the batch
    if t.dim() >= 2:
        yield "transposed", t.transpose(0, -1).contiguous().transpose(0, -1)
    big = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    big[1:] = t.reshape(-1)
    yield "offset view", big[1:].view(t.shape)  # storage offset: breaks 16-byte alignment


def _same(a, b):
    if isinstance(a, (tuple, list)):
        for x, y in zip(a, b):
            _same(x, y)
        return
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5, equal_nan=True)


def _cases(device):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x, m = r(3, 2, 5), r(3, 2, 5)
    mu, lv = r(3, 7), r(3, 7) * 0.3
    grad = r(4, 9)
    return {
        "diffusion_step": (lambda s, mo, be: OPS.diffusion_step(0, s, mo, None, 1.0, 0.4, 0.6, None, None, 0.5, 0, 1.0,
                                                                None, 1.0, False, 0, 1, 2, None, 7, 3, None, None,
                                                                True, be), (x, m)),
        "gp_interpolate": (lambda a, b, be: OPS.gp_interpolate(a, b, None, 5, 1, None, None, be), (x, m)),
        "gp_norm_penalty": (lambda gr, be: OPS.gp_norm_penalty(gr, 10.0, 1.0, 0, be), (grad,)),
        "vae_reparameterize": (lambda a, b, be: OPS.vae_reparameterize(a, b, None, 3, 2, None, None, True, True, None,
                                                                       None, be), (mu, lv)),
    }


@pytest.mark.parametrize("backend_device", backend_device_params(COMPILED_PAIRS), indirect=True)
@pytest.mark.parametrize("op", ["diffusion_step", "gp_interpolate", "gp_norm_penalty", "vae_reparameterize"])
def test_every_layout_gives_the_reference_answer(backend_device, op):
    backend, device = backend_device
    fn, tensors = _cases(device)[op]
    expected = fn(*[t.contiguous() for t in tensors], "reference")
    for i, t in enumerate(tensors):
        for name, v in _variants(t):
            args = list(tensors)
            args[i] = v
            ref = fn(*[a.contiguous() for a in args], "reference")
            got = fn(*args, backend)
            _same(got, ref)
    _same(fn(*tensors, backend), expected)


@pytest.mark.parametrize("backend_device", backend_device_params(COMPILED_PAIRS + [("reference", "cpu")]),
                         indirect=True)
def test_bad_tensors_are_clean_errors(backend_device):
    backend, device = backend_device
    x = torch.randn(3, 2, 5, device=device)
    m = torch.randn(3, 2, 5, device=device)
    short = torch.rand(2, device=device)
    seed_bad = torch.zeros(2, dtype=torch.int64, device=device)
    calls = [
        # a [B] alpha with the wrong length, of the wrong dtype
        lambda: OPS.diffusion_step(0, x, m, None, 1.0, 0.4, 0.6, short, None, 0.5, 0, None, None, 1.0, False, 0, 0, 0,
                                   None, 0, 0, None, None, False, backend),
        lambda: OPS.diffusion_step(0, x, m, None, 1.0, 0.4, 0.6, torch.ones(3, dtype=torch.int64, device=device), None,
                                   0.5, 0, None, None, 1.0, False, 0, 0, 0, None, 0, 0, None, None, False, backend),
        # model output of another shape, integer sample, 0-dim sample, enum out of range, noise tensor missing
        lambda: OPS.diffusion_step(0, x, m[:, :1], None, 1.0, 0.4, 0.6, None, None, 0.5, 0, None, None, 1.0, False, 0,
                                   0, 0, None, 0, 0, None, None, False, backend),
        lambda: OPS.diffusion_step(0, x.long(), m.long(), None, 1.0, 0.4, 0.6, None, None, 0.5, 0, None, None, 1.0,
                                   False, 0, 0, 0, None, 0, 0, None, None, False, backend),
        lambda: OPS.diffusion_step(0, x[0, 0, 0], m[0, 0, 0], None, 1.0, 0.4, 0.6, None, None, 0.5, 0, None, None,
                                   1.0, False, 0, 0, 0, None, 0, 0, None, None, False, backend),
        lambda: OPS.diffusion_step(7, x, m, None, 1.0, 0.4, 0.6, None, None, 0.5, 0, None, None, 1.0, False, 0, 0, 0,
                                   None, 0, 0, None, None, False, backend),
        lambda: OPS.diffusion_step(0, x, m, None, 1.0, 0.4, 0.6, None, None, 0.5, 0, None, None, 1.0, False, 0, 1, 1,
                                   None, 0, 0, None, None, False, backend),
        lambda: OPS.diffusion_step(0, x, m, None, 1.0, 0.4, 0.6, None, None, 0.5, 0, None, None, 1.0, False, 0, 1, 2,
                                   None, 0, 0, seed_bad, None, False, backend),
        # interpolation: short alpha, fake of another shape, a seed tensor of two elements
        lambda: OPS.gp_interpolate(x, m, short, 0, 0, None, None, backend),
        lambda: OPS.gp_interpolate(x, m[:2], None, 0, 0, None, None, backend),
        lambda: OPS.gp_interpolate(x, m, None, 0, 0, seed_bad, None, backend),
        # norm penalty: a mode that does not exist, a 0-dim gradient; its backward with short norms
        lambda: OPS.gp_norm_penalty(x, 10.0, 1.0, 5, backend),
        lambda: OPS.gp_norm_penalty(x[0, 0, 0], 10.0, 1.0, 0, backend),
        lambda: OPS.gp_norm_penalty_backward(torch.ones((), device=device), x, short, 10.0, 1.0, 0, backend),
        # VAE: logvar of another shape, clamp bounds crossed, grads of the wrong length
        lambda: OPS.vae_reparameterize(x, m[:, :1], None, 0, 0, None, None, True, False, None, None, backend),
        lambda: OPS.vae_reparameterize(x, m, None, 0, 0, None, None, True, False, 2.0, -2.0, backend),
        lambda: OPS.vae_reparameterize_backward(None, short, None, x, m, None, 0, 0, None, None, None, None, backend),
        # random: negative size, an integer dtype
        lambda: OPS.random([-1], 0, 0, None, None, True, torch.float32, torch.device(device), backend),
        lambda: OPS.random([3], 0, 0, None, None, True, torch.int32, torch.device(device), backend),
    ]
    for i, call in enumerate(calls):
        with pytest.raises((TypeError, ValueError)):
            call()
        assert i >= 0
