"""ddim_step / ddpm_step accept what diffusers and PyTorch accept: mixed model-output/sample dtypes (the
result dtypes diffusers returns, computed in fp32), model outputs that broadcast against the sample, and
torch.func.vmap on every backend."""
import itertools
import warnings

import pytest
import torch

import genfast
from genfast.ops import ddim_step, ddpm_step
from tolerances import TOL, assert_close

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)

PRED = ["epsilon", "sample", "v_prediction"]
MIXED = [(torch.float32, torch.float16), (torch.float16, torch.float32), (torch.float16, torch.bfloat16),
         (torch.bfloat16, torch.float32)]


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def _ddim_sched(pred, **kw):
    s = diffusers.DDIMScheduler(prediction_type=pred, **dict(dict(clip_sample=False), **kw))
    s.set_timesteps(10)
    return s


def _ddpm_sched(pred, vt="fixed_small", **kw):
    s = diffusers.DDPMScheduler(prediction_type=pred, variance_type=vt, **dict(dict(clip_sample=False), **kw))
    s.set_timesteps(10)
    return s


def _ddim_alphas(s, t):
    prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
    return float(s.alphas_cumprod[t]), float(s.alphas_cumprod[prev_t]) if prev_t >= 0 else float(s.final_alpha_cumprod)


def _ddpm_alphas(s, t):
    prev_t = s.previous_timestep(t)
    return float(s.alphas_cumprod[t]), float(s.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0


# ---------------------------------------------------------------------------------------------
# Mixed dtypes: prev_sample in promote(sample, model_output), pred_original_sample likewise except for
# prediction_type="sample" (the model output's dtype), exactly as diffusers' steps return them.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,dtypes,clip", list(itertools.product(PRED, MIXED, [False, True])))
def test_mixed_dtypes_match_diffusers_ddim(pred, dtypes, clip):
    sample_dtype, model_dtype = dtypes
    s = _ddim_sched(pred, clip_sample=clip, clip_sample_range=1.5)
    t = s.timesteps[3].item()
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, 5, 7, generator=gen) * 2).to(sample_dtype)
    m = torch.randn(2, 3, 5, 7, generator=gen).to(model_dtype)
    z = torch.randn(2, 3, 5, 7, generator=gen).to(model_dtype)  # diffusers draws its noise in the model's dtype
    ref = s.step(m, t, x, eta=0.7, variance_noise=z)
    at, ap = _ddim_alphas(s, t)
    with genfast.use_backend("reference"):
        prev, x0 = ddim_step(x, m, at, ap, eta=0.7, prediction_type=pred, clip_sample_range=1.5 if clip else None,
                             noise=z, return_pred_original=True)
    assert prev.dtype == ref.prev_sample.dtype and x0.dtype == ref.pred_original_sample.dtype
    # diffusers computes partly in the half dtype, genfast in fp32: the half dtype's precision
    tol = TOL[torch.bfloat16 if torch.bfloat16 in dtypes else torch.float16][0] * 2
    assert _rel(prev, ref.prev_sample) <= tol and _rel(x0, ref.pred_original_sample) <= tol


@pytest.mark.parametrize("pred,dtypes,vt", list(itertools.product(PRED, MIXED[:2], ["fixed_small", "learned_range"])))
def test_mixed_dtypes_match_diffusers_ddpm(pred, dtypes, vt):
    sample_dtype, model_dtype = dtypes
    s = _ddpm_sched(pred, vt)
    t = s.timesteps[3].item()
    gen = torch.Generator().manual_seed(2)
    C = 3
    x = (torch.randn(2, C, 5, 7, generator=gen) * 2).to(sample_dtype)
    m = torch.randn(2, 2 * C if vt == "learned_range" else C, 5, 7, generator=gen).to(model_dtype)
    ref = s.step(m, t, x, generator=torch.Generator().manual_seed(5))
    z = torch.randn((2, C, 5, 7), generator=torch.Generator().manual_seed(5), dtype=model_dtype)
    at, ap = _ddpm_alphas(s, t)
    with genfast.use_backend("reference"):
        prev, x0 = ddpm_step(x, m, at, ap, variance_type=vt, prediction_type=pred, noise=z, add_noise=True,
                             return_pred_original=True)
    assert prev.dtype == ref.prev_sample.dtype and x0.dtype == ref.pred_original_sample.dtype
    assert _rel(prev, ref.prev_sample) <= 4e-3 and _rel(x0, ref.pred_original_sample) <= 4e-3


