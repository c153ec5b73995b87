"""Autograd of genfast.ops.ddim_step / ddpm_step: gradcheck in float64 on the reference path, every backend's
gradients against the reference's over the option matrix (prediction types, clipping, thresholding, guidance,
variance types, noise from a tensor and from the stream, per-sample alphas with and without gradients),
fp16/bf16, odd sizes, the backward op's opcheck, double backward, torch.compile, torch.func (grad, vmap) and
a DDIM sampling loop differentiated end to end."""
import itertools

import pytest
import torch

import genfast
from genfast.ops import ddim_step, ddpm_step
from genfast.ops import diffusion as diffusion_ops
from genfast.ops.diffusion import VARIANCE_TYPES, diffusion_step_backward_op, diffusion_step_op
from tolerances import TOL

PRED = ["epsilon", "sample", "v_prediction"]
THRESH = (0.9, 2.0)
ALPHAS = ["float", "0dim", "B", "Bgrad"]  # Bgrad: per-sample alpha tensors that require grad


def _close(actual, expected, dtype, scale, msg):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol * scale, atol=atol * scale,
                               equal_nan=True, msg=lambda m: f"{msg}\n{m}")


def _ddim_cases():
    return [("ddim", dict(eta=eta, prediction_type=pred, clip_sample_range=clip, thresholding=thresh,
                          use_clipped_model_output=ucm, guidance_scale=guid), alph, src)
            for pred, clip, thresh, eta, ucm, guid, alph, src in itertools.product(
                PRED, [None, 1.5], [None, THRESH], [0.0, 0.7], [False, True], [None, 3.0], ALPHAS, ["stream", "tensor"])]


def _ddpm_cases():
    return [("ddpm", dict(variance_type=vt, prediction_type=pred, clip_sample_range=clip, thresholding=thresh,
                          add_noise=an, guidance_scale=guid), alph, src)
            for pred, clip, thresh, vt, an, guid, alph, src in itertools.product(
                PRED, [None, 1.5], [None, THRESH], list(VARIANCE_TYPES), [None, True], [None, 2.0], ALPHAS,
                ["stream", "tensor"])]


def _inputs(kind, kw, alph, src, B, shape, dtype, device, gen, safe_alphas=False):
    """Leaf tensors (requiring grad where the op is differentiable) and the call's keyword arguments."""
    C = shape[0]
    learned = kind == "ddpm" and kw["variance_type"].startswith("learned")
    mshape = (B, 2 * C if learned else C) + tuple(shape[1:])
    x = torch.randn((B,) + tuple(shape), generator=gen) * 2
    m = torch.randn(mshape, generator=gen)
    c = torch.randn(mshape, generator=gen)
    if kind == "ddpm" and kw["variance_type"] == "learned":  # a variance: positive, away from 0
        m[:, C:] = m[:, C:].abs() * 0.1 + 0.02
        c[:, C:] = c[:, C:].abs() * 0.1 + 0.02
    if kind == "ddpm" and kw["variance_type"] == "learned_range":  # the interpolation weight's range, [-1, 1]
        m[:, C:] = torch.tanh(m[:, C:])
        c[:, C:] = torch.tanh(c[:, C:])
    z = torch.randn((B,) + tuple(shape), generator=gen)

    def leaf(t):
        return t.to(dtype).to(device).requires_grad_()

    x, m, c, z = leaf(x), leaf(m), leaf(c), leaf(z)
    if alph == "float":
        at, ap = 0.3, 0.6
    elif alph == "0dim":
        at, ap = torch.tensor(0.3, device=device), torch.tensor(0.6, device=device)
    else:
        at = (torch.rand(B, generator=gen) * 0.5 + 0.1).to(device)
        last = 0.95 if safe_alphas else 1.0  # alpha_prev = 1 has an infinite d/d alpha_prev in DDIM
        ap = torch.tensor(([0.7, last, 0.8, 0.9] * B)[:B], device=device)
        if alph == "Bgrad":
            at, ap = at.requires_grad_(), ap.requires_grad_()
    leaves = {"sample": x, "model": m, "noise": z}
    if kw.get("guidance_scale") is not None:
        leaves["cond"] = c
    if alph in ("0dim", "Bgrad") and isinstance(at, torch.Tensor):
        if alph == "0dim":
            at, ap = at.requires_grad_(), ap.requires_grad_()
        leaves["alpha_t"], leaves["alpha_prev"] = at, ap
    extra = dict(noise=z) if src == "tensor" else dict(seed=11, offset=5)
    if src != "tensor":
        del leaves["noise"]
    return leaves, at, ap, extra


