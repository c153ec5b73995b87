"""genfast.ops.rand / randn: the one random stream of design.md, on every backend."""
import math

import pytest
import torch

import genfast
from genfast import _ext
from genfast.ops import rand, randn
from genfast.ops.random import philox4x32_10

# Published known-answer vectors of Philox4x32-10 (Salmon et al. 2011, Random123 kat_vectors):
# (counter c0..c3, key k0..k1) -> output words.
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

try:
    import triton
    import triton.language as tl

    from genfast.triton.random import philox4x32_10 as tl_philox

    @triton.jit
    def kat_kernel(c_ptr, out_ptr, k0, k1):
        i = tl.arange(0, 4)
        c = tl.load(c_ptr + i).to(tl.uint32)
        c0 = tl.sum(tl.where(i == 0, c, 0), 0)
        c1 = tl.sum(tl.where(i == 1, c, 0), 0)
        c2 = tl.sum(tl.where(i == 2, c, 0), 0)
        c3 = tl.sum(tl.where(i == 3, c, 0), 0)
        r0, r1, r2, r3 = tl_philox(c0, c1, c2, c3, k0.to(tl.uint32), k1.to(tl.uint32))
        tl.store(out_ptr + i, tl.where(i == 0, r0, tl.where(i == 1, r1, tl.where(i == 2, r2, r3))).to(tl.int64))
except ImportError:
    kat_kernel = None


def word_to_uniform(word: int) -> float:
    return ((word >> 9) + 0.5) * 2.0**-23


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_reference_philox_known_answers(counter, key, expected):
    out = philox4x32_10(*[torch.tensor([c], dtype=torch.int64) for c in counter], *key)
    assert [int(o) for o in out] == list(expected)


@pytest.mark.skipif(_ext._C is None, reason="genfast._C is not built")
@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_compiled_philox_known_answers(counter, key, expected):
    assert tuple(_ext._C.philox4x32_10(counter, key)) == expected


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_triton_philox_known_answers(counter, key, expected):
    if kat_kernel is None:
        pytest.skip("Triton is not installed")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = torch.tensor(counter, dtype=torch.int64, device=device)
    out = torch.empty(4, dtype=torch.int64, device=device)
    kat_kernel[(1,)](c, out, key[0], key[1])
    assert [int(v) & 0xFFFFFFFF for v in out.cpu()] == list(expected)


def test_stream_start_is_the_published_vector(backend_device):
    # Element i in [0, 4) of (seed 0, offset 0) is word i of Philox at counter 0 with key 0.
    _, device = backend_device
    u = rand(4, seed=0, offset=0, device=device).cpu()
    assert u.tolist() == [word_to_uniform(w) for w in PHILOX_KAT[0][2]]


def test_seed_and_offset_words_enter_key_and_counter(backend_device):
    # seed = (k1 << 32) | k0 and offset = (c3 << 32) | c2 reach the key and counter words.
    _, device = backend_device
    counter, key = (0, 0, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)
    words = philox4x32_10(*[torch.tensor([c]) for c in counter], *key)
    seed, offset = (key[1] << 32) | key[0], (counter[3] << 32) | counter[2]
    u = rand(4, seed=seed, offset=offset, device=device).cpu()
    assert u.tolist() == [word_to_uniform(int(w)) for w in words]