def test_backend_mixed_dtypes(backend_device):
    """Every backend: promoted result, computed in fp32 from the exact upcast inputs (so equal to the fp32
    step on them), and gradients in each input's own dtype."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(3)
    for (sd, md), pred in itertools.product(MIXED, ["epsilon", "sample"]):
        x = (torch.randn(2, 3, 6, 5, generator=gen) * 2).to(sd).to(device).requires_grad_()
        u = torch.randn(2, 3, 6, 5, generator=gen).to(md).to(device).requires_grad_()
        c = torch.randn(2, 3, 6, 5, generator=gen).to(md).to(device).requires_grad_()
        out_dtype = torch.promote_types(sd, md)
        with genfast.use_backend(backend):
            prev, x0 = ddim_step(x, (u, c), 0.3, 0.6, eta=0.5, seed=4, guidance_scale=2.0, prediction_type=pred,
                                 clip_sample_range=1.5, return_pred_original=True)
        with genfast.use_backend("reference"):
            prev_r, x0_r = ddim_step(x.detach().to(out_dtype), (u.detach().to(out_dtype), c.detach().to(out_dtype)),
                                     0.3, 0.6, eta=0.5, seed=4, guidance_scale=2.0, prediction_type=pred,
                                     clip_sample_range=1.5, return_pred_original=True)
        assert prev.dtype == out_dtype and x0.dtype == (md if pred == "sample" else out_dtype)
        assert_close(prev, prev_r, out_dtype, scale=4.0)
        assert_close(x0, x0_r, x0.dtype, scale=4.0)
        gx, gu, gc = torch.autograd.grad((prev.float() ** 2).sum() + x0.float().sum(), [x, u, c])
        assert (gx.dtype, gu.dtype, gc.dtype) == (sd, md, md)
        assert torch.isfinite(gu).all() and gu.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Broadcasting, as diffusers' formulas broadcast.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,case", list(itertools.product(PRED, ["model1", "sample1", "spatial"])))
def test_broadcast_matches_diffusers_ddim(pred, case):
    s = _ddim_sched(pred, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    t = s.timesteps[2].item()
    gen = torch.Generator().manual_seed(6)
    xshape, mshape = {"model1": ((3, 2, 5, 4), (1, 2, 5, 4)), "sample1": ((1, 2, 5, 4), (3, 2, 5, 4)),
                      "spatial": ((3, 2, 5, 4), (3, 2, 1, 4))}[case]
    x = torch.randn(xshape, generator=gen) * 2
    m = torch.randn(mshape, generator=gen)
    z = torch.randn(mshape, generator=gen)  # diffusers: noise of model_output's shape, broadcast
    ref = s.step(m, t, x, eta=0.7, variance_noise=z)
    at, ap = _ddim_alphas(s, t)
    if pred == "sample" and case == "spatial":
        # diffusers' quantile runs over the un-broadcast model output: refused with a clear error
        with pytest.raises(ValueError, match="thresholding"):
            ddim_step(x, m, at, ap, eta=0.7, prediction_type=pred, thresholding=(0.9, 2.0), noise=z)
        return
    with genfast.use_backend("reference"):
        prev, x0 = ddim_step(x, m, at, ap, eta=0.7, prediction_type=pred, thresholding=(0.9, 2.0), noise=z,
                             return_pred_original=True)
    assert prev.shape == ref.prev_sample.shape == torch.broadcast_shapes(xshape, mshape)
    assert _rel(prev, ref.prev_sample) <= 1e-5 and _rel(x0, ref.pred_original_sample) <= 1e-5


@pytest.mark.parametrize("vt", ["fixed_small", "learned", "learned_range"])
def test_broadcast_matches_diffusers_ddpm(vt):
    s = _ddpm_sched("epsilon", vt)
    t = s.timesteps[4].item()
    gen = torch.Generator().manual_seed(7)
    C = 2
    x = torch.randn(3, C, 4, 5, generator=gen) * 2
    m = torch.randn(1, 2 * C if vt.startswith("learned") else C, 4, 5, generator=gen)
    if vt == "learned":
        m[:, C:] = m[:, C:].abs() * 0.1
    ref = s.step(m, t, x, generator=torch.Generator().manual_seed(5))
    z = torch.randn((1, C, 4, 5), generator=torch.Generator().manual_seed(5))
    at, ap = _ddpm_alphas(s, t)
    with genfast.use_backend("reference"):
        prev = ddpm_step(x, m, at, ap, variance_type=vt, noise=z, add_noise=True)
    assert prev.shape == ref.prev_sample.shape == x.shape
    assert _rel(prev, ref.prev_sample) <= 1e-5


def test_backend_broadcast(backend_device):
    """Every backend against the reference on broadcast model outputs and noise, values and gradients
    (the gradient of a broadcast input sums over the dimensions it was broadcast along)."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(8)
    cases = [("ddim", (3, 2, 5, 3), (1, 2, 5, 3), (1, 2, 5, 3), dict(eta=0.6, guidance_scale=2.0)),
             ("ddim", (1, 2, 5, 3), (4, 2, 5, 3), None, dict(eta=0.6, clip_sample_range=1.0)),
             ("ddpm", (3, 2, 5, 3), (1, 4, 5, 3), (5, 3), dict(variance_type="learned_range", add_noise=True)),
             ("ddpm", (3, 2, 5, 3), (3, 2, 1, 3), None, dict(thresholding=(0.9, 2.0)))]
    for kind, xshape, mshape, zshape, kw in cases:
        leaves = {"x": torch.randn(xshape, generator=gen) * 2, "u": torch.randn(mshape, generator=gen),
                  "c": torch.randn(mshape, generator=gen)}
        if zshape is not None:
            leaves["z"] = torch.randn(zshape, generator=gen)
        got = {}
        for be in (backend, "reference"):
            t = {k: v.to(device).requires_grad_() for k, v in leaves.items()}
            mo = (t["u"], t["c"]) if "guidance_scale" in kw else t["u"]
            extra = dict(noise=t["z"]) if "z" in t else dict(seed=3)
            f = ddim_step if kind == "ddim" else ddpm_step
            with genfast.use_backend(be):
                out = f(t["x"], mo, 0.3, 0.7, **kw, **extra)
            used = [k for k in t if k != "c" or "guidance_scale" in kw]
            got[be] = (out, torch.autograd.grad((out ** 2).sum(), [t[k] for k in used]))
        out, grads = got[backend]
        assert out.shape == torch.broadcast_shapes(xshape, (mshape[0], xshape[1]) + mshape[2:])
        assert_close(out, got["reference"][0], scale=4.0, msg=f"{backend} {kind} {kw}")
        for g, r in zip(grads, got["reference"][1]):
            assert_close(g, r, scale=8.0, msg=f"{backend} {kind} {kw} (grad)")