def _step(kind, leaves, at, ap, kw, extra):
    f = ddim_step if kind == "ddim" else ddpm_step
    mo = (leaves["model"], leaves["cond"]) if "cond" in leaves else leaves["model"]
    return f(leaves["sample"], mo, at, ap, return_pred_original=True, **kw, **extra)


def _grads(backend, kind, leaves, at, ap, kw, extra, w_prev, w_x0, cast=None):
    """Gradients of sum(prev * w_prev) + sum(x0 * w_x0) w.r.t. every leaf, on `backend` (cast: the dtype
    the leaves are converted to first, e.g. float64 for the truth)."""
    if cast is not None:
        leaves = {k: v.detach().to(cast).requires_grad_() if k not in ("alpha_t", "alpha_prev") else v
                  for k, v in leaves.items()}
        if "alpha_t" in leaves:
            at, ap = leaves["alpha_t"], leaves["alpha_prev"]
        if "noise" in leaves:
            extra = dict(extra, noise=leaves["noise"])
    with genfast.use_backend(backend):
        prev, x0 = _step(kind, leaves, at, ap, kw, extra)
    loss = (prev.double() * w_prev.double()).sum() + (x0.double() * w_x0.double()).sum()
    names = sorted(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(names, grads)}


def _check_case(backend, device, kind, kw, alph, src, dtype=torch.float32, B=3, shape=(3, 5, 7), scale=8.0):
    gen = torch.Generator().manual_seed(hash((kind, str(kw), alph, src)) % 2**31)
    leaves, at, ap, extra = _inputs(kind, kw, alph, src, B, shape, dtype, device, gen)
    w_prev = torch.randn((B,) + tuple(shape), generator=gen).to(dtype).to(device)
    w_x0 = torch.randn((B,) + tuple(shape), generator=gen).to(dtype).to(device)
    got = _grads(backend, kind, leaves, at, ap, kw, extra, w_prev, w_x0)
    if dtype == torch.float32:
        want = _grads("reference", kind, leaves, at, ap, kw, extra, w_prev, w_x0)
    else:  # the truth: float64 from the same (rounded) inputs
        want = _grads("reference", kind, leaves, at, ap, kw, extra, w_prev, w_x0, cast=torch.float64)
    for k in want:
        assert got[k].dtype == leaves[k].dtype and got[k].shape == leaves[k].shape, k
        tol_dtype = dtype if k not in ("alpha_t", "alpha_prev") else torch.float32
        _close(got[k], want[k], tol_dtype, scale, f"{backend} {kind} {kw} {alph} {src}: d/d{k}")


