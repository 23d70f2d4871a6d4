"""Correct rounding for every finite input (issue 15): the reproducers of the fuzz
run, each against an exact reference (sums of float32 products rounded once).

rfft_conv's extended and dd modes certify every output against a rigorous bound
on the transform's error and recompute the rest exactly, so both give the
correctly rounded float32 of the exact convolution: the same bits."""

import math

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from reference import round_exact_sum

CERTIFIED = ("extended", "dd")


def A(*v):
    return mx.array(np.float32(v))


def exact_conv(u, k, n=None, bias=None):
    """Correctly rounded rfft_conv(u, k, n, bias) of 1-D rows, by direct exact sums."""
    u = np.asarray(u, np.float32).astype(np.float64)
    k = np.asarray(k, np.float32).astype(np.float64)
    L, Lk = len(u), len(k)
    d = None if bias is None else np.broadcast_to(np.asarray(bias, np.float32).astype(np.float64), u.shape)
    out = np.empty(L, np.float32)
    for t in range(L):
        if n is None:
            terms = [u[t - j] * k[j] for j in range(min(t + 1, Lk))]
        else:
            # Circular form: entries of the size-n cyclic convolution of the padded rows.
            terms = [u[(t - j) % n] * k[j] for j in range(Lk) if (t - j) % n < L]
        if d is not None:
            terms.append(u[t] * d[t])
        out[t] = round_exact_sum(terms)
    return out


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("precision", CERTIFIED)
@pytest.mark.parametrize(
    "u, k, kw",
    [
        # 1: overflowing intermediates (dd used to give NaN).
        ((1e38, 1e38, 1e38), (1e-10, 1e-10), {}),
        # 2: an output tiny against its row's norm.
        ((1.0,), (1e-3, 1e12), {"n": 2}),
        # 3: a single product many orders below the row.
        ((1.8735262e-09, -4432703.5, 1311.5856, 901085120.0), (179220398080.0,), {}),
        # 4: subnormal inputs and outputs.
        ((1e-40, 0.0, 0.0), (1.0, 0.5), {}),
        # 5: an exact zero with a bias.
        ((0.0, -3.0, 8.0, -2.0, 3.0), (-2.0, -1.0), {"bias": (-0.13796507,)}),
        # 6: structural zeros.
        ((0.0, 0.0, 0.0, 0.1), (0.0, 0.3), {}),
    ],
)
def test_issue_reproducers_are_correctly_rounded(precision, u, k, kw):
    bias = kw.get("bias")
    y = mp.rfft_conv(A(*u), A(*k), n=kw.get("n"), bias=None if bias is None else A(*bias), precision=precision)
    expected = exact_conv(u, k, n=kw.get("n"), bias=bias)
    np.testing.assert_array_equal(bits(y), bits(expected))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_tiny_rows_keep_full_accuracy(precision):
    # Reproducer 4: data near 1e-19 convolved with itself (products near 1e-38, far
    # below float32's normal range in between) must be as accurate as the same data
    # scaled by 2^80: correctly rounded, and exactly 2^-160 times the scaled result.
    x = (np.random.default_rng(0).standard_normal(64) * 1e-19).astype(np.float32)
    y = np.array(mp.rfft_conv(mx.array(x), mx.array(x), precision=precision))
    np.testing.assert_array_equal(bits(y), bits(exact_conv(x, x)))
    big = (x.astype(np.float64) * 2.0**80).astype(np.float32)
    y_big = np.array(mp.rfft_conv(mx.array(big), mx.array(big), precision=precision))
    np.testing.assert_array_equal(bits(y_big), bits(exact_conv(big, big)))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_exact_ties_round_half_to_even_with_a_bias(rng, precision):
    # Integers up to 2^12: outputs reach 2^32, where float32 integers are spaced by up
    # to 2^8, so many exact results fall exactly halfway between two floats.
    L = 256
    u = rng.integers(-(2**12), 2**12, size=L).astype(np.float32)
    k = rng.integers(-(2**12), 2**12, size=L).astype(np.float32)
    d = rng.integers(-(2**12), 2**12, size=L).astype(np.float32)
    exact = np.convolve(u.astype(np.int64), k.astype(np.int64))[:L] + u.astype(np.int64) * d.astype(np.int64)
    as_float = exact.astype(np.float64)  # exact: |exact| < 2^53
    lower = as_float.astype(np.float32)
    ties = np.sum([math.isclose(abs(float(a) - float(b)), float(np.spacing(b)) / 2, rel_tol=0) for a, b in zip(as_float, lower)])
    assert ties > 0, "the data must contain exact ties"
    y = np.array(mp.rfft_conv(mx.array(u), mx.array(k), bias=mx.array(d), precision=precision))
    np.testing.assert_array_equal(bits(y), bits(as_float.astype(np.float32)))  # numpy rounds half to even