def test_broadcast_bad_shapes():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="model_output"):
        ddim_step(x, torch.randn(2, 3, 4, 5), 0.5, 0.6)
    with pytest.raises(ValueError, match="model_output"):
        ddpm_step(x, torch.randn(1, 5, 4, 4), 0.5, 0.6, variance_type="learned")  # needs 2C channels
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, torch.randn(1, 3, 4, 4), 0.5, 0.6, eta=1.0, noise=torch.randn(4, 3, 4, 4))


# ---------------------------------------------------------------------------------------------
# torch.func.vmap over the ops: the vmapped dimension folded into the batch, or per slice (stream noise,
# vmapped seeds): the result equals a loop over the slices.
# ---------------------------------------------------------------------------------------------
def test_backend_vmap(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(9)
    V, B = 3, 2

    def rnd(*shape):
        return torch.randn(shape, generator=gen).to(device)

    xs, ms, cs, zs = rnd(V, B, 3, 4, 5) * 2, rnd(V, B, 3, 4, 5), rnd(V, B, 3, 4, 5), rnd(V, B, 3, 4, 5)
    ats = (torch.rand(V, B, generator=gen) * 0.5 + 0.1).to(device)
    seeds = torch.tensor([[5], [6], [7]], dtype=torch.int64, device=device)
    ap = torch.tensor([0.7, 0.9], device=device)
    cases = [
        # (function of one slice, its vmapped arguments, in_dims)
        (lambda x, m, z, a: ddim_step(x, m, a, ap, eta=0.5, noise=z, thresholding=(0.9, 2.0)),
         (xs, ms, zs, ats), 0),
        (lambda x, u, c: ddim_step(x, (u, c), 0.3, 0.6, eta=0.5, seed=5, guidance_scale=2.0,
                                   return_pred_original=True), (xs, ms, cs), 0),
        (lambda x, s: ddpm_step(x, ms[0], 0.3, 0.6, seed=s, add_noise=True), (xs, seeds), 0),
        (lambda x, m: ddpm_step(x, torch.cat([m, m.abs() * 0.1], dim=1), 0.3, 0.6, variance_type="learned",
                                noise=zs[0], clip_sample_range=1.0), (xs, ms), 0),
        (lambda m: ddim_step(xs[0], m, 0.4, 0.6), (ms.movedim(0, 2),), 2),
    ]
    for i, (fn, args, in_dims) in enumerate(cases):
        with genfast.use_backend(backend):
            got = torch.func.vmap(fn, in_dims=in_dims)(*args)
            loop = [fn(*[a.select(in_dims, v) for a in args]) for v in range(V)]
        if isinstance(got, tuple):
            for k in range(len(got)):
                assert_close(got[k], torch.stack([r[k] for r in loop]), scale=2.0, msg=f"{backend} case {i}[{k}]")
        else:
            assert_close(got, torch.stack(loop), scale=2.0, msg=f"{backend} case {i}")
