"""The cpu backend's kernels (csrc/*_cpu.cpp) beyond the per-op reference comparisons: the accuracy of their
reductions (pairwise summation; a running fp32 sum over 10^6 terms is off by ~1e-4), NaN and inf where the
reference has them, and the same bits from every instruction-set level they dispatch to."""
import json
import os
import subprocess
import sys

import pytest
import torch

import genfast
from genfast.ops import ddim_step, ddpm_step, gradient_norm_penalty, interpolate, reparameterize_kl

pytestmark = pytest.mark.skipif(not genfast.backends()["cpu"].available, reason="the cpu backend is not built")

REL = 1e-6  # issue 15: reductions within 1e-6 relative of float64 at B = 10^6


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs() / want.abs()).max().item()


# ---------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["two-sided", "one-sided", "r1"])
def test_penalty_over_a_million_samples(mode):
    gen = torch.Generator().manual_seed(1)
    g = torch.rand(10**6, 1, generator=gen) * 2 + 0.5  # |g| in [0.5, 2.5): every term counts
    with genfast.use_backend("cpu"):
        got = gradient_norm_penalty(g, weight=10.0, center=1.0, mode=mode)
    with genfast.use_backend("reference"):
        want = gradient_norm_penalty(g.double(), weight=10.0, center=1.0, mode=mode)
    assert rel_err(got, want) < REL


def test_norms_of_long_rows():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(3, 2**21 + 13, generator=gen) + 0.3
    penalty, norms = torch.ops.genfast.gp_norm_penalty(g, 10.0, 1.0, 0, "cpu")
    want = g.double().pow(2).sum(1).sqrt()
    assert rel_err(norms, want) < REL
    assert rel_err(penalty, 10.0 * ((want - 1) ** 2).mean()) < REL


