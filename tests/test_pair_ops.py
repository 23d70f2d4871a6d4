"""Pair ops (mlx_precise.pair): each op's carried value against a reference accurate far
below the pair's 2^-48, on fresh random inputs (the seed is printed).

Inputs with a nonzero lo part come from exact products: a float32 times a float32 is a
48-bit number, which a pair holds exactly (checked first)."""

import math
import os
import zlib

import mlx.core as mx
import numpy as np
import pytest

from mlx_precise import pair
from mlx_precise.pair import Pair

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_pair_ops seed: {SEED}")

# The pair's own rounding (hi + lo keeps 48 bits or more) plus the double op's.
PAIR_RELATIVE = 2.0**-47


@pytest.fixture
def rng(request):
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def value(p: Pair) -> np.ndarray:
    """The carried value hi + lo, exactly (as long double: 64-bit significand)."""
    return np.asarray(p.hi).astype(np.longdouble) + np.asarray(p.lo).astype(np.longdouble)


def check_pair(p: Pair, reference, scale=None, bound=PAIR_RELATIVE, what=""):
    """Normalised (hi = float32(hi + lo)), finite, and within bound of the reference,
    relative to |reference| (or to `scale` where values may cancel)."""
    hi, lo = np.asarray(p.hi), np.asarray(p.lo)
    assert np.all(np.isfinite(hi)) and np.all(np.isfinite(lo)), f"{what}: non-finite"
    np.testing.assert_array_equal((hi.astype(np.float64) + lo).astype(np.float32), hi)
    reference = np.asarray(reference, dtype=np.longdouble)
    denominator = np.abs(reference) if scale is None else scale
    error = np.max(np.abs(value(p) - reference) / denominator)
    rounded = np.mean(hi == reference.astype(np.float32))
    print(f"{what}: worst error {float(error):.2e} (bound {bound:.1e}), "
          f"hi == float32(reference) for {rounded:.6%}")
    assert error <= bound, what
    return rounded


def exact_products(rng, shape, scale=1.0):
    """A pair holding a * b exactly for random float32 a, b, and that value."""
    a = (scale * rng.standard_normal(shape)).astype(np.float32)
    b = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    p = pair.multiply(mx.array(a), mx.array(b))
    exact = a.astype(np.longdouble) * b.astype(np.longdouble)
    np.testing.assert_array_equal(value(p), exact)
    return p, exact


def test_add_multiply_broadcast(rng):
    x, xv = exact_products(rng, (3, 1, 40))
    y, yv = exact_products(rng, (5, 40))
    check_pair(x + y, xv + yv, scale=np.abs(xv) + np.abs(yv), what="add")
    check_pair(x * y, xv * yv, what="multiply")
    check_pair(x * mx.array(np.float32(3.0)), 3 * xv, what="pair * float32")


@pytest.mark.parametrize("op", ["sin", "exp", "tanh", "gelu"])
def test_unary_against_mpmath(rng, op):
    mpmath = pytest.importorskip("mpmath")
    x, xv = exact_products(rng, (2, 500), scale=3.0)
    x = x.transpose(1, 0)  # strided input
    xv = xv.T
    functions = {
        "sin": mpmath.sin,
        "exp": mpmath.exp,
        "tanh": mpmath.tanh,
        "gelu": lambda v: v / 2 * mpmath.erfc(-v / mpmath.sqrt(2)),
    }
    with mpmath.workdps(40):
        reference = np.array(
            [[float(functions[op](mpmath.mpf(float(v)))) for v in row] for row in xv]
        )
    # gelu: erfc(-x/sqrt 2) has condition number about x^2 for negative x, so the
    # double rounding of its argument costs up to x^2 2^-53 (torch's float64 gelu, which
    # rounds the same argument, pays the same).
    # Below 2^-100 the lo part is subnormal (float32's range): an absolute floor.
    scale = np.abs(reference) * (1 + (xv**2 if op == "gelu" else 0))
    check_pair(getattr(pair, op)(x), reference, np.maximum(scale, 2.0**-100), what=op)


