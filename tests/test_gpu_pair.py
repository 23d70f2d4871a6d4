"""Pair ops (mlx_precise.pair) on the GPU: the elementwise functions, addmm / linear,
layer_norm, rfft_conv and take_rows, which have CUDA and Metal kernels.

Skipped, visibly, where MLX has no GPU (CI). Each GPU result's carried value hi + lo must
agree with the CPU's within 2^-46 relatively on CUDA (both compute in double, with
different math libraries) and 2^-42 on Metal (double-word arithmetic: its exp, sin,
tanh and GELU are held to 2^-44 against mpmath in tests/test_dd_functions.py), and every
pair must be normalised. take_rows copies pairs: the CPU's bits everywhere; CUDA's
rfft_conv runs the CPU engine's double operations in its order: the CPU's bits too.
M2-BERT's precision="exact" on the GPU must round once like torch float64 and match the
CPU's exact output. Fresh random inputs each run (the seed is printed).
"""

import os

import mlx.core as mx
import numpy as np
import pytest

from mlx_precise import pair

ON_CUDA = mx.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not (ON_CUDA or mx.metal.is_available()), reason="MLX has no GPU backend here"
)
# Relative agreement of a GPU pair with the CPU's (see the module docstring).
TOLERANCE = 2.0**-46 if ON_CUDA else 2.0**-42

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_gpu_pair seed: {SEED}")


def on(device, fn, *args, **kwargs):
    with mx.stream(device):
        out = fn(*args, **kwargs)
        mx.eval(out.hi, out.lo)
    return out


def value(p):
    return np.asarray(p.hi).astype(np.longdouble) + np.asarray(p.lo).astype(np.longdouble)


def check_same(gpu, cpu, scale=None, what="", tolerance=TOLERANCE):
    hi, lo = np.asarray(gpu.hi), np.asarray(gpu.lo)
    assert np.all(np.isfinite(hi)) and np.all(np.isfinite(lo)), what
    np.testing.assert_array_equal((hi.astype(np.float64) + lo).astype(np.float32), hi)
    reference = value(cpu)
    denominator = np.maximum(np.abs(reference) if scale is None else scale, 2.0**-100)
    error = float(np.max(np.abs(value(gpu) - reference) / denominator))
    equal = np.mean(hi == np.asarray(cpu.hi))
    print(f"{what}: GPU vs CPU worst {error:.2e}, hi bitwise equal {equal:.4%}")
    assert error <= tolerance, what


def random_pair(rng, shape, scale=1.0):
    a = mx.array((scale * rng.standard_normal(shape)).astype(np.float32))
    b = mx.array(rng.uniform(0.5, 2.0, shape).astype(np.float32))
    return on(mx.cpu, pair.multiply, a, b)  # the exact product as a pair


@pytest.mark.parametrize("op", ["sin", "exp", "tanh", "gelu"])
def test_unary_matches_cpu(op):
    rng = np.random.default_rng([SEED, len(op)])
    x = random_pair(rng, (64, 300), scale=3.0)
    strided = x.transpose(1, 0)
    check_same(
        on(mx.gpu, getattr(pair, op), strided), on(mx.cpu, getattr(pair, op), strided), what=op
    )


def test_binary_broadcast_matches_cpu():
    rng = np.random.default_rng([SEED, 2])
    x = random_pair(rng, (4, 1, 96))
    y = random_pair(rng, (7, 96))
    for name in ("add", "multiply"):
        fn = getattr(pair, name)
        scale = None
        if name == "add":
            scale = np.abs(value(x)) + np.abs(value(y))
        check_same(on(mx.gpu, fn, x, y), on(mx.cpu, fn, x, y), scale, what=name)
    scalar = mx.array(np.float32(3.0))
    check_same(on(mx.gpu, pair.multiply, x, scalar), on(mx.cpu, pair.multiply, x, scalar),
               what="pair * 0-d float32")


def test_layer_norm_matches_cpu():
    rng = np.random.default_rng([SEED, 3])
    x = on(mx.cpu, pair.add, random_pair(rng, (33, 768)), mx.array(np.float32(4.0)))
    w = mx.array(rng.uniform(0.5, 1.5, 768).astype(np.float32))
    b = mx.array(rng.standard_normal(768).astype(np.float32))
    gpu = on(mx.gpu, pair.layer_norm, x, w, b, 1e-5)
    cpu = on(mx.cpu, pair.layer_norm, x, w, b, 1e-5)
    scale = np.max(np.abs(value(cpu)), axis=-1, keepdims=True)
    check_same(gpu, cpu, scale, what="layer_norm")
    strided = x.transpose(1, 0)  # 768 rows of 33, element stride 768
    cpu = on(mx.cpu, pair.layer_norm, strided, None, None, 1e-5)
    scale = np.max(np.abs(value(cpu)), axis=-1, keepdims=True)
    check_same(on(mx.gpu, pair.layer_norm, strided, None, None, 1e-5), cpu, scale,
               what="layer_norm, strided, no affine")


