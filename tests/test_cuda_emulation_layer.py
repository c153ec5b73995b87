"""The CUDA kernels (kernels/*.cu) executed on the CPU by genfast._C_emulated, and the execution layer's checks.

Every *_cuda function of the emulated module is called directly (host pointers of CPU tensors, stream 0,
device 0) and compared with plain-torch float64 references or genfast's reference backend: all kernels,
fp32/fp16/bf16, odd and prime sizes, sizes on both sides of the vector group / block / grid-pass
boundaries, storage offsets that break 16-byte alignment, seeds and offsets read through pointers, and
shuffled block orders. The layer's own checks are tested with small kernels planted with bugs
(kernels/host_emulation/selftest_kernels.cu). Skipped when the emulated module is not built
(GENFAST_CUDA_EMULATION=1 pip install -e ., or cmake -DGENFAST_CUDA_EMULATION=ON).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import genfast
import genfast.ops
from tolerances import TOL

try:
    from genfast import _C_emulated as E  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - depends on the build
    pytestmark = pytest.mark.skip(reason=f"genfast._C_emulated is not built ({exc}); build it with "
                                  "GENFAST_CUDA_EMULATION=1 pip install -e . or cmake -DGENFAST_CUDA_EMULATION=ON")
    E = None

CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
HALF_TYPES = (torch.float16, torch.bfloat16)
U64 = (1 << 64) - 1


_GUARD = 16  # elements of guard band after every buffer a kernel gets (memcheck without ASan)
_SENTINEL = -12345.0  # exact in every dtype
_guarded: list = []


def _buffer(n, dtype, misaligned=False, fill=None):
    """A flat tensor of n elements; misaligned: its data pointer is 1 element past a 16-byte boundary.
    Guard bands before and after hold a sentinel; every test checks them afterwards (out-of-bounds writes)."""
    base = torch.full((n + 2 * _GUARD,), _SENTINEL, dtype=dtype)
    start = _GUARD + (1 if misaligned else 0)
    t = base[start:start + n]
    if fill is not None:
        t.copy_(fill.reshape(-1)[:n].to(dtype))
    assert (t.data_ptr() % 16 != 0) == misaligned
    _guarded.append((base, start, n))
    return t


def _like(src, misaligned=False):
    return _buffer(src.numel(), src.dtype, misaligned, src).view(src.shape)


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol * scale, atol=atol * scale)


def _reference(fn, *args, **kwargs):
    with genfast.use_backend("reference"):
        return fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def _in_order():
    E.set_block_order_seed(0)
    E.reset_launch_counts()
    _guarded.clear()
    yield
    E.set_block_order_seed(0)
    for base, start, n in _guarded:
        head, tail = base[:start], base[start + n:]
        assert bool((head == _SENTINEL).all()) and bool((tail == _SENTINEL).all()), \
            f"a kernel wrote outside its {n}-element buffer (guard band overwritten)"
    _guarded.clear()


# ------------------------------------------------------------------------------------------------------
# The layer itself
# ------------------------------------------------------------------------------------------------------
def test_module_contract():
    assert E.emulation is True and E.with_cuda is True
    assert isinstance(E.with_sanitizers, bool) and isinstance(E.with_race_check, bool)
    assert E.cuda_device_count() == 1 and E.cuda_runtime_version() >= 12000
    for name in ("random_fill_cuda", "diffusion_step_cuda", "gp_interpolate_cuda", "gp_norm_penalty_cuda",
                 "gp_norm_penalty_backward_cuda", "vae_forward_cuda", "vae_backward_cuda", "vae_partials_shape_cuda",
                 "launch_counts", "reset_launch_counts", "set_block_order_seed"):
        assert callable(getattr(E, name)), name
    assert issubclass(E.KernelFault, RuntimeError)
    if os.environ.get("GENFAST_EXPECT_SANITIZERS") == "1":  # tools/emulation_sanitizers.py
        assert E.with_sanitizers and not E.with_race_check, E.__file__


def test_indices_of_a_3d_launch():
    out = torch.full((12 * 24,), -1.0)
    E._selftest("indices", 0, out.data_ptr(), 0)
    i = torch.arange(12 * 24, dtype=torch.float64)
    b, t = i // 24, i % 24
    torch.testing.assert_close(out.double(), b * 1e6 + t * 1e3 + i, rtol=1e-7, atol=0)


def test_barriers_and_shuffles_compute_a_block_sum():
    x = torch.randn(3 * 200)
    out = torch.zeros(3)
    E._selftest("block_sum", x.data_ptr(), out.data_ptr(), 200)
    torch.testing.assert_close(out.double(), x.view(3, 200).double().sum(1), rtol=1e-5, atol=1e-5)


def test_shuffle_semantics():
    x = torch.randn(64)
    x[::3] = -x[::3].abs()
    out = torch.zeros(256)
    E._selftest("shuffle", x.data_ptr(), out.data_ptr(), 0)
    got = out.view(64, 4)
    lane = torch.arange(64) % 32
    warp_sum = x.view(2, 32).double().sum(1).repeat_interleave(32)
    torch.testing.assert_close(got[:, 0].double(), warp_sum, rtol=1e-5, atol=1e-5)
    up_src = torch.where(lane % 16 >= 3, torch.arange(64) - 3, torch.arange(64))
    assert torch.equal(got[:, 1], x[up_src])
    idx_src = torch.arange(64) - lane % 8 + 5
    assert torch.equal(got[:, 2], x[idx_src])
    ballots = (x > 0).view(2, 32).sum(1).float().repeat_interleave(32)
    assert torch.equal(got[:, 3], ballots)


@pytest.mark.parametrize("case, pattern", [
    ("divergent_barrier", r"divergent __syncthreads .*threads 0-39 wait at selftest_kernels.cu:\d+ but threads 40-63 "
                          r"exited.*divergent_barrier_kernel"),
    ("split_barrier", r"divergent __syncthreads .*two different barriers"),
    ("shuffle_inactive_source", r"__shfl_down_sync\(mask 0xffff\) reads lane 16, which is not in the mask"),
    ("shuffle_exited_lane", r"threads 0-15 wait in __shfl_xor_sync\(mask 0xffffffff\) for threads 16-31"),
])
def test_synccheck_reports(case, pattern):
    x = torch.randn(64)
    out = torch.zeros(64)
    with pytest.raises(E.KernelFault, match=pattern):
        E._selftest(case, x.data_ptr(), out.data_ptr(), 0)


@pytest.mark.parametrize("case, pattern", [
    ("block_sum_race", r"shared-memory race .*thread 32 .* writes shared byte .* thread 0 read"),
    ("neighbour_race", r"shared-memory race .*reads shared byte .*wrote since the __syncthreads at "
                       r"selftest_kernels.cu:\d+"),
])
def test_racecheck_reports(case, pattern):
    if not E.with_race_check:
        pytest.skip("this build has no race-check instrumentation (the AddressSanitizer variant)")
    x = torch.randn(3 * 200)
    out = torch.zeros(256)
    with pytest.raises(E.KernelFault, match=pattern):
        E._selftest(case, x.data_ptr(), out.data_ptr(), 200)


def test_misaligned_vector_access_is_reported():
    x = torch.randn(64)
    out = torch.zeros(64)
    E._selftest("vector_copy", x.data_ptr(), out.data_ptr(), 0)  # aligned: a plain copy
    assert torch.equal(out[:32], x[:32])
    with pytest.raises(E.KernelFault, match=r"misaligned 16-byte vector load at 0x[0-9a-f]+ \(address % 16 = 4\)"):
        E._selftest("vector_copy", x.data_ptr(), out.data_ptr(), 1)


def test_out_of_bounds_read_is_reported_by_asan():
    """In the sanitizer build (tools/emulation_sanitizers.py), a kernel reading one element past a tensor
    is an AddressSanitizer report; run in a child process, which the report ends."""
    x, out = torch.randn(33), torch.zeros(33)
    E._selftest("copy", x.data_ptr(), out.data_ptr(), 33)  # in bounds: a plain copy
    assert torch.equal(out, x)
    if not E.with_sanitizers:
        pytest.skip("bounds are checked by the AddressSanitizer build (tools/emulation_sanitizers.py)")
    code = ("import torch; from genfast import _C_emulated as E; x = torch.randn(32); out = torch.zeros(64); "
            "E._selftest('copy', x.data_ptr(), out.data_ptr(), 33)")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")  # the report on stderr, not in the run's log file
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "heap-buffer-overflow" in proc.stderr and "copy_kernel" in proc.stderr, proc.stderr[-2000:]


def test_invalid_launch_configuration_is_a_cuda_error():
    out = torch.zeros(8)
    with pytest.raises(RuntimeError, match="invalid configuration"):
        E._selftest("too_many_threads", 0, out.data_ptr(), 0)


def test_block_order_seed_shuffles_blocks():
    n = 40
    orders = []
    for seed in (0, 0, 7, 8):
        E.set_block_order_seed(seed)
        out = torch.full((n,), -1.0)
        counter = torch.zeros(1, dtype=torch.int32)
        E._selftest("block_order", 0, out.data_ptr(), n, counter.data_ptr())
        assert sorted(out.tolist()) == list(range(n)) and counter.item() == n
        orders.append(out.tolist())
    assert orders[0] == orders[1] == list(range(n))
    assert orders[2] != orders[0] and orders[3] != orders[0] and orders[2] != orders[3]
    assert E.launch_counts() == {"block_order_kernel": 4}


# ------------------------------------------------------------------------------------------------------
# random_fill_cuda: the stream's bits against genfast's reference backend
# ------------------------------------------------------------------------------------------------------
def _fill(n, dtype, seed, offset, normal, misaligned=False, via_pointers=False):
    out = _buffer(n, dtype, misaligned)
    signed = lambda v: v - (1 << 64) if v >= 1 << 63 else v  # noqa: E731  (int64 tensors hold the bits)
    seed_t = torch.tensor([signed(seed)], dtype=torch.int64)
    offset_t = torch.tensor([signed(offset)], dtype=torch.int64)
    if via_pointers:  # the values passed directly are wrong: the kernel must read the pointers
        E.random_fill_cuda(out.data_ptr(), n, CODES[dtype], 0, 99, seed_t.data_ptr(), offset_t.data_ptr(), normal, 0, 0)
    else:
        E.random_fill_cuda(out.data_ptr(), n, CODES[dtype], seed & U64, offset & U64, 0, 0, normal, 0, 0)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 8, 17, 1021, 2048 * 8 + 5, 65536 + 13])
def test_random_stream_matches_reference(dtype, n):
    seed, offset = 1234567891011 + n, 3 + n
    for normal in (False, True):
        misaligned = n % 2 == 1
        got = _fill(n, dtype, seed, offset, normal, misaligned)
        ref = _reference(genfast.ops.randn if normal else genfast.ops.rand, (n,), seed=seed, offset=offset, dtype=torch.float32)
        if normal:
            expected = ref.to(dtype)
            if dtype in HALF_TYPES:  # a few-ulp fp32 difference may round to the neighbouring half value
                _close(got, expected, dtype)
            else:
                torch.testing.assert_close(got.double(), expected.double(), rtol=2e-6, atol=2e-6)
        else:
            assert torch.equal(got, ref.to(dtype)), "uniform bits must be identical on every backend"


@pytest.mark.parametrize("seed, offset", [(1, 1), (2**64 - 5, 2**40 + 3), (2**63 - 1, 2**64 - 1)])
def test_random_seed_and_offset_through_pointers(seed, offset):
    n = 777
    got = _fill(n, torch.float32, seed, offset, False, via_pointers=True)
    ref = _reference(genfast.ops.rand, (n,), seed=seed, offset=offset)
    assert torch.equal(got, ref)
    assert E.launch_counts() == {"random_fill_kernel": 1}


# ------------------------------------------------------------------------------------------------------
# diffusion_step_cuda against the reference backend (genfast.ops.ddim_step / ddpm_step on float64 copies)
# ------------------------------------------------------------------------------------------------------
def _step_args(kind, *, out, out_x0, sample, model, cond, noise, alpha_t, alpha_prev, eta, ptype, vtype, gscale,
               clip, thresh, use_clipped, noise_mode, noise_src, seed, offset, seed_t, offset_t, mode_abs_x0=False):
    n = sample.numel()
    B = sample.shape[0]
    at_t = alpha_t if isinstance(alpha_t, torch.Tensor) else None
    ap_t = alpha_prev if isinstance(alpha_prev, torch.Tensor) else None
    lo, hi, weight, tmax = thresh if thresh else (None, None, 0.0, 1.0)
    return (kind, int(mode_abs_x0), n, n // B, out.data_ptr(), out_x0.data_ptr() if out_x0 is not None else 0,
            sample.data_ptr(), model.data_ptr(), cond.data_ptr() if cond is not None else 0,
            noise.data_ptr() if noise is not None else 0, CODES[sample.dtype],
            CODES[noise.dtype] if noise is not None else 0,
            at_t.data_ptr() if at_t is not None else 0, at_t is not None and at_t.dim() == 1,
            ap_t.data_ptr() if ap_t is not None else 0, ap_t is not None and ap_t.dim() == 1,
            0.0 if at_t is not None else alpha_t, 0.0 if ap_t is not None else alpha_prev, eta, ptype, vtype,
            cond is not None, gscale, clip is not None, clip or 0.0,
            lo.data_ptr() if lo is not None else 0, hi.data_ptr() if hi is not None else 0, weight, tmax,
            use_clipped, noise_mode, noise_src, seed & U64, offset & U64,
            seed_t.data_ptr() if seed_t is not None else 0, offset_t.data_ptr() if offset_t is not None else 0, 0, 0)


PTYPES = {"epsilon": 0, "sample": 1, "v_prediction": 2}
VTYPES = {"fixed_small": 0, "fixed_small_log": 1, "fixed_large": 2, "fixed_large_log": 3, "learned": 4,
          "learned_range": 5}

# (kind, dtype, shape, options): every option of the kernel at least once, sizes that straddle samples
# (inner not a multiple of the 4/8-element group), a grid-stride pass boundary, misaligned storage.
STEP_CASES = [
    ("ddim", torch.float32, (3, 5, 7), dict()),
    ("ddim", torch.float32, (2, 4, 9, 9), dict(eta=0.2, misaligned=True, guidance=True)),
    ("ddim", torch.float16, (2, 3, 11, 13), dict(eta=0.7, misaligned=True)),
    ("ddim", torch.bfloat16, (5, 3, 9), dict(eta=1.0, per_sample=True, guidance=True, clip=1.5)),
    ("ddim", torch.float32, (4, 3, 5, 5), dict(eta=0.3, threshold=(0.9, 2.5), use_clipped=True, ptype="sample")),
    ("ddim", torch.float16, (3, 2, 17), dict(ptype="v_prediction", noise_tensor=True, eta=0.5, threshold=(0.5, 1.5))),
    ("ddim", torch.float32, (2, 3, 80, 80), dict(eta=0.4, seed_pointers=True)),  # > one grid pass
    ("ddpm", torch.float32, (3, 2, 7), dict(vtype="fixed_small")),
    ("ddpm", torch.float16, (2, 3, 5, 5), dict(vtype="fixed_small_log", per_sample=True, misaligned=True)),
    ("ddpm", torch.bfloat16, (3, 4, 6), dict(vtype="fixed_large", noise_tensor=True, guidance=True)),
    ("ddpm", torch.float32, (2, 3, 5), dict(vtype="fixed_large_log", ptype="v_prediction", clip=1.0)),
    ("ddpm", torch.float32, (3, 2, 3, 5), dict(vtype="learned", guidance=True, threshold=(0.8, 3.0))),
    ("ddpm", torch.float16, (2, 3, 7), dict(vtype="learned_range", per_sample=True, noise_tensor=True)),
    ("ddpm", torch.bfloat16, (3, 2, 11), dict(vtype="learned_range", ptype="sample", misaligned=True)),
    ("ddpm", torch.float32, (4, 37), dict(vtype="fixed_small", per_sample=True, last_step=True, add_noise=None)),
    ("ddpm", torch.float16, (5, 1, 13), dict(vtype="fixed_small", add_noise=False)),
    ("ddpm", torch.float16, (3, 2, 4, 4), dict(vtype="learned_range", guidance=True, per_sample=True)),  # 16B rows
    ("ddpm", torch.float32, (2, 2, 16, 32), dict(vtype="learned", noise_tensor=True)),  # vector rows, > 1 pass
    ("ddim", torch.float16, (9, 3), dict(per_sample=True, threshold=(0.7, 2.0), eta=0.6)),  # 3 samples per group
]


def _run_step(kind_name, dtype, shape, opts, want_x0=True):
    kind = 0 if kind_name == "ddim" else 1
    B = shape[0]
    vtype = opts.get("vtype", "fixed_small")
    learned = kind == 1 and vtype in ("learned", "learned_range")
    mshape = (shape[0], 2 * shape[1]) + tuple(shape[2:]) if learned else shape
    mis = opts.get("misaligned", False)
    sample = _like(torch.randn(shape).to(dtype), mis)
    model = _like(torch.randn(mshape).to(dtype), mis)
    if learned:  # the variance channels: in (-1, 1) for learned_range, positive for learned
        v = model.view(B, 2, -1)[:, 1]
        v.copy_((torch.rand_like(v.float()) * (1.8 if vtype == "learned_range" else 0.5) - (0.9 if vtype == "learned_range" else -0.01)).to(dtype))
    cond = _like(torch.randn(mshape).to(dtype), mis) if opts.get("guidance") else None
    if cond is not None and learned:
        v = cond.view(B, 2, -1)[:, 1]
        v.copy_(model.view(B, 2, -1)[:, 1])
    gscale = 3.5 if cond is not None else 1.0
    if opts.get("per_sample"):
        alpha_t = torch.rand(B) * 0.6 + 0.05
        alpha_prev = torch.clamp(alpha_t + torch.rand(B) * 0.3 + 0.01, max=1.0)
        if opts.get("last_step"):
            alpha_prev[1] = 1.0
    else:
        alpha_t, alpha_prev = 0.31, 0.47
    eta = opts.get("eta", 0.0)
    ptype = opts.get("ptype", "epsilon")
    clip = opts.get("clip")
    threshold = opts.get("threshold")
    use_clipped = opts.get("use_clipped", False)
    noise_t = _like(torch.randn(shape).to(dtype), mis) if opts.get("noise_tensor") else None
    seed, offset = 987654321, 17
    seed_t = offset_t = None
    if opts.get("seed_pointers"):
        seed_t, offset_t = torch.tensor([seed]), torch.tensor([offset])
    if kind == 0:
        noise_mode = 1 if eta > 0 else 0
    else:
        add = opts.get("add_noise", True)
        noise_mode = 2 if add is None else (1 if add else 0)
    noise_src = 0 if noise_mode == 0 else (1 if noise_t is not None else 2)

    common = dict(sample=sample, model=model, cond=cond, noise=noise_t, alpha_t=alpha_t, alpha_prev=alpha_prev,
                  eta=eta, ptype=PTYPES[ptype], vtype=VTYPES[vtype], gscale=gscale, clip=clip,
                  use_clipped=use_clipped, noise_mode=noise_mode, noise_src=noise_src, seed=seed, offset=offset,
                  seed_t=seed_t, offset_t=offset_t)
    thresh = None
    if threshold is not None:  # the op's two passes: |x0| from the kernel, then the order statistics
        absx0 = torch.empty(sample.numel(), dtype=torch.float32)
        E.diffusion_step_cuda(*_step_args(kind, out=absx0, out_x0=None, thresh=None, mode_abs_x0=True, **common))
        absx0 = absx0.view(B, -1)
        N = absx0.shape[1]
        pos = threshold[0] * (N - 1)
        lo_k = int(math.floor(pos))
        hi_k = min(lo_k + 1, N - 1)
        lo = torch.kthvalue(absx0, lo_k + 1, dim=1).values.contiguous()
        hi = torch.kthvalue(absx0, hi_k + 1, dim=1).values.contiguous()
        thresh = (lo, hi, pos - lo_k, threshold[1])
    out = _buffer(sample.numel(), dtype, mis).view(shape)
    out_x0 = _buffer(sample.numel(), dtype, mis).view(shape) if want_x0 else None
    E.diffusion_step_cuda(*_step_args(kind, out=out, out_x0=out_x0, thresh=thresh, **common))

    # reference on float64 copies (noise from the stream is drawn in fp32 there too)
    d = torch.float64
    ref_model = (model.to(d), cond.to(d)) if cond is not None else model.to(d)
    kw = dict(prediction_type=ptype, clip_sample_range=clip, thresholding=threshold, seed=seed, offset=offset,
              noise=noise_t.to(d) if noise_t is not None else None, return_pred_original=True,
              guidance_scale=gscale if cond is not None else None)
    if kind == 0:
        prev_ref, x0_ref = _reference(genfast.ops.ddim_step, sample.to(d), ref_model, alpha_t, alpha_prev, eta=eta,
                                      use_clipped_model_output=use_clipped, **kw)
    else:
        prev_ref, x0_ref = _reference(genfast.ops.ddpm_step, sample.to(d), ref_model, alpha_t, alpha_prev,
                                      variance_type=vtype, add_noise=opts.get("add_noise", True), **kw)
    return out, out_x0, prev_ref, x0_ref


@pytest.mark.parametrize("case", range(len(STEP_CASES)), ids=lambda i: f"{STEP_CASES[i][0]}-{i}")
def test_diffusion_step_matches_reference(case):
    kind, dtype, shape, opts = STEP_CASES[case]
    out, out_x0, prev_ref, x0_ref = _run_step(kind, dtype, shape, opts)
    scale = 8.0 if dtype == torch.float32 else 1.0  # fp32: divisions by sqrt(alpha) amplify rounding
    _close(out, prev_ref, dtype, scale)
    _close(out_x0, x0_ref, dtype, scale)
    launches = 2 if opts.get("threshold") else 1
    assert E.launch_counts() == {"diffusion_step_kernel": launches}


def test_diffusion_step_is_independent_of_block_order():
    kind, dtype, shape, opts = "ddpm", torch.float32, (2, 3, 80, 80), dict(vtype="learned_range", per_sample=True)
    torch.manual_seed(3)
    ref = _run_step(kind, dtype, shape, opts)[0]
    for seed in (1, 2):
        E.set_block_order_seed(seed)
        torch.manual_seed(3)
        assert torch.equal(_run_step(kind, dtype, shape, opts)[0], ref)


# ------------------------------------------------------------------------------------------------------
# gradient penalty
# ------------------------------------------------------------------------------------------------------
GP_SHAPES = [(1, 1), (3, 7), (2, 64), (5, 1021), (2, 1024 * 2 + 8), (3, 4099)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, row", GP_SHAPES)
def test_gp_interpolate(dtype, B, row):
    mis = row % 3 == 1
    real = _like(torch.randn(B, row).to(dtype), mis)
    fake = _like(torch.randn(B, row).to(dtype), mis)
    out = _buffer(B * row, dtype, mis).view(B, row)
    seed, offset = 42 + row, 1
    seed_t = torch.tensor([seed])
    E.gp_interpolate_cuda(real.data_ptr(), fake.data_ptr(), out.data_ptr(), 0, 0, B, row, CODES[dtype], 0, offset,
                          seed_t.data_ptr(), 0, 0, 0)
    a = _reference(genfast.ops.rand, (B,), seed=seed, offset=offset).double().unsqueeze(1)
    _close(out, a * real.double() + (1 - a) * fake.double(), dtype)
    # alpha given as a tensor (any float dtype)
    alpha = torch.rand(B, dtype=torch.float64)
    E.gp_interpolate_cuda(real.data_ptr(), fake.data_ptr(), out.data_ptr(), alpha.data_ptr(), CODES[torch.float64], B,
                          row, CODES[dtype], 0, 0, 0, 0, 0, 0)
    a = alpha.float().double().unsqueeze(1)
    _close(out, a * real.double() + (1 - a) * fake.double(), dtype)
    assert E.launch_counts() == {"interpolate_kernel": 2}


def _gp_ref(g, weight, center, mode):
    sq = g.double().pow(2).sum(1)
    n = sq.sqrt()
    if mode == 2:
        term = sq
    else:
        d = n - center
        term = d.clamp(min=0) ** 2 if mode == 1 else d ** 2
    pen = (0.5 * weight if mode == 2 else weight) * term.mean()
    return n, pen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, row", GP_SHAPES + [(2, 20000), (1100, 3)])
def test_gp_norm_penalty_and_backward(dtype, B, row):
    mode = (B + row) % 3
    weight, center = 10.0, 1.0
    mis = row % 2 == 1
    g = _like((torch.randn(B, row) * 0.05).to(dtype), mis)
    norms = torch.empty(B)
    penalty = torch.empty(1, dtype=dtype)
    partials = torch.empty(max(B, 1024))
    counter = torch.tensor([12345], dtype=torch.int32)  # stale: the launcher zeroes it on the stream
    E.gp_norm_penalty_cuda(g.data_ptr(), norms.data_ptr(), penalty.data_ptr(), partials.data_ptr(), partials.numel(),
                           counter.data_ptr(), B, row, CODES[dtype], weight, center, mode, 0, 0)
    n_ref, p_ref = _gp_ref(g, weight, center, mode)
    torch.testing.assert_close(norms.double(), n_ref, rtol=2e-5, atol=1e-6)
    _close(penalty, p_ref.reshape(1), dtype, 2.0)
    assert counter.item() == 0, "the last block resets the ticket counter"
    # backward: d penalty / d g = grad_out * weight / B * s(n) * g
    grad_out = torch.tensor([0.75], dtype=dtype)
    out = _buffer(B * row, dtype, mis).view(B, row)
    E.gp_norm_penalty_backward_cuda(grad_out.data_ptr(), g.data_ptr(), norms.data_ptr(), out.data_ptr(), B, row,
                                    CODES[dtype], weight, center, mode, 0, 0)
    n = norms.double()
    if mode == 2:
        s = torch.ones_like(n)
    else:
        d = n - center
        d = d.clamp(min=0) if mode == 1 else d
        s = torch.where(n > 0, 2 * d / n, torch.zeros_like(n))
    expected = grad_out.double() * weight / B * s.unsqueeze(1) * g.double()
    _close(out, expected, dtype, 2.0)
    assert E.launch_counts() == {"norm_penalty_kernel": 1, "norm_penalty_backward_kernel": 1}


def test_gp_norm_penalty_is_independent_of_block_order():
    B, row = 3, 20000
    g = torch.randn(B, row)
    results = []
    for seed in (0, 5, 6):
        E.set_block_order_seed(seed)
        norms, penalty, partials = torch.empty(B), torch.empty(1), torch.empty(1024)
        counter = torch.zeros(1, dtype=torch.int32)
        E.gp_norm_penalty_cuda(g.data_ptr(), norms.data_ptr(), penalty.data_ptr(), partials.data_ptr(), 1024,
                               counter.data_ptr(), B, row, 0, 10.0, 1.0, 0, 0, 0)
        results.append(torch.cat([norms, penalty]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# ------------------------------------------------------------------------------------------------------
# VAE reparameterization + KL
# ------------------------------------------------------------------------------------------------------
def _vae_ref(mu, lv, eps, clamp):
    mu, lv, eps = mu.double(), lv.double(), eps.double()
    lvc = lv.clamp(*clamp) if clamp else lv
    s = torch.exp(0.5 * lvc)
    return mu + s * eps, 0.5 * (mu * mu + s * s - 1 - lvc), s, lvc


VAE_CASES = [(1, 1), (5, 3), (4, 8), (3, 37), (70, 5), (6, 600), (2, 4 * 64 + 3), (33, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, D", VAE_CASES)
def test_vae_forward_backward(dtype, B, D):
    mis = (B * D) % 2 == 1 and D > 1
    clamp = (-3.0, 2.0) if D % 2 else None
    use_noise = B % 2 == 0
    col_sums = D % 3 != 0
    mu = _like(torch.randn(B, D).to(dtype), mis)
    lv = _like((torch.randn(B, D) * 2).to(dtype), mis)
    noise = _like(torch.randn(B, D).to(dtype), mis) if use_noise else None
    seed, offset = 2024 + D, 5
    chunks, groups = E.vae_partials_shape_cuda(B, D, CODES[dtype], col_sums)
    z = _buffer(B * D, dtype, mis).view(B, D)
    row_part = torch.full((chunks, B), float("nan"))
    col_part = torch.full((groups if col_sums else 0, D), float("nan"))
    E.vae_forward_cuda(mu.data_ptr(), lv.data_ptr(), noise.data_ptr() if noise is not None else 0, z.data_ptr(),
                       row_part.data_ptr(), col_part.data_ptr() if col_sums else 0, B, D, CODES[dtype], seed, offset,
                       0, 0, clamp is not None, *(clamp or (0.0, 0.0)), col_sums, 0, 0)
    eps = noise.float() if use_noise else _reference(genfast.ops.randn, (B, D), seed=seed, offset=offset)
    z_ref, kl, s, lvc = _vae_ref(mu, lv, eps, clamp)
    _close(z, z_ref, dtype, 2.0)
    kl_scale = 1e-4 * max(D, 1) if dtype == torch.float32 else 1e-2 * max(D, 1)
    torch.testing.assert_close(row_part.sum(0).double(), kl.sum(1), rtol=1e-4, atol=kl_scale)
    if col_sums:
        torch.testing.assert_close(col_part.sum(0).double(), kl.sum(0), rtol=1e-4, atol=1e-4 * B)
    # backward
    grad_z = _like(torch.randn(B, D).to(dtype), mis)
    grad_rows = torch.randn(B)
    grad_cols = torch.randn(D) if col_sums else None
    g_mu = _buffer(B * D, dtype, mis).view(B, D)
    g_lv = _buffer(B * D, dtype, mis).view(B, D)
    E.vae_backward_cuda(grad_z.data_ptr(), grad_rows.data_ptr(), grad_cols.data_ptr() if col_sums else 0,
                        mu.data_ptr(), lv.data_ptr(), noise.data_ptr() if noise is not None else 0, g_mu.data_ptr(),
                        g_lv.data_ptr(), B, D, CODES[dtype], seed, offset, 0, 0, clamp is not None,
                        *(clamp or (0.0, 0.0)), 0, 0)
    coef = grad_rows.double().unsqueeze(1) + (grad_cols.double().unsqueeze(0) if col_sums else 0)
    gz = grad_z.double()
    gmu_ref = gz + coef * mu.double()
    glv_ref = 0.5 * (gz * s * eps.double() + coef * (s * s - 1))
    if clamp:
        inside = (lv.double() >= clamp[0]) & (lv.double() <= clamp[1])
        glv_ref = torch.where(inside, glv_ref, torch.zeros_like(glv_ref))
    _close(g_mu, gmu_ref, dtype, 4.0)
    _close(g_lv, glv_ref, dtype, 4.0)
    assert E.launch_counts() == {"vae_forward_kernel": 1, "vae_backward_kernel": 1}


def test_vae_is_independent_of_block_order():
    B, D = 70, 600
    mu, lv = torch.randn(B, D), torch.randn(B, D)
    outs = []
    for seed in (0, 11, 12):
        E.set_block_order_seed(seed)
        chunks, groups = E.vae_partials_shape_cuda(B, D, 0, True)
        z, rp, cp = torch.empty(B, D), torch.empty(chunks, B), torch.empty(groups, D)
        E.vae_forward_cuda(mu.data_ptr(), lv.data_ptr(), 0, z.data_ptr(), rp.data_ptr(), cp.data_ptr(), B, D, 0, 9, 1,
                           0, 0, False, 0.0, 0.0, True, 0, 0)
        outs.append(torch.cat([z.reshape(-1), rp.reshape(-1), cp.reshape(-1)]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_bad_arguments_raise_before_launching():
    x = torch.empty(4)
    with pytest.raises(ValueError, match="dtype"):
        E.random_fill_cuda(x.data_ptr(), 4, 9, 0, 0, 0, 0, False, 0, 0)
    with pytest.raises(ValueError, match="mode"):
        E.gp_norm_penalty_cuda(x.data_ptr(), 1, 1, 1, 1024, 1, 1, 0, 0, 1.0, 1.0, 7, 0, 0)
    with pytest.raises(RuntimeError, match="cudaSetDevice"):  # the emulation has one device
        E.random_fill_cuda(x.data_ptr(), 4, 0, 0, 0, 0, 0, False, 0, 1)
    assert E.launch_counts() == {}
    # the failed cudaSetDevice is not reported again by the next launch (CUDA's last-error semantics)
    E.random_fill_cuda(x.data_ptr(), 4, 0, 1, 0, 0, 0, False, 0, 0)
    assert E.launch_counts() == {"random_fill_kernel": 1}