# ---------------------------------------------------------------------------------------------
# The reference path: gradcheck in float64 (the analytic backward, and the vjp for thresholding and
# alpha tensors), against finite differences of the forward.
# ---------------------------------------------------------------------------------------------
GRADCHECK_CASES = [
    ("ddim", dict(eta=0.7, prediction_type="epsilon"), "float", "tensor"),
    ("ddim", dict(eta=0.7, prediction_type="sample", clip_sample_range=1.5, guidance_scale=3.0), "B", "stream"),
    ("ddim", dict(eta=0.3, prediction_type="v_prediction", use_clipped_model_output=True, clip_sample_range=1.5),
     "0dim", "tensor"),
    ("ddim", dict(eta=0.0, prediction_type="sample", use_clipped_model_output=True), "Bgrad", "stream"),
    ("ddim", dict(eta=0.7, prediction_type="epsilon", thresholding=THRESH, guidance_scale=2.0), "Bgrad", "tensor"),
    ("ddpm", dict(variance_type="fixed_small", prediction_type="epsilon", clip_sample_range=1.5), "B", "tensor"),
    ("ddpm", dict(variance_type="fixed_small_log", prediction_type="v_prediction", add_noise=True), "Bgrad",
     "stream"),
    ("ddpm", dict(variance_type="fixed_large", prediction_type="sample", guidance_scale=2.0), "0dim", "tensor"),
    ("ddpm", dict(variance_type="learned", prediction_type="epsilon", guidance_scale=2.0), "B", "tensor"),
    ("ddpm", dict(variance_type="learned", prediction_type="v_prediction"), "float", "stream"),
    ("ddpm", dict(variance_type="learned_range", prediction_type="sample", guidance_scale=1.5), "B", "stream"),
    ("ddpm", dict(variance_type="learned_range", prediction_type="epsilon", thresholding=THRESH), "Bgrad",
     "tensor"),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{c[0]}-{'-'.join(map(str, c[1].values()))}-{c[2]}-{c[3]}")
def test_gradcheck_reference_float64(case):
    kind, kw, alph, src = case
    gen = torch.Generator().manual_seed(7)
    leaves, at, ap, extra = _inputs(kind, kw, alph, src, 2, (2, 3, 3), torch.float64, "cpu", gen, safe_alphas=True)
    names = sorted(leaves)
    if alph in ("0dim", "Bgrad"):  # alpha tensors are float32 inside the op: check them separately below
        names = [k for k in names if k not in ("alpha_t", "alpha_prev")]

    def fn(*tensors):
        d = dict(leaves, **dict(zip(names, tensors)))
        e = dict(extra, noise=d["noise"]) if "noise" in d else extra
        return _step(kind, d, at, ap, kw, e)

    with genfast.use_backend("reference"):
        assert torch.autograd.gradcheck(fn, [leaves[k] for k in names], eps=1e-6, atol=1e-6, rtol=1e-5)
    if alph in ("0dim", "Bgrad"):  # d/d alpha in float32 arithmetic: against central differences in float64
        x = {k: v.detach() for k, v in leaves.items()}
        e = dict(extra, noise=x["noise"]) if "noise" in x else extra
        for name in ("alpha_t", "alpha_prev"):
            alpha = leaves[name]
            with genfast.use_backend("reference"):
                prev = _step(kind, dict(x, **{name: alpha}), *((alpha, ap) if name == "alpha_t" else (at, alpha)),
                             kw, e)[0]
                (g,) = torch.autograd.grad(prev.sum(), [alpha])
                h = 1e-3
                num = []
                for i in range(alpha.numel()):
                    vals = []
                    for sign in (1, -1):
                        a2 = alpha.detach().clone().reshape(-1)
                        a2[i] += sign * h
                        a2 = a2.reshape(alpha.shape)
                        args = (a2, ap) if name == "alpha_t" else (at, a2)
                        vals.append(_step(kind, x, *args, kw, e)[0].double().sum())
                    num.append((vals[0] - vals[1]) / (2 * h))
            torch.testing.assert_close(g.double().reshape(-1), torch.stack(num).double(), rtol=2e-3, atol=2e-3)


def test_reference_backward_is_autograd_of_the_reference_formula():
    """The analytic reference backward equals torch autograd through the reference forward (plain torch ops)."""
    from genfast.ops.diffusion import StepArgs, _reference_step

    gen = torch.Generator().manual_seed(3)
    for kind, kw, alph, src in GRADCHECK_CASES:
        leaves, at, ap, extra = _inputs(kind, kw, alph, src, 2, (2, 3, 3), torch.float64, "cpu", gen, safe_alphas=True)
        w_prev, w_x0 = torch.randn(2, 2, 3, 3, dtype=torch.float64), torch.randn(2, 2, 3, 3, dtype=torch.float64)
        got = _grads("reference", kind, leaves, at, ap, kw, extra, w_prev, w_x0)
        # the same call's arguments, run through _reference_step under plain autograd
        seen = {}
        real_call = diffusion_ops._call

        def spy(a, x0_dtype):
            seen["a"] = a
            return real_call(a, x0_dtype)

        diffusion_ops._call = spy
        try:
            with genfast.use_backend("reference"):
                _step(kind, leaves, at, ap, kw, extra)
        finally:
            diffusion_ops._call = real_call
        a: StepArgs = seen["a"]
        prev, x0 = _reference_step(a._replace(want_x0=True))
        loss = (prev * w_prev).sum() + (x0 * w_x0).sum()
        names = sorted(leaves)
        want = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
        for k, g in zip(names, want):
            g = torch.zeros_like(leaves[k]) if g is None else g
            torch.testing.assert_close(got[k], g, rtol=1e-9, atol=1e-11, msg=f"{kind} {kw} {alph} {src}: d/d{k}")


# ---------------------------------------------------------------------------------------------
# Every backend against the reference's gradients.
# ---------------------------------------------------------------------------------------------
def _subset(cases, backend, device, full_stride, interp_stride):
    # the reference against itself only checks the routing (gradcheck covers its math): a few cases
    interpreted = (backend == "triton" and device == "cpu") or backend == "reference"
    return cases[::interp_stride if interpreted else full_stride]


def test_backend_grads_match_reference_ddim(backend_device):
    backend, device = backend_device
    for kind, kw, alph, src in _subset(_ddim_cases(), backend, device, 3, 29):
        _check_case(backend, device, kind, kw, alph, src)


def test_backend_grads_match_reference_ddpm(backend_device):
    backend, device = backend_device
    for kind, kw, alph, src in _subset(_ddpm_cases(), backend, device, 7, 61):
        _check_case(backend, device, kind, kw, alph, src)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backend_grads_half_precision(backend_device, dtype):
    backend, device = backend_device
    cases = [("ddim", dict(eta=0.7, prediction_type="epsilon", guidance_scale=3.0, clip_sample_range=1.5), "float",
              "stream"),
             ("ddim", dict(eta=0.5, prediction_type="v_prediction", use_clipped_model_output=True), "B", "tensor"),
             ("ddpm", dict(variance_type="learned_range", prediction_type="sample", guidance_scale=2.0), "B",
              "stream"),
             ("ddpm", dict(variance_type="learned", prediction_type="epsilon"), "0dim", "tensor"),
             ("ddpm", dict(variance_type="fixed_small", prediction_type="epsilon", thresholding=THRESH), "float",
              "tensor")]
    for kind, kw, alph, src in cases:
        _check_case(backend, device, kind, kw, alph, src, dtype=dtype, B=2, shape=(4, 8, 9), scale=4.0)


@pytest.mark.parametrize("B,shape", [(1, (1, 1, 1)), (3, (3, 7, 11)), (2, (5, 3)), (3, (2, 29, 37))])
def test_backend_grads_odd_sizes(backend_device, B, shape):
    """Sizes that are not multiples of a vector group, groups that cross samples, more than one CPU chunk."""
    backend, device = backend_device
    for kind, kw, alph, src in [("ddpm", dict(variance_type="learned", guidance_scale=1.5), "B", "stream"),
                                ("ddpm", dict(variance_type="learned_range"), "float", "tensor"),
                                ("ddim", dict(eta=1.0, guidance_scale=2.0, clip_sample_range=1.0), "B", "stream")]:
        _check_case(backend, device, kind, kw, alph, src, B=B, shape=shape)


def test_backend_grads_half_vectorized_learned(backend_device):
    """fp16 with a learned variance and a sample size that is a multiple of the 16-byte group: the kernels'
    vector path for the 2C-channel layout (and the scalar path for the stream noise's tail)."""
    backend, device = backend_device
    _check_case(backend, device, "ddpm", dict(variance_type="learned_range", guidance_scale=2.0, add_noise=True),
                "B", "stream", dtype=torch.float16, B=3, shape=(2, 4, 8), scale=4.0)


def test_backend_grads_only_some_inputs(backend_device):
    """Gradients wanted for a subset of the inputs (the kernels skip the others) match the reference."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 3, 5, 5, generator=gen) * 2).to(device)
    m = torch.randn(2, 6, 5, 5, generator=gen).to(device)
    c = torch.randn(2, 6, 5, 5, generator=gen).to(device)
    z = torch.randn(2, 3, 5, 5, generator=gen).to(device)
    for wanted in (["x"], ["m"], ["c"], ["z"], ["m", "z"]):
        got = {}
        for be in (backend, "reference"):
            t = {k: v.clone().requires_grad_(k in wanted) for k, v in dict(x=x, m=m, c=c, z=z).items()}
            with genfast.use_backend(be):
                out = ddpm_step(t["x"], (t["m"], t["c"]), 0.3, 0.7, variance_type="learned_range", guidance_scale=2.0,
                                noise=t["z"], add_noise=True)
            got[be] = torch.autograd.grad((out * out).sum(), [t[k] for k in wanted])
        for g, r in zip(got[backend], got["reference"]):
            _close(g, r, torch.float32, 8.0, f"{backend} wanted={wanted}")


def test_backend_stream_noise_regenerated_not_saved(backend_device):
    """The learned-variance gradient needs the noise values: regenerated from (seed, offset) in the backward
    equals the gradient with the same noise given as a tensor; a seed tensor rewritten between forward and
    backward does not change it (copied at forward time)."""
    backend, device = backend_device
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 6, 6, generator=gen).to(device)
    m0 = torch.randn(2, 6, 6, 6, generator=gen)
    m0[:, 3:] = m0[:, 3:].abs() * 0.1 + 0.02
    m0 = m0.to(device)
    with genfast.use_backend(backend):
        z = genfast.ops.randn(x.shape, seed=1234, offset=9, device=device)
        m1 = m0.clone().requires_grad_()
        a = ddpm_step(x, m1, 0.3, 0.6, variance_type="learned", noise=z, add_noise=True)
        (ga,) = torch.autograd.grad(a.sum(), [m1])
        seed_t = torch.tensor([1234], dtype=torch.int64, device=device)
        m2 = m0.clone().requires_grad_()
        b = ddpm_step(x, m2, 0.3, 0.6, variance_type="learned", seed=seed_t, offset=9, add_noise=True)
        seed_t.fill_(99)
        (gb,) = torch.autograd.grad(b.sum(), [m2])
    _close(gb, ga, torch.float32, 4.0, f"{backend}: stream vs tensor noise")
    assert ga[:, 3:].abs().sum() > 0  # the variance channels do get a gradient


# ---------------------------------------------------------------------------------------------
# The fast path, double backward, opcheck, torch.compile, torch.func.
# ---------------------------------------------------------------------------------------------
def test_eager_fast_path_only_without_grad(monkeypatch):
    """Calls that need no gradient skip the dispatcher; calls that need one go through the custom op."""
    calls = []
    real = diffusion_ops.diffusion_step_op

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(diffusion_ops, "diffusion_step_op", counting)
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ddim_step(x, m, 0.4, 0.6)
    with torch.no_grad():
        ddim_step(x, m.requires_grad_(), 0.4, 0.6)
    assert calls == []
    out = ddim_step(x, m, 0.4, 0.6)
    assert calls == [1] and out.requires_grad


def test_double_backward_raises_once_differentiable():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    m = torch.randn(2, 3, 4, 4, requires_grad=True)
    for backend in ("reference", "cpu"):
        if not genfast.backends()[backend].available:
            continue
        with genfast.use_backend(backend):
            out = ddim_step(x, m, 0.4, 0.6, eta=0.5, seed=1)
        (g,) = torch.autograd.grad((out ** 2).sum(), [m], create_graph=True)
        with pytest.raises(RuntimeError, match="once-differentiable"):
            g.sum().backward()


def test_opcheck_backward_op(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 4, device=device)
    m = torch.randn(2, 3, 4, 4, device=device)
    m2 = torch.randn(2, 6, 4, 4, device=device).abs() + 0.1
    at = torch.tensor([0.3, 0.5], device=device)
    g = torch.randn(2, 3, 4, 4, device=device)
    z = torch.randn_like(x)
    args_list = [
        # grad_prev, grad_x0, kind, sample, model, cond, w, a_t, a_p, a_t_t, a_p_t, eta, pred, clip, thr, thr_max,
        # use_clipped, vt, mode, src, noise, seed, offset, seed_t, offset_t, backend, want sample/model/noise
        (g, g * 2, 0, x, m, None, 1.0, 0.4, 0.6, None, None, 0.5, 0, 1.0, None, 1.0, False, 0, 1, 2, None, 7, 0,
         None, None, backend, True, True, False),
        (g, None, 1, x, m2, m2 * 0.5, 2.0, 0.4, 0.6, at, None, 0.0, 2, None, None, 1.0, False, 5, 2, 2, None, 7, 3,
         None, None, backend, True, True, False),
        (g, None, 0, x, m, m * 2, 3.0, 0.2, 0.6, None, at, 1.0, 1, None, None, 1.0, True, 0, 1, 1, z, 0, 0, None,
         None, backend, False, True, True),
        (g, g, 1, x, m2, None, 1.0, 0.4, 0.6, at, at * 1.5, 0.0, 0, 0.5, None, 1.0, False, 4, 1, 1, z.half(), 0, 0,
         None, None, backend, True, True, True),
    ]
    for args in args_list:
        torch.library.opcheck(diffusion_step_backward_op, args)
    bad = list(args_list[0])
    bad[14] = 0.9  # thresholding: not elementwise, computed by the forward op's autograd (a vjp)
    with pytest.raises(ValueError, match="thresholding"):
        diffusion_step_backward_op(*bad)
    bad = list(args_list[0])
    bad[0] = g[:1]
    with pytest.raises(ValueError, match="grad_prev"):
        diffusion_step_backward_op(*bad)


def test_opcheck_forward_op_with_autograd(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    m = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    c = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    z = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    for args in [(0, x, m, c, 2.0, 0.4, 0.6, None, None, 0.5, 0, 1.0, None, 1.0, False, 0, 1, 1, z, 0, 0, None, None,
                  True, backend),
                 (1, x, m, None, 1.0, 0.4, 0.6, None, None, 0.0, 2, None, None, 1.0, False, 2, 1, 2, None, 5, 1, None,
                  None, False, backend)]:
        torch.library.opcheck(diffusion_step_op, args)


def test_torch_compile_fullgraph_forward_and_backward():
    x0 = torch.randn(2, 3, 4, 4)
    m0 = torch.randn(2, 3, 4, 4)

    def f(x, m):
        prev, x0 = ddim_step(x, m, 0.4, 0.6, eta=0.5, seed=3, clip_sample_range=1.0, return_pred_original=True)
        return (prev * prev).sum() + x0.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (compiled, f):
        x, m = x0.clone().requires_grad_(), m0.clone().requires_grad_()
        loss = fn(x, m)
        loss.backward()
        grads.append((loss.detach(), x.grad, m.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_torch_func_grad_and_vmap_of_grad(backend_device):
    backend, device = backend_device
    x = torch.randn(3, 2, 4, 4, device=device)
    m = torch.randn(3, 2, 4, 4, device=device)

    def loss(m_, x_):
        return (ddim_step(x_, m_, 0.4, 0.6, eta=0.5, noise=x_ * 0.5, clip_sample_range=1.5) ** 2).sum()

    with genfast.use_backend(backend):
        g_func = torch.func.grad(loss)(m, x)
        g_vmap = torch.func.vmap(torch.func.grad(loss))(m, x)  # per sample [1...] slices of the batch
        mm = m.clone().requires_grad_()
        (g_auto,) = torch.autograd.grad(loss(mm, x), [mm])
        per_sample = torch.stack([torch.autograd.grad(loss(mm[i], x[i]), [mm])[0][i] for i in range(3)])
    _close(g_func, g_auto, torch.float32, 2.0, "torch.func.grad")
    _close(g_vmap, per_sample, torch.float32, 2.0, "vmap(grad)")

    # the vjp path (thresholding, alpha tensors) under torch.func
    at = torch.tensor([0.3, 0.4, 0.5], device=device)

    def loss_thresh(m_, a_):
        return (ddim_step(x, m_, a_, 0.6, eta=0.5, seed=1, thresholding=(0.9, 2.0)) ** 2).sum()

    with genfast.use_backend(backend):
        gm, ga = torch.func.grad(loss_thresh, argnums=(0, 1))(m, at)
        mm, aa = m.clone().requires_grad_(), at.clone().requires_grad_()
        rm, ra = torch.autograd.grad(loss_thresh(mm, aa), [mm, aa])
    _close(gm, rm, torch.float32, 2.0, "torch.func.grad, thresholding")
    _close(ga, ra, torch.float32, 2.0, "torch.func.grad, alpha")


# ---------------------------------------------------------------------------------------------
# Training through the sampler: a DDIM loop differentiated end to end, cpu against the reference.
# ---------------------------------------------------------------------------------------------
class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.2)
            self.conv.bias.copy_(torch.randn(2, generator=gen) * 0.1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) * (1 + t.float().view(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("opts", [dict(eta=0.0), dict(eta=0.8, clip_sample_range=1.0),
                                  dict(eta=0.5, prediction_type="v_prediction", use_clipped_model_output=True)])
def test_sampler_loop_differentiable_cpu_matches_reference(opts):
    from genfast.samplers import NoiseSchedule, sample_ddim

    if not genfast.backends()["cpu"].available:
        pytest.skip(genfast.backends()["cpu"].reason)
    sched = NoiseSchedule.from_config(num_train_timesteps=100)
    x_init = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("cpu", "reference"):
        model = _TinyModel()
        x = x_init.clone().requires_grad_()
        with genfast.use_backend(backend):
            out = sample_ddim(model, x, sched, steps=5, seed=4, progress=False, graph=False, **opts)
        loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum()
        loss.backward()
        results[backend] = [out.detach(), x.grad, model.conv.weight.grad, model.conv.bias.grad]
    for name, a, b in zip(["out", "x", "weight", "bias"], results["cpu"], results["reference"]):
        assert a is not None and a.abs().sum() > 0, name
        _close(a, b, torch.float32, 20.0, f"sampler loop: d/d{name}")


# The Triton backward's compiled code (sm_80/sm_90: no spills, 16-byte accesses) is checked with every other
# Triton kernel's by the codegen gate, tests/test_triton_codegen.py.