def test_extended_and_dd_give_the_same_bits(rng):
    u = (rng.standard_normal((3, 300)) * np.exp(rng.uniform(-30, 30, (3, 1)))).astype(np.float32)
    k = (rng.standard_normal((3, 300)) * np.exp(-np.arange(300) / 30)).astype(np.float32)
    d = rng.standard_normal(300).astype(np.float32)
    ext = np.array(mp.rfft_conv(mx.array(u), mx.array(k), bias=mx.array(d), precision="extended"))
    dd = np.array(mp.rfft_conv(mx.array(u), mx.array(k), bias=mx.array(d), precision="dd"))
    np.testing.assert_array_equal(bits(ext), bits(dd))
    for r in range(3):
        np.testing.assert_array_equal(bits(ext[r]), bits(exact_conv(u[r], k[r], bias=d)))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_gradients_and_bias_gradient_are_correctly_rounded(rng, precision):
    # Dynamic range across the row makes many outputs tiny against the row's norm.
    L = 48
    u = (rng.standard_normal(L) * 10.0 ** rng.uniform(-8, 8, L)).astype(np.float32)
    k = (rng.standard_normal(L) * 10.0 ** rng.uniform(-8, 8, L)).astype(np.float32)
    g = (rng.standard_normal(L) * 10.0 ** rng.uniform(-8, 8, L)).astype(np.float32)
    d = rng.standard_normal(L).astype(np.float32)

    def loss(u, k, d):
        return mx.sum(mp.rfft_conv(u, k, bias=d, precision=precision) * mx.array(g))

    gu, gk, gd = mx.grad(loss, argnums=(0, 1, 2))(mx.array(u), mx.array(k), mx.array(d))
    u64, k64, g64, d64 = (x.astype(np.float64) for x in (u, k, g, d))
    # grad u[s] = sum_t g[t] k[t - s] + g[s] d[s]; grad k[j] = sum_t g[t] u[t - j].
    ref_u = [round_exact_sum([g64[t] * k64[t - s] for t in range(s, L)] + [g64[s] * d64[s]]) for s in range(L)]
    ref_k = [round_exact_sum([g64[t] * u64[t - j] for t in range(j, L)]) for j in range(L)]
    ref_d = [round_exact_sum([g64[t] * u64[t]]) for t in range(L)]
    np.testing.assert_array_equal(bits(gu), bits(ref_u))
    np.testing.assert_array_equal(bits(gk), bits(ref_k))
    np.testing.assert_array_equal(bits(gd), bits(ref_d))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_zero_signs_follow_exact_sums(precision):
    # An exact zero is +0 (as any float sum of products that cancel gives); a result
    # too small for float32 keeps its sign (-0 for a negative one).
    y = mp.rfft_conv(A(1e-30, -1e-30), A(1e-30, 1e-30), precision=precision)
    np.testing.assert_array_equal(bits(y), bits(np.float32([1e-60, 0.0])))
    y = mp.rfft_conv(A(-1e-30, 0.0), A(1e-30,), precision=precision)
    np.testing.assert_array_equal(bits(y), bits(np.float32([-0.0, 0.0])))