@pytest.mark.parametrize("numel", [1, 3, 4, 7, 1001, 4099])
def test_uniforms_bit_identical_to_reference(backend_device, numel):
    _, device = backend_device
    seed = int(torch.randint(0, 2**62, ()))
    got = rand((numel,), seed=seed, offset=5, device=device).cpu()
    with genfast.use_backend("reference"):
        want = rand((numel,), seed=seed, offset=5, device="cpu")
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(3, 5, 7), (1,), (8, 8), (2, 0, 3)])
def test_normals_match_reference_to_a_few_ulps(backend_device, shape):
    _, device = backend_device
    seed = int(torch.randint(0, 2**62, ()))
    got = randn(shape, seed=seed, device=device).cpu()
    with genfast.use_backend("reference"):
        want = randn(shape, seed=seed, device="cpu")
    assert got.shape == torch.Size(shape)
    # Box-Muller in fp32 with libm or device sin/cos/log: a few ulps of the value (|n| < 6).
    torch.testing.assert_close(got, want, rtol=4e-7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("normal", [False, True])
def test_low_precision_is_the_fp32_draw_cast(backend_device, dtype, normal):
    _, device = backend_device
    draw = randn if normal else rand
    seed = int(torch.randint(0, 2**62, ()))
    got = draw((5, 37), seed=seed, dtype=dtype, device=device).cpu()
    fp32 = draw((5, 37), seed=seed, dtype=torch.float32, device=device).cpu()
    assert got.dtype == dtype
    assert torch.equal(got, fp32.to(dtype))


def test_independent_of_size_grid_and_block(backend_device):
    # A prefix of a longer draw is the shorter draw: no dependence on the number of blocks/threads.
    _, device = backend_device
    long = randn(10007, seed=11, device=device).cpu()
    for n in (1, 5, 8, 257, 4096, 9999):
        assert torch.equal(randn(n, seed=11, device=device).cpu(), long[:n])


def test_triton_block_size_does_not_change_the_stream():
    if not genfast.backends()["triton"].available:
        pytest.skip(genfast.backends()["triton"].reason)
    from genfast.ops._stream import resolve_stream
    from genfast.triton.random import random_fill

    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = resolve_stream(77, 3, torch.device(device))
    outs = []
    for block_rows in (16, 64, 256):
        out = torch.empty(3001, device=device)
        random_fill(out, s.seed, s.offset, None, None, True, block_rows=block_rows)
        outs.append(out.cpu())
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_seeds_and_offsets_select_different_streams(backend_device):
    _, device = backend_device
    base = rand(256, seed=1, offset=0, device=device)
    for other in (rand(256, seed=2, offset=0, device=device), rand(256, seed=1, offset=1, device=device),
                  rand(256, seed=1 + 2**32, offset=0, device=device), rand(256, seed=1, offset=2**32, device=device)):
        assert (base != other).float().mean() > 0.99


def test_full_64_bit_seed_range(backend_device):
    _, device = backend_device
    top = rand(64, seed=2**64 - 1, offset=2**64 - 1, device=device).cpu()
    with genfast.use_backend("reference"):
        assert torch.equal(top, rand(64, seed=2**64 - 1, offset=2**64 - 1, device="cpu"))
    assert not torch.equal(top, rand(64, seed=2**63 - 1, offset=2**64 - 1, device=device).cpu())


def test_seed_and_offset_tensors_equal_ints(backend_device):
    _, device = backend_device
    seed, offset = 2**64 - 12345, 2**40 + 3
    from genfast.ops._stream import to_signed64

    seed_t = torch.tensor(to_signed64(seed), dtype=torch.int64, device=device)
    offset_t = torch.tensor([offset], dtype=torch.int64, device=device)
    want = randn((9, 11), seed=seed, offset=offset, device=device)
    got = randn((9, 11), seed=seed_t, offset=offset_t, device=device)
    assert torch.equal(got, want)
    seed_t.fill_(7)  # a new value in the same tensor gives the new stream (the CUDA-graph use)
    assert torch.equal(randn((9, 11), seed=seed_t, offset=offset_t, device=device),
                       randn((9, 11), seed=7, offset=offset, device=device))


def test_seed_none_follows_torch_manual_seed():
    torch.manual_seed(1234)
    a = randn(100)
    torch.manual_seed(1234)
    b = randn(100)
    c = randn(100)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_statistics_of_a_million_draws():
    scipy_stats = pytest.importorskip("scipy.stats")
    u = rand(10**6, seed=2024).double()
    n = randn(10**6, seed=2025).double()
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / 1e6)
    assert abs(u.var().item() - 1 / 12) < 5e-4
    assert 0 < u.min().item() and u.max().item() < 1
    assert abs(n.mean().item()) < 5e-3
    assert abs(n.var().item() - 1) < 5e-3
    assert scipy_stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    assert scipy_stats.kstest(n.numpy(), "norm").pvalue > 1e-3
    # Consecutive elements (same and neighbouring Philox blocks) are uncorrelated.
    assert abs(torch.corrcoef(torch.stack([n[:-1], n[1:]]))[0, 1].item()) < 5e-3
    assert abs(torch.corrcoef(torch.stack([n[0::2], n[1::2]]))[0, 1].item()) < 5e-3


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])
def test_opcheck(backend):
    info = genfast.backends()[backend]
    device = "cuda" if backend == "cuda" else ("cuda" if torch.cuda.is_available() and backend == "triton" else "cpu")
    if not info.available or (backend != "reference" and device not in info.devices):
        pytest.skip(info.reason)
    op = torch.ops.genfast.random.default
    for normal in (False, True):
        torch.library.opcheck(op, ([3, 5], 42, 7, None, None, normal, torch.float32, torch.device(device), backend))
        seed_t = torch.tensor(42, dtype=torch.int64, device=device)
        torch.library.opcheck(op, ([6], 0, 0, seed_t, None, normal, torch.float16, torch.device(device), backend))


