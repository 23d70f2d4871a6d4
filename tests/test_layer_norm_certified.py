"""Extended layer_norm is correctly rounded for every finite input: its three stages
(kernels/layer_norm_certify.h: certified float64, double words, exact comparisons;
dd is the same computation)
against a rigorous reference, on rows built to reach each stage, and the sign of
exact zeros (layer_norm_exact_zero's rule), which every stage and backend follows.

Fresh random inputs each run (MLX_PRECISE_TEST_SEED replays one)."""

import os
import zlib

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from reference import (
    exact_zero_rule,
    hard_layer_norm_rows,
    layer_norm_grad_x_reference,
    layer_norm_reference_mp,
    round_exact_sum,
)

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_layer_norm_certified seed: {SEED}")


@pytest.fixture
def rng(request):
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def arr(v):
    return None if v is None else mx.array(v)


def check(x, w, b, eps, precision="extended"):
    y = np.array(mp.layer_norm(arr(x), arr(w), arr(b), eps=eps, precision=precision))
    expected = layer_norm_reference_mp(x, w, b, eps)
    assert np.all(np.isfinite(y)), "non-finite output"
    np.testing.assert_array_equal(y, expected, err_msg=f"x={x.tolist()} w={w} b={b} eps={eps!r}")
    zeros = exact_zero_rule(x, w, b)
    fixed = ~np.isnan(zeros) & (zeros == 0)
    np.testing.assert_array_equal(np.signbit(y[fixed]), np.signbit(zeros[fixed]),
                                  err_msg=f"zero signs: x={x.tolist()} w={w} b={b}")
    return y


@pytest.mark.parametrize("precision", ["extended", "dd"])
@pytest.mark.parametrize("w_value", [-1.5, -0.0, 0.0, 2.0])
@pytest.mark.parametrize("bias", [None, -0.0, 0.0, 0.25])
def test_exact_zero_outputs_follow_one_rule(precision, w_value, bias):
    # Exact zeros: x_i equal to the mean (N = 0), constant and all-zero rows, and
    # w = +-0 on every row (then the sign of N decides), with and without a bias.
    x = np.float32([[1, 2, 3], [7, 7, 7], [0, 0, 0], [-3e-39, -3e-39, -3e-39], [5, -1, 2]])
    w = np.float32([w_value, w_value, -w_value])
    b = None if bias is None else np.float32([bias, -bias, bias])
    check(x, w, b, 1e-5, precision)
    check(x, None, b, 1e-5, precision)


def test_zero_product_with_mean_off_by_rounding():
    # w = 0 with x_i a hair from the mean at a large offset: the float64 numerator's
    # sign is not certain there, so the exact row sum decides it.
    x = np.float32([[16777216, 16777218, 16777218, 16777216, 16777217]])
    w = np.float32([0, -0.0, 0, -0.0, 0])
    check(x, w, None, 1e-5)
    check(x, w, np.float32([-0.0, -0.0, 0, 0, -0.0]), 1e-5)


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_hard_rows_correctly_rounded(rng, precision):
    for _ in range(12):
        dim = int(rng.choice([2, 3, 5, 16, 33, 100]))
        x = hard_layer_norm_rows(rng, dim)
        w = rng.choice([-2, -1, -0.0, 0.0, 0.5, 3, 1 + 2.0**-23], dim).astype(np.float32)
        b = rng.choice([-0.0, 0.0, 1, -1, 2.0**-30], dim).astype(np.float32)
        eps = float(rng.choice([1e-5, 1e-300, 3.0, 1e-40]))
        check(x, w if rng.random() < 0.7 else None, b if rng.random() < 0.6 else None, eps, precision)


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_bias_gradient_correctly_rounded(rng, precision):
    # grad bias = the column sums of the cotangent, over a wide dynamic range and with
    # cancellation (column 0: +-2^60 cancel, leaving the small terms).
    rows, dim = 40, 9
    g = rng.standard_normal((rows, dim)) * np.exp2(rng.integers(-40, 41, (rows, dim)))
    g[:, 0] = rng.standard_normal(rows) * 2.0**-20
    g[:3, 0] = [2.0**60, 1.0, -(2.0**60)]
    g = g.astype(np.float32)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    b = mx.array(rng.standard_normal(dim).astype(np.float32))
    _, (db,) = mx.vjp(lambda b_: mp.layer_norm(mx.array(x), mx.array(w), b_, precision=precision), [b],
                      [mx.array(g)])
    expected = np.float32([round_exact_sum(g[:, i].astype(np.float64).tolist()) for i in range(dim)])
    np.testing.assert_array_equal(np.array(db).view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_x_correctly_rounded(rng, precision):
    # grad x on rows that reach the exact stage: a mean far above the spread, small
    # integers with integer cotangents (exact zeros and ties), wide dynamic ranges.
    for _ in range(8):
        dim = int(rng.choice([2, 3, 5, 16, 33]))
        x = hard_layer_norm_rows(rng, dim)
        g = (rng.integers(-3, 4, x.shape) if rng.random() < 0.4 else rng.standard_normal(x.shape)).astype(np.float32)
        w = rng.choice([-2, -1, 0.5, 3, 1 + 2.0**-23], dim).astype(np.float32) if rng.random() < 0.7 else None
        eps = float(rng.choice([1e-5, 1e-300, 3.0, 0.0]))
        if eps == 0.0 and np.any(np.all(x == x[:, :1], axis=1)):
            eps = 1e-5
        args = [mx.array(x)] + ([] if w is None else [mx.array(w)])
        _, grads = mx.vjp(lambda x_, *w_: mp.layer_norm(x_, *w_, None, eps=eps, precision=precision), args,
                          [mx.array(g)])
        dx = grads[0]
        expected = layer_norm_grad_x_reference(x, w, g, eps)
        np.testing.assert_array_equal(np.array(dx), expected,
                                      err_msg=f"x={x.tolist()} w={w} g={g.tolist()} eps={eps!r}")
