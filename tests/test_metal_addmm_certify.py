"""Metal's certified float-pair addmm / linear, run on the CPU (no Mac here).

Metal has no float64: its extended and dd addmm sum each output as a float-pair
dot product with a running error bound (kernels/addmm_pair.h), certify it
(certified_round_pair) and recompute the rest exactly (ExactSum). The kernels'
own code runs here (mlx_precise._ext.testing.metal_certified_addmm), and every
output must be the correctly rounded float32 of the exact alpha a @ b + beta c
(Fractions), as the CPU's extended addmm gives. A bound shrunk below the true
error must make these tests fail (test_shrunk_bound_is_caught).
"""

from fractions import Fraction

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from mlx_precise import _ext
from reference import _float32_of_fraction

NO_C = np.zeros(0, np.float32)


def metal_addmm(a, b, c=None, alpha=1.0, beta=1.0, err_scale=1.0):
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    m, k = a.shape
    n = b.shape[1]
    cc = NO_C if c is None else np.ascontiguousarray(np.broadcast_to(np.float32(c), (m, n)))
    y, open_ = _ext.testing.metal_certified_addmm(
        a.ravel(), b.ravel(), cc.ravel(), m, k, n, np.float32(alpha), np.float32(beta), err_scale
    )
    return y.reshape(m, n), open_.reshape(m, n).astype(bool)


def exact_addmm(a, b, c=None, alpha=1.0, beta=1.0):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    m, k = a.shape
    n = b.shape[1]
    fa = [[Fraction(float(v)) for v in row] for row in a]
    fb = [[Fraction(float(v)) for v in row] for row in b]
    al, be = Fraction(float(np.float32(alpha))), Fraction(float(np.float32(beta)))
    cc = None if c is None else np.broadcast_to(np.float32(c), (m, n))
    y = np.empty((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            s = al * sum(fa[i][p] * fb[p][j] for p in range(k))
            if cc is not None:
                s += be * Fraction(float(cc[i, j]))
            y[i, j] = _float32_of_fraction(s)
    return y


def assert_same_values(y, ref):
    """Bits equal, except that a zero's sign is not asserted (exact zeros are +0)."""
    assert not np.any(np.isnan(y)), "NaN output"
    same = (y.view(np.uint32) == ref.view(np.uint32)) | ((y == 0) & (ref == 0))
    bad = np.argwhere(~same)
    assert bad.size == 0, f"{len(bad)} outputs differ, first {bad[0]}: {y[tuple(bad[0])]!r} vs {ref[tuple(bad[0])]!r}"


def cancelling(rng, m, k, n, scale):
    """Rows whose products cancel by about 2^scale: pairs x, -x plus a small remainder."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    half = k // 2
    a[:, half : 2 * half] = a[:, :half]
    b[half : 2 * half] = -b[:half]
    a[:, :half] *= np.float32(2.0**scale)
    a[:, half : 2 * half] *= np.float32(2.0**scale)
    return a, b


@pytest.mark.parametrize(
    "a, b, c, alpha, beta",
    [
        ([[3e38, 3e38]], [[1.0], [1.0]], None, 1.0, 1.0),  # overflow: inf
        ([[3e38]], [[1e10]], None, 1e-20, 1.0),  # overflowing pair, finite result
        ([[1.0]], [[2.0]], [[np.nan]], 1.0, 0.0),  # beta = 0: the front end drops c
        ([[1e-20, 1e-20]], [[1e-20], [1e-21]], None, 1.0, 1.0),  # subnormal result
        ([[1e-40]], [[0.5]], [[1e-45]], 1.0, 1.0),  # subnormal inputs
        ([[1.0, 2.0**-24]], [[1.0], [1.0]], None, 1.0, 1.0),  # a tie: to even
        ([[1.0, 2.0**-24, 2.0**-60]], [[1.0], [1.0], [1.0]], None, 1.0, 1.0),  # just past a tie
        ([[1e30, 1.0, -1e30]], [[1.0], [1.0], [1.0]], None, 1.0, 1.0),  # cancellation 2^100
        ([[0.0, -0.0]], [[1.0], [-1.0]], [[0.0]], -1.0, 1.0),  # exact zero
        ([[1.0, 1.0]], [[2.0**100], [-(2.0**100)]], [[3.0]], 1.0, -(2.0**-30)),  # only beta c survives
    ],
)
def test_reproducers(a, b, c, alpha, beta):
    a = np.float32(a)
    b = np.float32(b)
    if beta == 0.0:
        c = None  # as mlx_precise's front end: beta = 0 ignores c, NaN included
    y, _ = metal_addmm(a, b, c, alpha, beta)
    assert_same_values(y, exact_addmm(a, b, c, alpha, beta))


def test_front_end_drops_c_when_beta_is_zero():
    y = mp.addmm(mx.array([[np.nan]]), mx.array([[1.0]]), mx.array([[2.0]]), beta=0.0, precision="extended")
    assert np.asarray(y)[0, 0] == 2.0


@pytest.mark.parametrize("scale", [0, 12, 24, 40, 60])
def test_random_and_cancelling(scale):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    m, k, n = 6, 33, 5
    a, b = cancelling(rng, m, k, n, scale)
    c = rng.standard_normal((m, n)).astype(np.float32)
    alpha = np.float32(rng.standard_normal())
    beta = np.float32(rng.standard_normal())
    y, open_ = metal_addmm(a, b, c, alpha, beta)
    assert_same_values(y, exact_addmm(a, b, c, alpha, beta))
    if scale == 0:
        assert open_.mean() <= 0.05, f"open fraction {open_.mean():.3f} on random data"


def test_wide_range():
    """Elements, alpha, beta and c of random binary scales 2^-149...2^99 (products from
    subnormal to past FLT_MAX), K from 0 to 40."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        m, k, n = 3, int(rng.integers(0, 41)), 3
        a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-100, 60, (m, k)))).astype(np.float32)
        b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-60, 60, (k, n)))).astype(np.float32)
        c = (rng.standard_normal((m, n)) * np.exp2(rng.integers(-149, 100, (m, n)))).astype(np.float32)
        alpha = np.float32(rng.standard_normal() * 2.0 ** int(rng.integers(-40, 40)))
        beta = np.float32(rng.standard_normal() * 2.0 ** int(rng.integers(-40, 40)))
        y, _ = metal_addmm(a, b, c, alpha, beta)
        assert_same_values(y, exact_addmm(a, b, c, alpha, beta))