def test_linear_and_addmm(rng):
    x, xv = exact_products(rng, (2, 9, 48))
    w = rng.standard_normal((24, 48)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    reference = xv @ w.T.astype(np.longdouble) + b
    scale = np.abs(xv) @ np.abs(w.T).astype(np.longdouble) + np.abs(b)
    y = pair.linear(x, mx.array(w), mx.array(b))
    assert y.shape == (2, 9, 24)
    # float64 GEMM: error below K u |x||w| (u = 2^-53), then the pair's 2^-48.
    check_pair(y, reference, scale, bound=48 * 2.0**-53 + PAIR_RELATIVE, what="linear")
    # Batched, broadcast c (the Monarch block-diagonal form of M2-BERT).
    a, av = exact_products(rng, (4, 7, 16))
    bm = rng.standard_normal((4, 16, 6)).astype(np.float32)
    c = rng.standard_normal((4, 1, 6)).astype(np.float32)
    reference = av @ bm.astype(np.longdouble) + c
    scale = np.abs(av) @ np.abs(bm).astype(np.longdouble) + np.abs(c)
    y = pair.addmm(mx.array(c), a, mx.array(bm))
    check_pair(y, reference, scale, bound=16 * 2.0**-53 + PAIR_RELATIVE, what="addmm")


def test_layer_norm(rng):
    x, xv = exact_products(rng, (6, 64))
    x = x + mx.array(np.float32(5.0))  # an offset mean
    xv = value(x)  # the carried input, itself rounded by the add
    w = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    mean = xv.mean(-1, keepdims=True)
    centered = xv - mean
    normalised = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + np.longdouble(1e-5))
    reference = normalised * w + b
    y = pair.layer_norm(x, mx.array(w), mx.array(b), 1e-5)
    # Errors of the centring are absolute, on the scale of the row's largest output.
    scale = np.max(np.abs(normalised * w) + np.abs(b), axis=-1, keepdims=True)
    check_pair(y, reference, scale, bound=2.0**-46, what="layer_norm")


@pytest.mark.parametrize("n", [None, 64])
def test_rfft_conv(rng, n):
    u, uv = exact_products(rng, (2, 3, 32))
    taps = 64 if n else 5
    k, kv = exact_products(rng, (3, taps))
    d = rng.standard_normal((3, 1)).astype(np.float32)
    y = pair.rfft_conv(u, k, n=n, bias=mx.array(d))
    reference = np.zeros(uv.shape, dtype=np.longdouble)
    scale = np.zeros(uv.shape, dtype=np.longdouble)
    for t in range(32):
        for j in range(taps):
            s = t - j if n is None else (t - j) % n
            if 0 <= s < 32:
                reference[..., t] += uv[..., s] * kv[:, j]
                scale[..., t] += np.abs(uv[..., s] * kv[:, j])
    reference += uv * d
    scale = np.max(scale + np.abs(uv * d))
    check_pair(y, reference, scale, bound=2.0**-46, what=f"rfft_conv n={n}")


def test_nn_layers_carry_pairs(rng):
    import mlx_precise.nn as pnn

    x, xv = exact_products(rng, (3, 16))
    linear = pnn.Linear(16, 8, precision="exact")
    norm = pnn.LayerNorm(8, precision="exact")
    y = norm(linear(x))
    assert isinstance(y, Pair)
    h = pair.linear(x, linear.weight, linear.bias)
    expected = pair.layer_norm(h, norm.weight, norm.bias, norm.eps)
    np.testing.assert_array_equal(np.asarray(y.hi), np.asarray(expected.hi))
    np.testing.assert_array_equal(np.asarray(y.lo), np.asarray(expected.lo))
    with pytest.raises(ValueError, match="precision must be one of"):
        pnn.Linear(4, 4, precision="float64")


def test_float32_input_is_exact_pair():
    x = mx.array(np.float32([1.5, -2.25]))
    p = pair.as_pair(x)
    assert np.array_equal(np.asarray(p.hi), np.asarray(x))
    assert np.all(np.asarray(p.lo) == 0)
    assert p.to_float32() is p.hi


def test_errors():
    x = mx.array(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="float32"):
        pair.sin(x.astype(mx.float16))
    with pytest.raises(TypeError, match="mlx.core.array"):
        Pair([1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        Pair(x, x[:1])
    with pytest.raises(ValueError, match="broadcast"):
        pair.add(x, mx.ones((4,), dtype=mx.float32))
    with pytest.raises(ValueError, match="features"):
        pair.linear(x, mx.ones((4, 5), dtype=mx.float32))
    with pytest.raises(ValueError, match="n = 2"):
        pair.rfft_conv(x, x, n=2, bias=None)
    with pytest.raises(ValueError, match="forward-mode"):
        mx.jvp(lambda v: pair.sin(v).to_float32(), [x], [x])
