"""Correct rounding for every finite input (issue 15): the reproducers of the fuzz
run, each against an exact reference (sums of float32 products rounded once).

rfft_conv's and the strict ops' extended and dd modes certify every output
against a rigorous bound on the float64 computation's error and recompute the
rest exactly, so both give the correctly rounded float32 of the exact result:
the same bits (dd is computed as extended where float64 exists: README, "The dd
contract")."""

import math

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from reference import exact_conv, layer_norm_reference_mp, round_exact_sum

CERTIFIED = ("extended", "dd")


def A(*v):
    return mx.array(np.float32(v))


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


@pytest.mark.parametrize("precision", CERTIFIED)
def test_zero_rows_convolve_to_exact_zeros(rng, precision):
    # A zero operand row gives exact zeros (+0) plus the row's bias products, each
    # rounded once: certified as such, not left open (each open output would be
    # recomputed from its O(L) zero products). Negative zeros and a zero kernel too.
    L = 96
    u = rng.standard_normal((4, L)).astype(np.float32)
    u[1] = 0.0
    u[2] = -0.0
    k = rng.standard_normal((4, L)).astype(np.float32)
    k[3] = -0.0
    d = (rng.standard_normal(L) * 10.0 ** rng.uniform(-20, 20, L)).astype(np.float32)
    d[::3] = -0.0
    y = np.array(mp.rfft_conv(mx.array(u), mx.array(k), bias=mx.array(d), precision=precision))
    for r in range(4):
        np.testing.assert_array_equal(bits(y[r]), bits(exact_conv(u[r], k[r], bias=d)))
    np.testing.assert_array_equal(bits(y[1]), bits(np.zeros(L, np.float32)))
    # Gradients: a zero cotangent row reduces to exact zeros in both gradients.
    g = rng.standard_normal((4, L)).astype(np.float32)
    g[0] = 0.0
    gu, gk = mx.grad(lambda u, k: mx.sum(mp.rfft_conv(u, k, precision=precision) * mx.array(g)), argnums=(0, 1))(
        mx.array(u), mx.array(k)
    )
    np.testing.assert_array_equal(bits(gu[0]), bits(np.zeros(L, np.float32)))
    np.testing.assert_array_equal(bits(gk[0]), bits(np.zeros(L, np.float32)))


# ---------------------------------------------------------------- strict ops ----


@pytest.mark.parametrize("precision", CERTIFIED)
def test_addmm_overflow_reproducers(precision):
    # 1: overflowing float pairs used to give NaN in dd.
    y = mp.addmm(mx.zeros((1, 1)), mx.array([[3e38, 3e38]]), mx.array([[1.0], [1.0]]), precision=precision)
    assert np.array(y)[0, 0] == np.inf
    y = mp.addmm(mx.zeros((1, 1)), mx.array([[3e38]]), mx.array([[1e10]]), alpha=1e-20, precision=precision)
    np.testing.assert_array_equal(bits(y), bits([[round_exact_sum([3e38 * 1e10 * float(np.float32(1e-20))])]]))


@pytest.mark.parametrize("precision", ("float32", "extended", "dd"))
def test_addmm_beta_zero_ignores_c(precision):
    # 7: as mx.addmm and torch, beta = 0 ignores c, NaN and Inf included.
    for bad in (np.nan, np.inf):
        c = mx.array(np.float32([[bad]]))
        y = mp.addmm(c, mx.array([[1.0]]), mx.array([[2.0]]), beta=0.0, precision=precision)
        np.testing.assert_array_equal(np.array(y), np.array(mx.addmm(c, mx.array([[1.0]]), mx.array([[2.0]]), beta=0.0)))
        assert np.array(y)[0, 0] == 2.0