def test_underflowing_product_scaled_by_a_large_alpha():
    """a b underflows (about 2^-136: its residual is lost, < 2^-150) and alpha = -1.7e10
    scales that loss to 2^-15 of the output: the bound must scale its underflow term by
    |alpha| too (found by test_wide_range, numpy seed 74)."""
    a = np.array([[2438414710]], np.uint32).view(np.float32)
    b = np.array([[2851980974]], np.uint32).view(np.float32)
    c = np.array([[1e-45]], np.float32)
    alpha = np.array(3497882422, np.uint32).view(np.float32)
    beta = np.array(1163584497, np.uint32).view(np.float32)
    y, _ = metal_addmm(a, b, c, alpha, beta)
    assert_same_values(y, exact_addmm(a, b, c, alpha, beta))


def test_integer_ties():
    """Small integers sum exactly; 2^24 + 1 and friends land on float32 ties."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = rng.integers(-(2**12), 2**12, (8, 16)).astype(np.float32)
    b = rng.integers(-(2**12), 2**12, (16, 8)).astype(np.float32)
    c = (np.float32(2**24) + rng.integers(-3, 4, (8, 8))).astype(np.float32)
    y, _ = metal_addmm(a, b, c, 1.0, 1.0)
    assert_same_values(y, exact_addmm(a, b, c))


def test_subnormal_and_near_overflow_scales():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    for sa, sb in [(2.0**-70, 2.0**-70), (2.0**-140, 1.0), (2.0**63, 2.0**63), (2.0**120, 2.0**7)]:
        a = (rng.standard_normal((4, 9)) * sa).astype(np.float32)
        b = (rng.standard_normal((9, 4)) * sb).astype(np.float32)
        y, _ = metal_addmm(a, b, None, 1.0, 1.0)
        assert_same_values(y, exact_addmm(a, b))


def test_matches_cpu_extended():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a, b = cancelling(rng, 5, 20, 7, 30)
    c = rng.standard_normal((5, 7)).astype(np.float32)
    y, _ = metal_addmm(a, b, c, 0.5, 2.0)
    cpu = np.asarray(mp.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=0.5, beta=2.0, precision="extended"))
    assert_same_values(y, cpu)


def absorbing(rng, m, n, big, small):
    """Rows X1, X2, y, -X1, -X2 with X1 ~ 2^big, X2 ~ 2^(big - 25), y ~ 2^small: the
    pair X1 + X2 fills its 48 bits, so adding y loses y's bits below about
    2^(big - 48), which the exact sum keeps (cancellation by 2^(big - small))."""
    x1 = (rng.standard_normal((m, n)) * 2.0**big).astype(np.float32)
    x2 = (rng.standard_normal((m, n)) * 2.0 ** (big - 25)).astype(np.float32)
    y = (rng.standard_normal((m, n)) * 2.0**small).astype(np.float32)
    a = np.stack([x1, x2, y, -x1, -x2], axis=2).reshape(m * n, 5)
    return a, np.ones((5, 1), np.float32)


def test_absorbed_terms():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a, b = absorbing(rng, 8, 8, 40, 0)
    y, open_ = metal_addmm(a, b)
    assert_same_values(y, exact_addmm(a, b))
    assert open_.all(), "a pair error near 2^-8 against outputs near 1 must never certify"


def test_shrunk_bound_is_caught():
    """With the bound shrunk 2^20 times, absorbed outputs certify with wrong bits, which
    the exact comparisons of this file catch; with the real bound they are open."""
    rng = np.random.default_rng(1)
    a, b = absorbing(rng, 8, 8, 40, 0)
    ref = exact_addmm(a, b)
    y_shrunk, open_shrunk = metal_addmm(a, b, err_scale=2.0**-20)
    wrong = (y_shrunk.view(np.uint32) != ref.view(np.uint32)).sum()
    print(f"shrunk bound: {wrong} of {ref.size} outputs wrong, {open_shrunk.sum()} open")
    assert wrong > 0, "a bound 2^20 times too small went unnoticed"