def test_compiles_without_graph_breaks():
    def f(x):
        return x + randn(x.shape, seed=3, device=x.device)

    x = torch.zeros(4, 5)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))


# ---- bad input: errors name the argument -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_rejects_non_float_dtypes(dtype):
    with pytest.raises(TypeError, match="dtype"):
        rand(4, seed=0, dtype=dtype)


@pytest.mark.parametrize("shape", [(-1,), (2, -3)])
def test_rejects_negative_sizes(shape):
    with pytest.raises(ValueError, match="shape"):
        randn(shape, seed=0)


def test_rejects_bad_shapes():
    with pytest.raises(TypeError, match="shape"):
        randn((2.5, 3), seed=0)


@pytest.mark.parametrize("seed", [-1, 2**64, 10**30])
def test_rejects_seed_outside_u64(seed):
    with pytest.raises(ValueError, match="seed"):
        randn(4, seed=seed)


def test_rejects_bad_seed_and_offset_types():
    with pytest.raises(TypeError, match="seed"):
        randn(4, seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        randn(4, seed=True)
    with pytest.raises(TypeError, match="offset"):
        randn(4, seed=1, offset=torch.tensor(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="offset"):
        randn(4, seed=1, offset=-5)
    with pytest.raises(ValueError, match="seed"):
        randn(4, seed=torch.tensor([1, 2]))


def test_rejects_device_the_forced_backend_cannot_serve():
    if not genfast.backends()["cpu"].available:
        pytest.skip(genfast.backends()["cpu"].reason)
    with genfast.use_backend("cpu"), pytest.raises(ValueError, match="device"):
        randn(4, seed=0, device="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_forcing_an_unavailable_backend_is_an_error():
    with genfast.use_backend("cuda"), pytest.raises(genfast.BackendUnavailableError, match="cuda"):
        randn(4, seed=0)


@pytest.mark.skipif(_ext._C is None, reason="genfast._C is not built")
def test_compiled_side_raises_python_errors():
    out = torch.empty(4)
    with pytest.raises(ValueError, match="negative"):
        _ext._C.random_fill_cpu(out.data_ptr(), -1, 0, 0, 0, 0, 0, True)
    with pytest.raises(ValueError, match="dtype"):
        _ext._C.random_fill_cpu(out.data_ptr(), 4, 99, 0, 0, 0, 0, True)
    with pytest.raises(ValueError, match="null"):
        _ext._C.random_fill_cpu(0, 4, 0, 0, 0, 0, 0, True)


# The Triton kernels' AOT compile (real launcher specializations, sm_90 and sm_80, 16-byte accesses,
# registers, spills) is tests/test_triton_codegen.py.