@pytest.mark.parametrize("precision", CERTIFIED)
@pytest.mark.parametrize(
    "x, w, eps",
    [
        # 1: overflow in the weight product and in the squares.
        ([[1.0, 2.0, 3.0]], [3e38] * 3, 1e-5),
        ([[3e38, -3e38, 1e38]], None, 1e-5),
        # 4: subnormal rows, eps = 0.
        ([[1e-39, 2e-39, 4e-39]], None, 0.0),
        # tiny rows with eps dominating the variance
        ([[1e-30, -2e-30, 5e-31]], None, 1e-5),
    ],
)
def test_layer_norm_range_reproducers(precision, x, w, eps):
    x = np.float32(x)
    w = None if w is None else np.float32(w)
    y = mp.layer_norm(mx.array(x), None if w is None else mx.array(w), None, eps=eps, precision=precision)
    np.testing.assert_array_equal(bits(y), bits(layer_norm_reference_mp(x, w, None, eps)))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_layer_norm_exact_ties_round_half_to_even(precision):
    # (x - mean)/std = -1, +1 exactly; + 2^-24 puts 1 + 2^-24 exactly between 1 and
    # its successor: half to even gives 1.
    x = mx.array(np.float32([[0, 2], [4, 6]]))
    y = mp.layer_norm(x, None, mx.array(np.float32([2**-24, 2**-24])), eps=0.0, precision=precision)
    np.testing.assert_array_equal(np.array(y), np.float32([[-(1 - 2**-24), 1.0]] * 2))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_layer_norm_correctly_rounded_near_ties(rng, precision):
    # 14: rows whose outputs sit within a few float64 ulps of a float32 midpoint.
    # Built by solving for a bias that puts each output there.
    D = 16
    x = rng.standard_normal((24, D)).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    base = layer_norm_reference_mp(x, w, None, 1e-5).astype(np.float64)
    # A bias that moves every output of row 0 next to a midpoint of its float32 grid.
    mid = base[0] + np.spacing(np.abs(base[0]).astype(np.float32)).astype(np.float64) / 2
    b = (mid - base[0]).astype(np.float32)
    y = mp.layer_norm(mx.array(x), mx.array(w), mx.array(b), eps=1e-5, precision=precision)
    np.testing.assert_array_equal(bits(y), bits(layer_norm_reference_mp(x, w, b, 1e-5)))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_fused_jvp_is_correctly_rounded(rng, precision):
    # The jvp conv(du, k) + conv(u, dk) + du*D + u*dD is one fused evaluation
    # (ConvolveSum), rounded once: compare with the exact sum of all its products.
    L = 40
    u, k, d, du, dk, dd = ((rng.standard_normal(L) * 10.0 ** rng.uniform(-6, 6, L)).astype(np.float32) for _ in range(6))
    _, (tangent,) = mx.jvp(
        lambda u, k, d: mp.rfft_conv(u, k, bias=d, precision=precision),
        [mx.array(u), mx.array(k), mx.array(d)],
        [mx.array(du), mx.array(dk), mx.array(dd)],
    )
    u64, k64, d64, du64, dk64, dd64 = (x.astype(np.float64) for x in (u, k, d, du, dk, dd))
    expected = [
        round_exact_sum(
            [du64[t - j] * k64[j] for j in range(t + 1)]
            + [u64[t - j] * dk64[j] for j in range(t + 1)]
            + [du64[t] * d64[t], u64[t] * dd64[t]]
        )
        for t in range(L)
    ]
    np.testing.assert_array_equal(bits(tangent), bits(expected))


@pytest.mark.parametrize("precision", CERTIFIED)
def test_recompute_counts_count_the_outputs_that_did_not_certify(rng, precision):
    """mlx_precise._ext.testing.recompute_counts (the CPU's exact-fallback counter):
    an exact tie (1 + 2^-24, between two floats) cannot certify and is recomputed;
    outputs far from a rounding boundary certify; every certified output is counted."""
    testing = mp._ext.testing
    tie = A(1.0, 2.0**-24)
    with mx.stream(mx.cpu):
        testing.reset_recompute_counts()
        out = mp.addmm(A(0.0), tie[None], A(1.0, 1.0)[:, None], precision=precision)
        conv = mp.rfft_conv(tie, A(1.0, 1.0), precision=precision)
        mx.eval(out, conv)
        counts = testing.recompute_counts()
        assert counts == {"addmm": (1, 1), "rfft_conv": (1, 2)}
        assert bits(out).tolist() == [bits(A(1.0)).tolist()]
        assert bits(conv).tolist() == bits(A(1.0, 1.0)).tolist()
        testing.reset_recompute_counts()
        a = mx.array(rng.standard_normal((40, 24)).astype(np.float32))
        mx.eval(mp.addmm(A(0.5), a, a.T, precision=precision))
        recomputed, outputs = testing.recompute_counts()["addmm"]
        assert outputs == 40 * 40 and recomputed < outputs