def test_linear_and_addmm_match_cpu():
    rng = np.random.default_rng([SEED, 4])
    x = random_pair(rng, (3, 50, 96))
    w = mx.array(rng.standard_normal((40, 96)).astype(np.float32))
    b = mx.array(rng.standard_normal(40).astype(np.float32))
    # Both sum in float64 in their own orders: within K 2^-53 of |x| |w| + |b|.
    scale = np.abs(value(x)) @ np.abs(np.asarray(w).T).astype(np.longdouble) + np.abs(np.asarray(b))
    check_same(on(mx.gpu, pair.linear, x, w, b), on(mx.cpu, pair.linear, x, w, b), scale,
               what="linear")
    # Batched with a broadcast bias row (M2's block-diagonal Monarch products), strided a.
    a = random_pair(rng, (4, 96, 24)).transpose(0, 2, 1)
    bm = mx.array(rng.standard_normal((4, 96, 16)).astype(np.float32))
    c = mx.array(rng.standard_normal((4, 1, 16)).astype(np.float32))
    scale = np.abs(value(a)) @ np.abs(np.asarray(bm)).astype(np.longdouble) + np.abs(np.asarray(c))
    check_same(on(mx.gpu, pair.addmm, c, a, bm), on(mx.cpu, pair.addmm, c, a, bm), scale,
               what="addmm")
    check_same(on(mx.gpu, pair.addmm, None, a, bm), on(mx.cpu, pair.addmm, None, a, bm),
               scale, what="addmm without c")


def bits(a):
    return np.asarray(a).view(np.uint32)


def test_take_rows_bits_equal_cpu():
    """M2-BERT's exact embeddings: rows of a pair table, NaN rows for an id out of range."""
    rng = np.random.default_rng([SEED, 7])
    table = random_pair(rng, (40, 24)).transpose(1, 0)[:, :20]  # (24, 20), strided
    ids = mx.array(rng.integers(-1, 25, (3, 17)).astype(np.int32)).transpose(1, 0)
    gpu = on(mx.gpu, pair.take_rows, table, ids)
    cpu = on(mx.cpu, pair.take_rows, table, ids)
    assert np.isnan(np.asarray(gpu.hi)).any(), "an id of -1 or 24 gives NaN rows"
    np.testing.assert_array_equal(bits(gpu.hi), bits(cpu.hi))
    np.testing.assert_array_equal(bits(gpu.lo), bits(cpu.lo))


# (batch, channels, L, kernel length, n): M2-BERT's bidirectional long convolution
# (n = 2L, kernel 2L), a non-power-of-two period, and rows too long for shared memory
# in double (the workspace kernels).
CONV_SHAPES = [(2, 3, 256, 512, 512), (2, 3, 1000, 2000, 2000), (1, 2, 16384, 32768, 32768)]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: f"L{s[2]}_n{s[4]}")
def test_rfft_conv_matches_cpu(shape):
    B, H, L, Lk, n = shape
    rng = np.random.default_rng([SEED, 5, L])
    u = random_pair(rng, (H, B, L)).transpose(1, 0, 2)  # a strided view
    # lo at other strides than hi: each part is read through its own layout.
    u = pair.Pair(u.hi, mx.contiguous(u.lo))
    k = random_pair(rng, (H, Lk), scale=1.0 / np.sqrt(Lk))
    d = mx.array(rng.standard_normal((H, 1)).astype(np.float32))
    gpu = on(mx.gpu, pair.rfft_conv, u, k, n=n, bias=d)
    cpu = on(mx.cpu, pair.rfft_conv, u, k, n=n, bias=d)
    check_conv(gpu, cpu, f"rfft_conv L={L} n={n}")


def check_conv(gpu, cpu, what):
    """CUDA: the CPU's bits. Metal (float-pair transforms): within 2^-36 of each row's
    largest output."""
    assert np.all(np.isfinite(np.asarray(gpu.hi))) and np.all(np.isfinite(np.asarray(gpu.lo)))
    if ON_CUDA:
        np.testing.assert_array_equal(bits(gpu.hi), bits(cpu.hi))
        np.testing.assert_array_equal(bits(gpu.lo), bits(cpu.lo))
    else:
        scale = np.max(np.abs(value(cpu)), axis=-1, keepdims=True)
        check_same(gpu, cpu, scale, what, tolerance=2.0**-36)


def test_rfft_conv_short_float32_kernel_matches_cpu():
    """M2's short convolution: a float32 kernel (the pair (k, 0), lo broadcast), causal."""
    rng = np.random.default_rng([SEED, 6])
    u = random_pair(rng, (2, 48, 300))
    taps = mx.array(rng.standard_normal((48, 3)).astype(np.float32))
    gpu = on(mx.gpu, pair.rfft_conv, u, taps)
    cpu = on(mx.cpu, pair.rfft_conv, u, taps)
    check_conv(gpu, cpu, "short rfft_conv")


@pytest.mark.parametrize("hidden, seq_len", [(64, 256), (768, 64)], ids=["h64-L256", "h768-L64"])
def test_m2bert_exact_on_gpu_rounds_once(hidden, seq_len):
    """precision="exact" on the GPU: float32(torch float64) for >= 99.99 % of the outputs
    (relative L2 <= 3e-8), and the CPU's exact output wherever the two math libraries'
    last bits do not move a rounding (>= 99.99 % bitwise)."""
    pytest.importorskip("torch")
    from test_m2bert import Case

    case = Case(hidden, seq_len)
    with mx.stream(mx.gpu):
        gpu = case.mlx("exact")
    with mx.stream(mx.cpu):
        cpu = case.mlx("exact")
    for name, mine, on_cpu, ref64 in zip(("hidden", "pooled"), gpu, cpu, case.torch64):
        mine, reference = np.asarray(mine), ref64.numpy()
        assert np.all(np.isfinite(mine)), name
        equal = np.mean(mine == reference.astype(np.float32))
        same_as_cpu = np.mean(bits(mine) == bits(on_cpu))
        error = float(np.linalg.norm(mine - reference) / np.linalg.norm(reference))
        print(f"{name}: GPU exact equals float32(float64 torch) for {equal:.4%}, relative "
              f"L2 {error:.2e}; bitwise equal to the CPU's exact for {same_as_cpu:.4%}")
        assert equal >= 0.9999 and error <= 3e-8, name
        assert same_as_cpu >= 0.9999, name
