"""Strict addmm / linear / layer_norm (extended, dd) on the GPU.

Skipped, visibly, where MLX has no GPU (CI). On a GPU machine: correct rounding
against exactly rounded references (math.fsum of exact products), GPU outputs and
gradients equal to the CPU's, broadcast c, strided operands, layer_norm with
weight and bias. On CUDA both precisions are the CPU's float64 computation
(certified and correctly rounded where the CPU's is), so the bits are the CPU's,
dd's included (README, "The dd contract"). Metal has no float64: both precisions
run its float-pair (dd) kernels; addmm / linear and layer_norm (forward and
gradients) are certified there (every output correctly rounded: the CPU's bits;
predicted from the kernels' code run on the CPU, never run on a Mac).
"""

import math
import os

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from reference import (
    exact_zero_rule,
    hard_layer_norm_rows,
    layer_norm_grad_weight_reference,
    layer_norm_grad_x_reference,
    layer_norm_reference_mp,
    round_exact_sum,
    weight_grad_eps_ties,
    weight_grad_near_ties,
    weight_grad_related_ties,
)

GPU_AVAILABLE = mx.metal.is_available() or mx.cuda.is_available()
pytestmark = pytest.mark.skipif(not GPU_AVAILABLE, reason="MLX has no GPU backend here")

STRICT = ("extended", "dd")
ON_METAL = mx.metal.is_available()


def on(device, fn, *args, **kwargs):
    with mx.stream(device):
        out = fn(*args, **kwargs)
        mx.eval(out)
    return out


