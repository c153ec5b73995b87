"""Inputs a hostile but realistic user gives (issue 15): each gets PyTorch's/diffusers' behaviour or a
clear error naming what is wrong, never a confusing one or a silently different result."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import genfast
from genfast.ops import ddim_step, gradient_penalty, interpolate, randn, reparameterize_kl


def _critic(x):
    return (x * x).flatten(1).sum(1)


def test_penalty_under_no_grad_says_autograd_is_off():
    x = torch.randn(4, 3)
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        gradient_penalty(_critic, x, x.flip(0))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="autograd is disabled"):
        gradient_penalty(_critic, x, x.flip(0))


@pytest.mark.parametrize("mode", [["r1"], {"r1": 1}, 2, None])
def test_an_unhashable_or_odd_mode_names_the_argument(mode):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="mode: expected one of"):
        gradient_penalty(_critic, x, x, mode=mode)
    with pytest.raises(ValueError, match="mode: expected one of"):
        genfast.ops.gradient_norm_penalty(x, mode=mode)


def test_numpy_scalars_are_numbers():
    x, m = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    ref = ddim_step(x, m, 0.5, 0.75, eta=0.5, seed=3)
    got = ddim_step(x, m, np.float32(0.5), np.float64(0.75), eta=np.float32(0.5), seed=np.int64(3))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(randn(np.int64(5), seed=np.uint64(2**64 - 1)), randn(5, seed=2**64 - 1))
    torch.testing.assert_close(randn((np.int32(2), np.int64(3)), seed=7, offset=np.int16(2)), randn((2, 3), seed=7, offset=2))
    z, kl = reparameterize_kl(x, m, seed=np.uint32(9), free_bits=np.float32(0.1))
    z2, kl2 = reparameterize_kl(x, m, seed=9, free_bits=float(np.float32(0.1)))
    torch.testing.assert_close((z, kl), (z2, kl2))
    with pytest.raises(TypeError, match="seed"):
        randn(3, seed=np.float64(1.0))
    with pytest.raises(TypeError, match="shape"):
        randn((2.0, 3))


@pytest.mark.parametrize("explicit_device", [False, True])
def test_randn_compiles_fullgraph_without_a_seed(explicit_device):
    def draw(x):
        return x + (randn(x.shape, device=x.device) if explicit_device else randn(tuple(x.shape)))

    compiled = torch.compile(draw, backend="eager", fullgraph=True)
    a, b = compiled(torch.zeros(64)), compiled(torch.zeros(64))
    assert not torch.equal(a, b), "a fresh seed per call"
    assert 0.5 < a.std().item() < 1.5


def test_seeded_ops_compile_fullgraph_and_match_eager():
    x, m = torch.randn(2, 8), torch.randn(2, 8)

    def f(x, m):
        return ddim_step(x, m, 0.4, 0.6, eta=1.0, seed=11, offset=1) + randn(x.shape, seed=2, device=x.device)

    torch.testing.assert_close(torch.compile(f, backend="eager", fullgraph=True)(x, m), f(x, m))


def test_a_seed_tensor_rewritten_before_the_backward_keeps_the_forwards_alpha():
    real = torch.randn(5, 3, requires_grad=True)
    fake = torch.randn(5, 3)
    seed = torch.tensor(17, dtype=torch.int64)
    out = interpolate(real, fake, seed=seed)
    seed.fill_(99)  # a graph replay or a reused buffer writes the next seed
    (g,) = torch.autograd.grad(out.sum(), real)
    alpha = genfast.ops.rand([5], seed=17)
    torch.testing.assert_close(g, alpha[:, None].expand(5, 3))


def test_vae_double_backward_says_it_is_once_differentiable():
    mu = torch.randn(3, 4, requires_grad=True)
    lv = torch.randn(3, 4, requires_grad=True)
    z, kl = reparameterize_kl(mu, lv, seed=1)
    (g,) = torch.autograd.grad(kl + z.pow(2).sum(), mu, create_graph=True)
    with pytest.raises(RuntimeError, match="once-differentiable"):
        g.sum().backward()


def test_triton_interpret_set_after_importing_triton_is_reported_not_listed():
    code = ("import os, triton\nos.environ['TRITON_INTERPRET'] = '1'\nimport genfast\n"
            "info = genfast.backends()['triton']\nprint(info.available, 'cpu' in info.devices, info.reason)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    if torch.cuda.is_available():
        assert proc.stdout.startswith("True False")
    else:
        assert proc.stdout.startswith("False False") and "before the first `import triton`" in proc.stdout
