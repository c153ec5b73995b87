"""Fuzzing every public op on every backend against the reference backend (issue 15).

A seeded generator draws shapes (empty, odd, prime, block-crossing), layouts (transposed, expanded,
storage-offset, strided views), dtypes, values (with NaN and +-inf at random positions in some cases)
and arguments (valid ones and plainly invalid ones). Each case runs on the backend under test and on the
reference, and the verdict is one of: both raise a clean TypeError/ValueError, or both return and the
results agree (NaN where the reference has NaN, the same infinities, per-dtype tolerances elsewhere).
Never a crash, never a different answer. Deterministic: the same cases on every run.
"""
import math

import numpy as np
import pytest
import torch

import genfast
from conftest import backend_device_params
from genfast.ops import (ddim_step, ddpm_step, gradient_norm_penalty, interpolate, rand, randn, reparameterize,
                         reparameterize_kl)

PAIRS = [("cpu", "cpu"), ("triton", "cpu"), ("cuda-emulated", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
CASES_PER_OP = {"cpu": 30, "cuda-emulated": 20, "triton": 8, "cuda": 40}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2),
       torch.float64: (1e-9, 1e-9)}


class Fuzz:
    def __init__(self, seed: int, device: str):
        self.rng = np.random.default_rng(seed)
        self.device = device

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def shape(self, min_dim=1, max_dim=4):
        dims = int(self.rng.integers(min_dim, max_dim + 1))
        sizes = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 33]
        shape = [self.pick(sizes) for _ in range(dims)]
        if self.chance(0.05) and dims > 0:  # (a 0-dim shape has no dimension to empty)
            shape[int(self.rng.integers(dims))] = 0  # empty
        if self.chance(0.1) and dims >= 2:
            shape[-1] = self.pick([129, 257, 1031])  # crosses vector groups and blocks
        return tuple(shape)

    def values(self, shape, dtype, scale=1.0, special=False):
        x = torch.from_numpy(self.rng.standard_normal(shape).astype(np.float32) * scale)
        if special and x.numel():
            flat = x.view(-1)
            k = max(1, x.numel() // 20)
            idx = torch.from_numpy(self.rng.integers(0, x.numel(), k))
            flat[idx] = torch.tensor(self.rng.choice([math.nan, math.inf, -math.inf], k), dtype=torch.float32)
        return self.layout(x.to(dtype).to(self.device))

    def layout(self, t):
        """The same values in a layout picked at random."""
        kind = self.pick(["contiguous", "contiguous", "transposed", "offset", "strided"])
        if kind == "transposed" and t.dim() >= 2:
            return t.transpose(0, -1).contiguous().transpose(0, -1)
        if kind == "offset":
            big = torch.empty(t.numel() + 3, dtype=t.dtype, device=t.device)
            big[3:] = t.reshape(-1)
            return big[3:].view(t.shape)
        if kind == "strided" and t.dim() >= 1:
            big = torch.empty((t.shape[0] * 2,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
            big[::2] = t
            return big[::2]
        return t


def _run(fn):
    try:
        return "ok", fn()
    except (TypeError, ValueError) as exc:
        return "error", exc


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


def _agree(got, ref, dtype, what):
    for g, r in zip(_flat(got), _flat(ref)):
        assert g.shape == r.shape and g.dtype == r.dtype, what
        g, r = g.detach().double().cpu(), r.detach().double().cpu()
        assert torch.equal(torch.isnan(g), torch.isnan(r)), f"{what}: NaN positions differ"
        finite = torch.isfinite(r)
        assert torch.equal(g[~finite & ~torch.isnan(r)], r[~finite & ~torch.isnan(r)]), f"{what}: infinities differ"
        rtol, atol = TOL[dtype]
        scale = max(1.0, r[finite].abs().max().item()) if finite.any() else 1.0
        torch.testing.assert_close(g[finite], r[finite], rtol=rtol * 4, atol=atol * 4 * scale, msg=what)


def _check(case_fn, backend, dtype, what):
    with genfast.use_backend("reference"):
        ref_kind, ref = _run(case_fn)
    with genfast.use_backend(backend):
        got_kind, got = _run(case_fn)
    assert got_kind == ref_kind, f"{what}: reference {ref_kind} ({ref if ref_kind == 'error' else ''}) but " \
                                 f"{backend} {got_kind} ({got if got_kind == 'error' else ''})"
    if got_kind == "ok":
        _agree(got, ref, dtype, what)


def _alpha(f: Fuzz, batch):
    kind = f.pick(["float", "float", "0dim", "batch", "bad"])
    a_t, a_p = sorted(f.rng.uniform(0.02, 0.999, 2))
    if kind == "float":
        return float(a_t), float(a_p)
    if kind == "0dim":
        return torch.tensor(a_t, device=f.device), torch.tensor(a_p, device=f.device)
    if kind == "batch":
        t = torch.from_numpy(f.rng.uniform(0.02, 0.5, batch).astype(np.float32)).to(f.device)
        return t, (t + 0.3).clamp(max=1.0)
    return f.pick([(0.0, 0.5), (1.5, 0.5), (math.nan, 0.5), (torch.rand(batch + 1, device=f.device), 0.5)])


def case_diffusion(f: Fuzz, dtype):
    shape = f.shape(min_dim=2)
    special = f.chance(0.2)
    x = f.values(shape, dtype, 2.0, special)
    kind = f.pick(["ddim", "ddpm"])
    vt = f.pick(["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"])
    learned = kind == "ddpm" and vt.startswith("learned")
    mshape = (shape[0], 2 * shape[1]) + shape[2:] if learned else shape
    m = f.values(mshape, dtype, 1.0, special and f.chance(0.5))
    if learned and vt == "learned" and m.numel():
        m = m.clone()
        m[:, shape[1]:] = m[:, shape[1]:].abs() * 0.1
    guided = f.chance(0.3)
    model_output = (m, f.values(mshape, dtype, 1.0)) if guided else m
    a_t, a_p = _alpha(f, shape[0])
    kw = dict(prediction_type=f.pick(["epsilon", "sample", "v_prediction"]),
              clip_sample_range=f.pick([None, None, 1.0, 0.5]),
              thresholding=f.pick([None, None, (0.9, 1.5), (0.995, 1.0)]),
              guidance_scale=float(f.rng.uniform(0, 8)) if guided else None,
              seed=int(f.rng.integers(0, 2**63)), offset=int(f.rng.integers(0, 1000)))
    if f.chance(0.3):
        kw["noise"] = f.values(shape, f.pick(DTYPES), 1.0)
    if f.chance(0.05):
        kw[f.pick(["prediction_type", "clip_sample_range", "thresholding"])] = f.pick(["x0", -1.0, (2.0, 0.5)])
    if kind == "ddim":
        kw["eta"] = f.pick([0.0, 0.0, 0.5, 1.0, -1.0 if f.chance(0.1) else 1.0])
        kw["use_clipped_model_output"] = f.chance(0.3)
        return lambda: ddim_step(x, model_output, a_t, a_p, return_pred_original=True, **kw)
    kw["variance_type"] = vt
    kw["add_noise"] = f.pick([None, True, False])
    return lambda: ddpm_step(x, model_output, a_t, a_p, return_pred_original=True, **kw)


def case_random(f: Fuzz, dtype):
    shape = f.shape(min_dim=0, max_dim=3)
    seed = f.pick([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 1, 2**63, 2**64 - 1, int(f.rng.integers(0, 2**62))])
    offset = f.pick([0, 1, 2**32, int(f.rng.integers(0, 2**40))])
    draw = f.pick([rand, randn])
    dt = f.pick(DTYPES + [torch.float64])
    return lambda: draw(shape, seed=seed, offset=offset, dtype=dt, device=f.device)


def case_interpolate(f: Fuzz, dtype):
    shape = f.shape()
    real, fake = f.values(shape, dtype, 1.0, f.chance(0.2)), f.values(shape, dtype, 3.0)
    alpha = f.pick([None, None, f.values((shape[0],), f.pick(DTYPES + [torch.float64]), 0.3)])
    if f.chance(0.05):
        fake = f.values((shape[0] + 1,) + shape[1:], dtype)
    seed = int(f.rng.integers(0, 2**64, dtype=np.uint64))
    return lambda: interpolate(real, fake, alpha=alpha, seed=seed, offset=3)


def case_norm_penalty(f: Fuzz, dtype):
    shape = f.shape()
    g = f.values(shape, dtype, f.pick([0.01, 1.0, 30.0]), f.chance(0.2)).requires_grad_(True)
    mode = f.pick(["two-sided", "one-sided", "r1", "r1", "bogus" if f.chance(0.1) else "r1"])
    weight, center = float(f.rng.uniform(0, 20)), float(f.rng.uniform(0, 2))

    def run():
        p = gradient_norm_penalty(g, weight=weight, center=center, mode=mode)
        if not g.shape[0]:
            return (p,)
        (grad,) = torch.autograd.grad(p, g)
        return p, grad

    return run


def case_vae(f: Fuzz, dtype):
    shape = f.shape()
    mu = f.values(shape, dtype, 1.0, f.chance(0.2)).requires_grad_(True)
    lv = (f.values(shape, dtype, 1.0) * 0.5).requires_grad_(True)
    noise = f.pick([None, None, f.values(shape, dtype)])
    kw = dict(reduction=f.pick(["batchmean", "sum", "none"]), free_bits=f.pick([None, None, 0.05]),
              logvar_clamp=f.pick([None, (-2.0, 1.0), (-30.0, 20.0)]), seed=int(f.rng.integers(0, 2**63)), offset=5)
    full = f.chance(0.8)

    def run():
        if not full:
            z = reparameterize(mu, lv, noise=noise, seed=kw["seed"], offset=5)
            outs = (z,)
            loss = z.float().sum() if z.numel() else None
        else:
            z, kl = reparameterize_kl(mu, lv, noise=noise, **kw)
            outs = (z, kl)
            loss = (z.float() * 0.3).sum() + kl.float().sum() if z.numel() else None
        if loss is None:
            return outs
        return outs + torch.autograd.grad(loss, (mu, lv))

    return run


OPS = {"diffusion": case_diffusion, "random": case_random, "interpolate": case_interpolate,
       "norm_penalty": case_norm_penalty, "vae": case_vae}


@pytest.mark.parametrize("backend_device", backend_device_params(PAIRS), indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_fuzz_against_the_reference(backend_device, op):
    backend, device = backend_device
    f = Fuzz(seed=sum(map(ord, op + backend)), device=device)
    for i in range(CASES_PER_OP[backend]):
        dtype = f.pick(DTYPES)
        case = OPS[op](f, dtype)
        _check(case, backend, dtype, f"{op} case {i} ({dtype}) on {backend}")


@pytest.mark.parametrize("backend_device", backend_device_params(PAIRS), indirect=True)
def test_nan_and_inf_positions_match_the_reference(backend_device):
    """NaN/inf at random positions of every input of every op: the NaN mask (and the infinities) of the
    result equal the reference's -- e.g. a NaN in x0 under dynamic thresholding makes the whole sample NaN
    (torch.quantile's NaN), not one element."""
    backend, device = backend_device
    f = Fuzz(seed=7, device=device)
    shape = (3, 2, 5, 7)
    for dtype in DTYPES:
        x, m = f.values(shape, dtype, 2.0, special=True), f.values(shape, dtype, 1.0, special=True)
        cases = {
            "ddim thresholding": lambda: ddim_step(x, m, 0.3, 0.6, thresholding=(0.9, 1.5), eta=0.5, seed=1),
            "ddim clip": lambda: ddim_step(x, m, 0.3, 0.6, clip_sample_range=1.0, use_clipped_model_output=True),
            "ddpm learned_range": lambda: ddpm_step(x, torch.cat([m, m], 1), 0.3, 0.6, variance_type="learned_range",
                                                    seed=2, return_pred_original=True),
            "ddpm v thresholding": lambda: ddpm_step(x, m, 0.3, 0.6, prediction_type="v_prediction",
                                                     thresholding=(0.5, 3.0), seed=3),
            "interpolate": lambda: interpolate(x, m, seed=4),
            "norm penalty": lambda: gradient_norm_penalty(m.flatten(1), mode="one-sided"),
            "vae": lambda: reparameterize_kl(x.flatten(1), (m * 0.1).flatten(1), seed=5, free_bits=0.1,
                                             logvar_clamp=(-3.0, 3.0), reduction="none"),
        }
        for name, case in cases.items():
            _check(case, backend, dtype, f"{name} ({dtype}) on {backend}")