def exact_addmm(c, a, b, alpha=1.0, beta=1.0):
    """float32(alpha * a @ b + beta * c) exactly rounded (fsum of exact products)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cb = np.broadcast_to(c.astype(np.float64), (a.shape[0], b.shape[1]))
    out = np.empty(cb.shape, np.float32)
    for i in range(a.shape[0]):
        products = alpha * a64[i][:, None] * b64  # exact for alpha a power of two
        for j in range(b.shape[1]):
            out[i, j] = round_exact_sum([*products[:, j], beta * cb[i, j]])
    return out


def assert_bitwise(x, y):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape
    same = x.view(np.uint32) == y.view(np.uint32)
    assert same.all(), f"{(~same).sum()} of {same.size} outputs differ"


def assert_equal_to_cpu(y_gpu, y_cpu):
    """CUDA: the CPU's bits. Metal (float pairs, no float64): within one ulp of
    them, and equal in at least 99 % of the outputs."""
    if not ON_METAL:
        assert_bitwise(y_gpu, y_cpu)
        return
    x, y = np.asarray(y_gpu), np.asarray(y_cpu)
    assert x.shape == y.shape and np.isfinite(x).all()
    ulps = np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32))
    assert ulps.max() <= 1 and (ulps == 0).mean() >= 0.99, f"max {ulps.max()} ulp"


@pytest.mark.parametrize("precision", STRICT)
def test_addmm_correctly_rounded_and_equal_to_cpu(precision):
    rng = np.random.default_rng(1)
    M, K, N = 67, 300, 45
    # Heavy cancellation: a large common part in every product sum.
    a = (rng.standard_normal((M, K)) * np.exp(rng.uniform(-6, 6, (M, K)))).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = rng.standard_normal((M, N)).astype(np.float32)
    ref = exact_addmm(c, a, b, alpha=0.5, beta=-2.0)
    args = (mx.array(c), mx.array(a), mx.array(b))
    y_gpu = np.array(on(mx.gpu, mp.addmm, *args, alpha=0.5, beta=-2.0, precision=precision))
    assert (y_gpu == ref).mean() >= 0.9999
    y_cpu = on(mx.cpu, mp.addmm, *args, alpha=0.5, beta=-2.0, precision=precision)
    assert_equal_to_cpu(y_gpu, y_cpu)


@pytest.mark.parametrize("precision", STRICT)
def test_addmm_large_equal_to_cpu(precision):
    rng = np.random.default_rng(2)
    a = mx.array(rng.standard_normal((300, 1024)).astype(np.float32))
    b = mx.array(rng.standard_normal((1024, 257)).astype(np.float32))
    c = mx.array(rng.standard_normal((257,)).astype(np.float32))
    y_gpu = on(mx.gpu, mp.addmm, c, a, b, precision=precision)
    assert_equal_to_cpu(y_gpu, on(mx.cpu, mp.addmm, c, a, b, precision=precision))
    # dd is extended on the CPU: the same correctly rounded bits.
    y_ext = on(mx.cpu, mp.addmm, c, a, b, precision="extended")
    assert_equal_to_cpu(y_gpu, y_ext)


@pytest.mark.parametrize("precision", STRICT)
def test_batched_broadcast_and_strided(precision):
    rng = np.random.default_rng(3)
    a = mx.array(rng.standard_normal((3, 1, 20, 33)).astype(np.float32))
    b = mx.array(rng.standard_normal((4, 50, 33)).astype(np.float32)).swapaxes(-1, -2)  # strided
    c = mx.array(rng.standard_normal((4, 1, 50)).astype(np.float32))  # broadcast over rows
    y_gpu = np.array(on(mx.gpu, mp.addmm, c, a, b, precision=precision))
    a_n, b_n, c_n = np.array(a), np.array(b), np.array(c)
    ref = np.stack([np.stack([exact_addmm(c_n[j], a_n[i, 0], b_n[j]) for j in range(4)])
                    for i in range(3)])
    assert y_gpu.shape == (3, 4, 20, 50)
    assert (y_gpu == ref).mean() >= 0.9999
    assert_equal_to_cpu(y_gpu, on(mx.cpu, mp.addmm, c, a, b, precision=precision))


@pytest.mark.parametrize("precision", STRICT)
def test_linear_equal_to_cpu(precision):
    rng = np.random.default_rng(4)
    x = mx.array(rng.standard_normal((2, 7, 96)).astype(np.float32))
    w = mx.array(rng.standard_normal((40, 96)).astype(np.float32))
    bias = mx.array(rng.standard_normal((40,)).astype(np.float32))
    y_gpu = on(mx.gpu, mp.linear, x, w, bias, precision=precision)
    ref = exact_addmm(np.array(bias), np.array(x).reshape(-1, 96), np.array(w).T).reshape(2, 7, 40)
    assert (np.array(y_gpu) == ref).mean() >= 0.9999
    assert_equal_to_cpu(y_gpu, on(mx.cpu, mp.linear, x, w, bias, precision=precision))


def exact_layer_norm(x, w, b, eps):
    """Rows of float32 x normalised with mean and variance from exact sums
    (math.fsum), in float64 (far below float32 rounding for these rows)."""
    out = np.empty(x.shape, np.float32)
    for r, row in enumerate(x.reshape(-1, x.shape[-1]).astype(np.float64)):
        mean = math.fsum(row) / row.size
        d = row - mean
        var = math.fsum(d * d) / row.size
        y = d / math.sqrt(var + eps) * w.astype(np.float64) + b.astype(np.float64)
        out.reshape(-1, x.shape[-1])[r] = y.astype(np.float32)
    return out


@pytest.mark.parametrize("precision", STRICT)
def test_layer_norm_accuracy_and_equal_to_cpu(precision):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 768)) * 3 + 1000).astype(np.float32)  # |mean| >> spread
    w = rng.standard_normal(768).astype(np.float32)
    b = rng.standard_normal(768).astype(np.float32)
    args = (mx.array(x), mx.array(w), mx.array(b))
    y_gpu = np.array(on(mx.gpu, mp.layer_norm, *args, eps=1e-5, precision=precision))
    ref = exact_layer_norm(x, w, b, 1e-5)
    assert (y_gpu == ref).mean() >= 0.9999
    assert_bitwise(y_gpu, on(mx.cpu, mp.layer_norm, *args, eps=1e-5, precision=precision))
    # Without affine parameters, and a strided input.
    xt = mx.array(rng.standard_normal((50, 13)).astype(np.float32)).T
    assert_bitwise(on(mx.gpu, mp.layer_norm, xt, precision=precision),
                   on(mx.cpu, mp.layer_norm, xt, precision=precision))


def poison_buffer_cache(nbytes):
    """Leaves NaN-filled GPU buffers of nbytes in MLX's buffer cache, so that the next
    outputs of that size likely start as NaN: an output a kernel fails to write shows.
    (On CUDA the outputs are mlx_precise's own allocations, poisoned by conftest.py.)"""
    junk = [mx.full((max(nbytes // 4, 1),), np.nan, dtype=mx.float32, stream=mx.gpu) for _ in range(3)]
    mx.eval(junk)
    del junk


@pytest.mark.parametrize("precision", STRICT)
def test_layer_norm_certified_on_hard_rows(precision):
    # Rows whose outputs reach the recompute kernel (double words, then exact
    # comparisons): correctly rounded, exact zeros by the one sign rule, the CPU's bits.
    seed = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"test_layer_norm_certified_on_hard_rows seed: {seed}")
    rng = np.random.default_rng(seed)
    for _ in range(8):
        dim = int(rng.choice([2, 3, 5, 33, 100, 768]))
        x = hard_layer_norm_rows(rng, dim)
        w = rng.choice([-2, -1, -0.0, 0.0, 0.5, 3, 1 + 2.0**-23], dim).astype(np.float32)
        b = rng.choice([-0.0, 0.0, 1, -1, 2.0**-30], dim).astype(np.float32)
        w = w if rng.random() < 0.7 else None
        b = b if rng.random() < 0.6 else None
        eps = float(rng.choice([1e-5, 1e-300, 3.0, 1e-40]))
        args = [mx.array(x), None if w is None else mx.array(w), None if b is None else mx.array(b)]
        poison_buffer_cache(x.nbytes)
        y_gpu = np.array(on(mx.gpu, mp.layer_norm, *args, eps=eps, precision=precision))
        np.testing.assert_array_equal(y_gpu, layer_norm_reference_mp(x, w, b, eps), err_msg=f"seed {seed}")
        zeros = exact_zero_rule(x, w, b)
        fixed = zeros == 0
        np.testing.assert_array_equal(np.signbit(y_gpu[fixed]), np.signbit(zeros[fixed]))
        assert_bitwise(y_gpu, on(mx.cpu, mp.layer_norm, *args, eps=eps, precision=precision))


@pytest.mark.parametrize("precision", STRICT)
def test_layer_norm_grad_x_certified_on_hard_rows(precision):
    # grad x on rows that reach layer_norm_grad_x_recompute: correctly rounded, the CPU's bits.
    seed = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"test_layer_norm_grad_x_certified_on_hard_rows seed: {seed}")
    rng = np.random.default_rng(seed)
    for _ in range(6):
        dim = int(rng.choice([2, 3, 5, 33, 100]))
        x = hard_layer_norm_rows(rng, dim)
        g = rng.integers(-3, 4, x.shape).astype(np.float32)
        w = rng.choice([-2, -1, 0.5, 3, 1 + 2.0**-23], dim).astype(np.float32)
        args = [mx.array(x), mx.array(w)]

        def grad_x():
            return mx.vjp(lambda x_, w_: mp.layer_norm(x_, w_, None, eps=1e-5, precision=precision), args,
                          [mx.array(g)])[1][0]

        poison_buffer_cache(x.nbytes)
        dx = on(mx.gpu, grad_x)
        np.testing.assert_array_equal(np.array(dx), layer_norm_grad_x_reference(x, w, g, 1e-5),
                                      err_msg=f"seed {seed}")
        assert_bitwise(dx, on(mx.cpu, grad_x))


@pytest.mark.parametrize("precision", STRICT)
def test_layer_norm_weight_gradient_certified(precision):
    # grad weight on columns that reach every stage (layer_norm_param_grads, then
    # layer_norm_wide_rows / layer_norm_weight_recompute): near-ties across and within
    # variances, exact zeros, ties that eps moves by 2^-1000, ties and zeros across rows
    # of rationally related variances (weight_grad_by_classes), hard rows with wide-range
    # cotangents; correctly rounded, the CPU's bits; and a 512 x 768 block, the CPU's bits.
    seed = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"test_layer_norm_weight_gradient_certified seed: {seed}")
    rng = np.random.default_rng(seed)
    cases = weight_grad_near_ties(rng) + weight_grad_eps_ties() + weight_grad_related_ties(rng)
    for _ in range(4):
        x = np.concatenate([hard_layer_norm_rows(rng, 5) for _ in range(3)])
        g = (rng.standard_normal(x.shape) * np.exp2(rng.integers(-60, 61, x.shape))).astype(np.float32)
        cases.append((x, g, 1e-5))
    for x, g, eps in cases:
        w = mx.array(np.linspace(-1.5, 2.0, x.shape[1]).astype(np.float32))

        def weight_grad():
            return mx.vjp(lambda w_: mp.layer_norm(mx.array(x), w_, None, eps=eps, precision=precision), [w],
                          [mx.array(g)])[1][0]

        poison_buffer_cache(x.shape[1] * 4)
        dw = on(mx.gpu, weight_grad)
        expected, mixed = layer_norm_grad_weight_reference(x, g, eps)
        assert np.all(mixed <= 4)  # all within the exact stage's four groups
        assert_bitwise(dw, expected)
        assert_bitwise(dw, on(mx.cpu, weight_grad))
    x = mx.array(rng.standard_normal((512, 768)).astype(np.float32))
    g = mx.array(rng.standard_normal((512, 768)).astype(np.float32))
    w = mx.array(rng.standard_normal(768).astype(np.float32))

    def block_grads():
        return mx.vjp(lambda x_, w_: mp.layer_norm(x_, w_, None, precision=precision), [x, w], [g])[1]

    for gpu, cpu in zip(on(mx.gpu, block_grads), on(mx.cpu, block_grads)):
        assert_bitwise(gpu, cpu)


@pytest.mark.parametrize("precision", STRICT)
def test_layer_norm_bias_gradient_correctly_rounded(precision):
    # Column sums with cancellation (+-2^60 around 1): certified, else summed exactly.
    rng = np.random.default_rng(11)
    rows, dim = 300, 40
    g = (rng.standard_normal((rows, dim)) * 2.0**-20).astype(np.float32)
    g[:3, :] = np.float32([[2.0**60], [1.0], [-(2.0**60)]])
    x = mx.array(rng.standard_normal((rows, dim)).astype(np.float32))
    b = mx.array(rng.standard_normal(dim).astype(np.float32))

    def bias_grad():
        return mx.vjp(lambda b_: mp.layer_norm(x, None, b_, precision=precision), [b], [mx.array(g)])[1][0]

    poison_buffer_cache(dim * 4)
    db = on(mx.gpu, bias_grad)
    expected = np.float32([round_exact_sum(g[:, i].astype(np.float64).tolist()) for i in range(dim)])
    assert_bitwise(db, expected)
    assert_bitwise(db, on(mx.cpu, bias_grad))


@pytest.mark.parametrize("precision", STRICT)
def test_gradients_on_gpu_equal_to_cpu(precision):
    rng = np.random.default_rng(6)
    x = mx.array(rng.standard_normal((3, 5, 48)).astype(np.float32))
    w = mx.array(rng.standard_normal((24, 48)).astype(np.float32))
    bias = mx.array(rng.standard_normal((24,)).astype(np.float32))
    g = mx.array(rng.standard_normal(24).astype(np.float32))
    lw = mx.array(rng.standard_normal(24).astype(np.float32))
    lb = mx.array(rng.standard_normal(24).astype(np.float32))

    def loss(x, w, bias, lw, lb):
        y = mp.linear(x, w, bias, precision=precision)
        z = mp.layer_norm(y, lw, lb, precision=precision)
        return (z * g).sum()

    gpu = on(mx.gpu, mx.grad(loss, argnums=(0, 1, 2, 3, 4)), x, w, bias, lw, lb)
    cpu = on(mx.cpu, mx.grad(loss, argnums=(0, 1, 2, 3, 4)), x, w, bias, lw, lb)
    for gg, cc in zip(gpu, cpu):  # every op certified, on Metal too
        assert_bitwise(gg, cc)


@pytest.mark.parametrize("precision", STRICT)
def test_addmm_zeros_and_exact_cancellation_equal_to_cpu(precision):
    # Zero rows of a against negative b (signed-zero products), rows whose sums
    # cancel exactly, and K not a multiple of any tile (padding in the FP64
    # tensor-core path): bits, signs of zeros included, equal the CPU's.
    rng = np.random.default_rng(7)
    M, K, N = 70, 37, 66
    a = rng.standard_normal((M, K)).astype(np.float32)
    a[:5] = 0.0
    a[5:10] = -0.0
    a[10:20, 1::2] = -a[10:20, 0:-1:2]  # pairs a_2t+1 = -a_2t ...
    b = -np.abs(rng.standard_normal((K, N))).astype(np.float32)
    b[1::2] = b[0:-1:2]  # ... with equal b: sums cancel exactly
    for alpha, beta, has_c in ((1.0, 1.0, False), (-1.0, 0.0, True), (0.5, -1.0, True)):
        c = mx.array(np.zeros((M, N), np.float32) if beta == 0.0 else
                     rng.standard_normal((M, N)).astype(np.float32))
        args = (c, mx.array(a), mx.array(b))
        if has_c:
            y_gpu = on(mx.gpu, mp.addmm, *args, alpha=alpha, beta=beta, precision=precision)
            y_cpu = on(mx.cpu, mp.addmm, *args, alpha=alpha, beta=beta, precision=precision)
        else:
            w = mx.array(np.ascontiguousarray(b.T))  # linear without bias: x @ w.T
            y_gpu = on(mx.gpu, mp.linear, args[1], w, precision=precision)
            y_cpu = on(mx.cpu, mp.linear, args[1], w, precision=precision)
        assert_equal_to_cpu(y_gpu, y_cpu)


@pytest.mark.parametrize("precision", STRICT)
def test_addmm_exact_ties_round_half_to_even(precision):
    # Integer products summing to up to 2^30: many outputs lie exactly halfway
    # between two floats, which no float64 bound can decide; the exact recompute
    # (a warp per output on CUDA) rounds them half to even.
    rng = np.random.default_rng(10)
    M, K, N = 64, 64, 96
    a = rng.integers(-(2**12), 2**12, (M, K))
    b = rng.integers(-(2**12), 2**12, (K, N))
    exact = (a @ b).astype(np.float64)  # |.| < 2^30: exact
    rounded = exact.astype(np.float32)  # numpy rounds half to even
    ties = np.abs(exact - rounded) == np.spacing(np.abs(rounded)).astype(np.float64) / 2
    assert ties.sum() > 100, "the data must contain exact ties"
    args = (mx.zeros((M, N)), mx.array(a.astype(np.float32)), mx.array(b.astype(np.float32)))
    y_gpu = on(mx.gpu, mp.addmm, *args, precision=precision)
    assert_equal_to_cpu(y_gpu, on(mx.cpu, mp.addmm, *args, precision=precision))
    if not ON_METAL:
        assert_bitwise(y_gpu, rounded)


ON_CUDA = mx.cuda.is_available()


def relative_l2(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(y).all()
    return np.linalg.norm(y - ref) / np.linalg.norm(ref)


@pytest.mark.skipif(not ON_CUDA, reason="TF32 is a CUDA matter")
def test_float32_products_on_cuda_are_not_tf32():
    # MLX's CUDA matmuls default to TF32 (10-bit mantissa products, relative
    # error ~5e-4); precision="float32" must stay float32 (~1e-6 here) without
    # touching MLX_ENABLE_TF32. Contiguous, transposed, batched + broadcast
    # (packed) operands, with and without c, gradients included.
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((3, 1, 40, 300)).astype(np.float32)
    b = rng.standard_normal((4, 70, 300)).astype(np.float32)
    c = rng.standard_normal((4, 1, 70)).astype(np.float32)
    bt = mx.array(b).swapaxes(-1, -2)
    y = on(mx.gpu, mp.addmm, mx.array(c), mx.array(a), bt, alpha=0.5, beta=-2.0, precision="float32")
    ref = 0.5 * np.matmul(a.astype(np.float64), b.astype(np.float64).swapaxes(-1, -2)) - 2.0 * c
    assert y.shape == (3, 4, 40, 70)
    assert relative_l2(y, ref) < 1e-5
    x = rng.standard_normal((2, 500, 768)).astype(np.float32)
    w = (rng.standard_normal((384, 768)) * 0.03).astype(np.float32)
    bias = rng.standard_normal(384).astype(np.float32)
    for bb in (None, mx.array(bias)):
        y = on(mx.gpu, mp.linear, mx.array(x), mx.array(w), bb, precision="float32")
        ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if bb is None else bias)
        assert relative_l2(y, ref) < 1e-5
    g = rng.standard_normal((2, 500, 384)).astype(np.float32)
    grad_w = on(mx.gpu, mx.grad(lambda w: (mp.linear(mx.array(x), w, precision="float32")
                                           * mx.array(g)).sum()), mx.array(w))
    ref = np.einsum("bro,bri->oi", g.astype(np.float64), x.astype(np.float64))
    assert relative_l2(grad_w, ref) < 1e-5


@pytest.mark.parametrize("precision", ("float32",) + STRICT)
def test_addmm_empty_inner_dimension(precision):
    rng = np.random.default_rng(8)
    c = mx.array(rng.standard_normal((5, 6)).astype(np.float32))
    a = mx.zeros((5, 0), dtype=mx.float32)
    b = mx.zeros((0, 6), dtype=mx.float32)
    y = on(mx.gpu, mp.addmm, c, a, b, alpha=2.0, beta=-0.5, precision=precision)
    assert_bitwise(y, np.array(c) * np.float32(-0.5))


@pytest.mark.skipif(not ON_CUDA, reason="the chunked float64 product is CUDA's")
@pytest.mark.parametrize("layout", ("linear", "a_transposed_b_row_major"))
def test_extended_addmm_in_chunks_equal_to_cpu(layout):
    # Rows x (N + K) above the product's budget (2^25 doubles): the rows run in
    # chunks that reuse one set of buffers; every output must still equal the CPU's.
    # linear reads both operands along K in place; with a transposed and b
    # row-major the recompute reads the chunk's K-contiguous copies of both.
    rng = np.random.default_rng(9)
    a_n = rng.standard_normal((20000, 1024)).astype(np.float32)
    w_n = (rng.standard_normal((1040, 1024)) * 0.03).astype(np.float32)
    bias = mx.array(rng.standard_normal(1040).astype(np.float32))
    if layout == "linear":
        fn, args = mp.linear, (mx.array(a_n), mx.array(w_n), bias)
    else:
        a_t = mx.array(np.ascontiguousarray(a_n.T)).T
        fn, args = mp.addmm, (bias, a_t, mx.array(np.ascontiguousarray(w_n.T)))
    y_gpu = on(mx.gpu, fn, *args, precision="extended")
    assert_bitwise(y_gpu, on(mx.cpu, fn, *args, precision="extended"))


@pytest.mark.parametrize("precision", STRICT)
def test_batched_operands_strided_along_k(precision):
    # Both operands with a K stride other than 1, batched: the CUDA recompute
    # reads copies of them; heavy cancellation leaves outputs to recompute.
    rng = np.random.default_rng(10)
    a_n = (rng.standard_normal((3, 30, 200)) * np.exp(rng.uniform(-6, 6, (3, 30, 200))))
    a_n = a_n.astype(np.float32)
    b_n = rng.standard_normal((3, 200, 40)).astype(np.float32)
    c_n = rng.standard_normal((40,)).astype(np.float32)
    a = mx.array(np.ascontiguousarray(a_n.swapaxes(-1, -2))).swapaxes(-1, -2)
    args = (mx.array(c_n), a, mx.array(b_n))
    y_gpu = np.array(on(mx.gpu, mp.addmm, *args, alpha=0.5, beta=-2.0, precision=precision))
    ref = np.stack([exact_addmm(c_n, a_n[i], b_n[i], alpha=0.5, beta=-2.0) for i in range(3)])
    assert (y_gpu == ref).mean() >= 0.9999
    assert_equal_to_cpu(y_gpu, on(mx.cpu, mp.addmm, *args, alpha=0.5, beta=-2.0,
                                  precision=precision))


@pytest.mark.skipif(not ON_CUDA, reason="mlx_precise allocates its own device memory on CUDA only")
def test_cuda_outputs_in_counted_device_memory():
    # The CUDA outputs are mlx_precise's own device allocations (MLX's exported
    # malloc gives managed memory): counted by _ext.device_peak_memory, readable
    # on the host (MLX moves them to unified memory), and given back when freed.
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = mx.array(rng.standard_normal((256, 64)).astype(np.float32))
    b = mx.array(rng.standard_normal((64, 96)).astype(np.float32))
    c = mx.array(rng.standard_normal((96,)).astype(np.float32))
    on(mx.gpu, mp.addmm, c, a, b, precision="float32")  # the stream's workspace, kept
    mx.synchronize()
    mp._ext.reset_device_peak_memory()
    held = mp._ext.device_peak_memory()
    y = on(mx.gpu, mp.addmm, c, a, b, precision="float32")
    assert mp._ext.device_peak_memory() >= held + y.nbytes
    ref = np.array(a, np.float64) @ np.array(b, np.float64) + np.array(c, np.float64)
    assert relative_l2(y, ref) < 1e-5
    del y
    mx.synchronize()
    mp._ext.reset_device_peak_memory()
    assert mp._ext.device_peak_memory() == held