def _vae_sums(shape, seed, col_sums):
    """KL sums of mu = k / 1024 (|k| < 1024) and logvar 0: every KL term, mu^2 / 2 = k^2 / 2^21, is exact in
    fp32 (so is each step of the kernel's (mu^2 + 1 - 1 - 0) / 2), leaving only the summation's error; a
    running fp32 sum of them is off by ~1e-4 at 10^6 terms."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randint(-1023, 1024, shape, generator=gen).float() / 1024
    lv = torch.zeros(shape)
    _, rows, cols = torch.ops.genfast.vae_reparameterize(mu, lv, torch.zeros(shape), 0, 0, None, None, True, col_sums,
                                                         None, None, "cpu")
    kl = 0.5 * mu.double() ** 2
    return rows, cols, kl


def test_kl_sums_over_a_million_samples():
    rows, cols, kl = _vae_sums((10**6, 3), 4, col_sums=True)
    assert rel_err(cols, kl.sum(0)) < REL  # per latent element, over the batch (free bits)
    assert rel_err(rows, kl.sum(1)) < REL


def test_kl_sums_of_long_rows():
    rows, _, kl = _vae_sums((3, 2**21 + 5), 5, col_sums=False)
    assert rel_err(rows, kl.sum(1)) < REL


def test_sums_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(7, 300001, generator=gen)
    mu, lv = torch.randn(9, 100003, generator=gen), torch.randn(9, 100003, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((torch.ops.genfast.gp_norm_penalty(g, 10.0, 1.0, 0, "cpu"),
                            torch.ops.genfast.vae_reparameterize(mu, lv, None, 5, 0, None, None, True, True, None,
                                                                 None, "cpu")))
    finally:
        torch.set_num_threads(threads)
    flat = [[t for pair in r for t in pair] for r in results]
    for other in flat[1:]:
        assert all(torch.equal(a, b) for a, b in zip(flat[0], other))


# ---------------------------------------------------------------------------------------------
# NaN and inf where the reference has them
# ---------------------------------------------------------------------------------------------
def poisoned(shape, gen, fraction=0.01):
    """Normal values with NaN, +inf and -inf at random positions."""
    x = torch.randn(shape, generator=gen)
    flat = x.view(-1)
    k = max(3, int(fraction * flat.numel()))
    pos = torch.randperm(flat.numel(), generator=gen)[:k]
    flat[pos[0::3]] = float("nan")
    flat[pos[1::3]] = float("inf")
    flat[pos[2::3]] = float("-inf")
    return x


def assert_same_specials(got, want, what):
    got, want = got.double(), want.double()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    inf = want.isinf()
    assert torch.equal(got.isinf(), inf), f"{what}: inf positions differ"
    assert torch.equal(got[inf], want[inf]), f"{what}: inf signs differ"


def both(fn):
    with genfast.use_backend("cpu"):
        got = fn()
    with genfast.use_backend("reference"):
        want = fn()
    return got, want


def flat_outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("trial", range(3))
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_step_nan_and_inf_like_the_reference(kind, trial):
    gen = torch.Generator().manual_seed(100 + trial + (0 if kind == "ddim" else 50))
    shape = (4, 3, 9, 11)
    x, m, c, z = (poisoned(shape, gen) for _ in range(4))
    alpha_t = torch.rand(4, generator=gen) * 0.8 + 0.1
    alpha_prev = torch.clamp(alpha_t + 0.1, max=1.0)
    alpha_prev[1] = float("nan")  # a broken schedule entry: that sample is NaN everywhere
    for pred in ("epsilon", "sample", "v_prediction"):
        for opts in ({}, {"clip_sample_range": 1.0}, {"thresholding": (0.9, 1.5)}):
            for guided in (False, True):
                mo = (m, c) if guided else m
                gs = 2.0 if guided else None
                for alphas in ((0.3, 0.6), (alpha_t, alpha_prev)):
                    if kind == "ddim":
                        def call(uc=False):
                            return ddim_step(x, mo, *alphas, eta=0.8, noise=z, prediction_type=pred,
                                             guidance_scale=gs, use_clipped_model_output=uc,
                                             return_pred_original=True, **opts)
                        calls = [lambda: call(False), lambda: call(True)]
                    else:
                        calls = [lambda: ddpm_step(x, mo, *alphas, noise=z, prediction_type=pred, guidance_scale=gs,
                                                   return_pred_original=True, **opts)]
                    for fn in calls:
                        got, want = both(fn)
                        for i, (g, w) in enumerate(zip(got, want)):
                            assert_same_specials(g, w, f"{kind} {pred} {opts} guided={guided} output {i}")


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_nan_and_inf_like_the_reference(variance_type):
    gen = torch.Generator().manual_seed(7)
    x = poisoned((3, 2, 8, 8), gen)
    mo = torch.randn(3, 4, 8, 8, generator=gen) * 0.1
    mo[:, 2:] = mo[:, 2:].abs() if variance_type == "learned" else mo[:, 2:].clamp(-1, 1)
    mo = torch.where(poisoned((3, 4, 8, 8), gen).isfinite(), mo, poisoned((3, 4, 8, 8), gen))
    got, want = both(lambda: ddpm_step(x, mo, 0.3, 0.6, noise=poisoned((3, 2, 8, 8), torch.Generator().manual_seed(8)),
                                       variance_type=variance_type))
    assert_same_specials(got, want, variance_type)


def test_thresholding_with_a_nan_makes_the_whole_sample_nan():
    x = torch.randn(3, 2, 8, 8)
    m = torch.randn(3, 2, 8, 8)
    m[1, 0, 3, 4] = float("nan")
    with genfast.use_backend("cpu"):
        prev, x0 = ddim_step(x, m, 0.3, 0.6, thresholding=(0.995, 1.5), return_pred_original=True)
    assert prev[1].isnan().all() and x0[1].isnan().all()
    assert not prev[0].isnan().any() and not prev[2].isnan().any()


@pytest.mark.parametrize("trial", range(3))
def test_gradient_penalty_nan_and_inf_like_the_reference(trial):
    gen = torch.Generator().manual_seed(200 + trial)
    real, fake = poisoned((6, 3, 5, 7), gen), poisoned((6, 3, 5, 7), gen)
    alpha = torch.rand(6, generator=gen)
    alpha[2] = float("nan")
    for kwargs in ({"seed": 3}, {"alpha": alpha}):
        got, want = both(lambda: interpolate(real, fake, **kwargs))
        assert_same_specials(got, want, f"interpolate {list(kwargs)}")
    g = torch.randn(6, 3, 5, 7, generator=gen) * 0.1
    g[1, 0, 0, 0] = float("nan")
    g[3, 1, 2, 3] = float("inf")
    g[4] = 0.0  # a zero row: no gradient (not NaN), as torch's norm backward
    for mode in ("two-sided", "one-sided", "r1"):
        for weight_grad in (1.0, float("inf")):
            def fn():
                leaf = g.clone().requires_grad_(True)
                p = gradient_norm_penalty(leaf, mode=mode)
                return p.detach(), torch.autograd.grad(p, leaf, torch.tensor(weight_grad))[0]

            got, want = both(fn)
            for i, (a, b) in enumerate(zip(got, want)):
                assert_same_specials(a, b, f"penalty {mode} output {i}")


@pytest.mark.parametrize("trial", range(3))
def test_vae_nan_and_inf_like_the_reference(trial):
    gen = torch.Generator().manual_seed(300 + trial)
    mu, lv, noise = (poisoned((5, 37), gen, 0.03) for _ in range(3))
    gz = poisoned((5, 37), gen, 0.03)
    for clamp in (None, (-3.0, 2.0)):
        for free_bits in (None, 0.2):
            for with_gz in (True, False):
                def fn():
                    m, l_ = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
                    z, kl = reparameterize_kl(m, l_, noise=noise, logvar_clamp=clamp, free_bits=free_bits)
                    outs, grads = ((z, kl), (gz, torch.tensor(1.0))) if with_gz else ((kl,), (torch.tensor(1.0),))
                    return (z.detach(), kl.detach()) + torch.autograd.grad(outs, (m, l_), grads)

                got, want = both(fn)
                for i, (a, b) in enumerate(zip(got, want)):
                    assert_same_specials(a, b, f"vae clamp={clamp} free_bits={free_bits} grad_z={with_gz} output {i}")


def test_vae_backward_without_grad_z_keeps_inf():
    """Called without grad_z (only the KL is used), the z term is absent, not 0 * inf = NaN."""
    lv = torch.tensor([[0.5, float("inf"), float("-inf"), float("nan")]])
    mu = torch.tensor([[1.0, 2.0, float("inf"), 0.0]])
    rows = torch.ones(1)
    got = torch.ops.genfast.vae_reparameterize_backward(None, rows, None, mu, lv, None, 1, 0, None, None, None, None,
                                                        "cpu")
    want = torch.ops.genfast.vae_reparameterize_backward(None, rows, None, mu, lv, None, 1, 0, None, None, None, None,
                                                         "reference")
    for a, b in zip(got, want):
        assert_same_specials(a, b, "vae backward without grad_z")
    assert got[1][0, 1] == float("inf")


# ---------------------------------------------------------------------------------------------
# Instruction sets: AVX-512, AVX2 and baseline x86-64 copies of every kernel give the same bits
# ---------------------------------------------------------------------------------------------
_PROBE = r"""
import json, os, sys, torch, genfast
from genfast.ops import ddim_step, ddpm_step, gradient_norm_penalty, interpolate, rand, randn, reparameterize_kl
results = {}
for streaming in ("auto", "0", "1"):  # streaming stores by size (none here), never, always
  if streaming == "auto":
    os.environ.pop("GENFAST_CPU_STREAMING", None)
  else:
    os.environ["GENFAST_CPU_STREAMING"] = streaming
  gen = torch.Generator().manual_seed(0)
  out = results[streaming] = []
  def add(*ts):
    out.extend(t.detach().double().flatten().tolist() for t in ts)
  with genfast.use_backend("cpu"):
      for dt in (torch.float32, torch.float16, torch.bfloat16):
          x, m, c, z = (torch.randn(3, 5, 7, 9, generator=gen).to(dt) for _ in range(4))
          add(randn(1037, seed=5, offset=3, dtype=dt), rand(1037, seed=5, dtype=dt))
          add(*ddim_step(x, (m, c), 0.3, 0.6, eta=0.5, seed=4, guidance_scale=3.0, clip_sample_range=1.0,
                         return_pred_original=True))
          add(*ddim_step(x, m, 0.3, 0.6, eta=0.5, noise=z, prediction_type="v_prediction", thresholding=(0.9, 1.2),
                         use_clipped_model_output=True, return_pred_original=True))
          add(ddpm_step(x, m, torch.rand(3, generator=gen), 0.7, seed=2, prediction_type="sample"))
          add(interpolate(x, m, seed=1), gradient_norm_penalty(x))
          mu, lv = x.reshape(3, -1).clone().requires_grad_(True), m.reshape(3, -1).clone().requires_grad_(True)
          zz, kl = reparameterize_kl(mu, lv, seed=7, free_bits=0.1, logvar_clamp=(-2.0, 1.0))
          add(zz, kl, *torch.autograd.grad((zz, kl), (mu, lv), (c.reshape(3, -1), torch.tensor(1.0))))
json.dump(results, sys.stdout)
"""


def _probe(isa):
    env = dict(os.environ, GENFAST_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_instruction_set_and_store_kind_gives_the_same_bits():
    """AVX-512, AVX2 and baseline copies of every kernel (levels above the CPU's fall back), each with
    streaming stores by size, forced off and forced on (they are used for outputs larger than the LLC)."""
    results = {isa: _probe(isa) for isa in ("avx512", "avx2", "base")}
    want = results["avx512"]["auto"]
    assert len(want) > 30
    for isa, by_store in results.items():
        for streaming, got in by_store.items():
            assert got == want, (isa, streaming)
