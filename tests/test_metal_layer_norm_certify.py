"""Metal's certified float-pair layer_norm, run on the CPU (no Mac here).

Metal has no float64: its extended and dd layer_norm compute each row's statistics
in float pairs on the row scaled by a power of two, bound every output's error
(kernels/layer_norm_pair.h), certify it (certified_round_pair) and round the rest
exactly (kernels/exact_layer_norm.h, big integers). The kernels' own code runs here
(mlx_precise._ext.testing.metal_certified_layer_norm), and every output must be the
correctly rounded float32 (tests/reference.py's rigorous reference) and equal to the
CPU's certified extended layer_norm bit for bit. A bound shrunk below the true error
must make these tests fail (test_shrunk_bound_is_caught).

Fresh random inputs each run (MLX_PRECISE_TEST_SEED replays one)."""

import os
import zlib

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from mlx_precise import _ext
from reference import exact_zero_rule, hard_layer_norm_rows, layer_norm_reference_mp, round_exact_sum

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_metal_layer_norm_certify seed: {SEED}")

NONE = np.zeros(0, np.float32)


@pytest.fixture
def rng(request):
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def metal_layer_norm(x, w=None, b=None, eps=1e-5, err_scale=1.0):
    x = np.ascontiguousarray(x, np.float32)
    dim = x.shape[-1]
    w = NONE if w is None else np.ascontiguousarray(w, np.float32)
    b = NONE if b is None else np.ascontiguousarray(b, np.float32)
    y, open_ = _ext.testing.metal_certified_layer_norm(x.ravel(), w, b, dim, eps, err_scale)
    return y.reshape(x.shape), open_.reshape(x.shape).astype(bool)


def cpu_layer_norm(x, w=None, b=None, eps=1e-5):
    a = lambda v: None if v is None else mx.array(np.float32(v))  # noqa: E731
    return np.array(mp.layer_norm(a(x), a(w), a(b), eps=eps, precision="extended"))


def assert_same_bits(y, ref, what):
    same = y.view(np.uint32) == ref.view(np.uint32)
    bad = np.argwhere(~same)
    assert bad.size == 0, f"{what}: {len(bad)} outputs differ, first {bad[0]}: {y[tuple(bad[0])]!r} vs {ref[tuple(bad[0])]!r}"


def check(x, w=None, b=None, eps=1e-5, reference=True):
    """Metal's outputs equal the CPU's certified ones bit for bit (zeros' signs
    included) and, where asked, the rigorous reference; returns the open mask."""
    x = np.asarray(x, np.float32)
    y, open_ = metal_layer_norm(x, w, b, eps)
    assert not np.any(np.isnan(y)), f"NaN output for x={x.tolist()}"
    assert_same_bits(y, cpu_layer_norm(x, w, b, eps), f"against the CPU, x={x.tolist()} w={w} b={b} eps={eps!r}")
    if reference:
        np.testing.assert_array_equal(y, layer_norm_reference_mp(x, w, b, eps), err_msg=f"x={x.tolist()}")
        zeros = exact_zero_rule(x, w, b)
        fixed = ~np.isnan(zeros) & (zeros == 0)
        np.testing.assert_array_equal(np.signbit(y[fixed]), np.signbit(zeros[fixed]))
    return open_


@pytest.mark.parametrize(
    "x, w, b, eps",
    [
        ([[1, 2, 3]], np.full(3, 3e38, np.float32), None, 1e-5),  # outputs past FLT_MAX: -inf, 0, inf
        ([[3e38, -3e38, 1e38]], None, None, 1e-5),  # squares past the float range
        ([[1e-39, 2e-39, 4e-39]], None, None, 0.0),  # subnormal row, eps = 0
        ([[1e-45, 2e-45, 4e-45, 0]], None, None, 0.0),  # the smallest subnormals
        ([[1e-45, 3e-45]], None, None, 1e-5),  # eps dominates a subnormal row
        ([[3e38, 3e38, -3e38]], None, np.float32([3e38, -3e38, 1]), 1e-300),  # huge bias
        ([[16777216, 16777218, 16777218, 16777216, 16777217]], np.float32([0, -0.0, 0, -0.0, 0]), None, 1e-5),
        ([[5, 5, 5]], np.float32([-1, 2, -0.0]), np.float32([0.25, -0.0, 0]), 1e-5),  # constant row
        ([[0, 0, 0, 0]], None, None, 1e-5),  # zero row
        ([[0, 2]], np.float32([1, 1]), np.float32([2.0**-25, 2.0**-24]), 0.0),  # exact ties: to even
        ([[0, 2]], np.float32([1, 1]), np.float32([2.0**-25, 2.0**-24]), 1e-300),  # a hair off the ties
        ([[1, 2, 3]], np.float32([1, 1, 1]), None, 3e38),  # eps far above the variance
        ([[1e30, 1e30 + 2**77, 1e30]], None, None, 1e-5),  # mean far above the spread
    ],
)
def test_reproducers(x, w, b, eps):
    check(x, w, b, eps)


def test_non_finite_rows_give_nan_as_the_cpu():
    x = np.float32([[1, np.inf, 2], [np.nan, 0, 1], [1, 2, 3]])
    y, open_ = metal_layer_norm(x)
    assert np.all(np.isnan(y[:2])) and not np.any(open_[:2])
    assert_same_bits(y[2:], cpu_layer_norm(x[2:]), "finite row")
    y, _ = metal_layer_norm(np.float32([[3, 3, 3]]), eps=0.0)  # 0 / 0, as the CPU gives
    assert np.all(np.isnan(y))
    y, _ = metal_layer_norm(np.float32([[1, 2, 3]]), w=np.float32([np.inf, 1, 1]), b=np.float32([0, np.inf, 0]))
    np.testing.assert_array_equal(y, cpu_layer_norm(np.float32([[1, 2, 3]]), np.float32([np.inf, 1, 1]), np.float32([0, np.inf, 0])))


@pytest.mark.parametrize("w_value", [-1.5, -0.0, 0.0, 2.0])
@pytest.mark.parametrize("bias", [None, -0.0, 0.0, 0.25])
def test_exact_zero_outputs_follow_one_rule(w_value, bias):
    x = np.float32([[1, 2, 3], [7, 7, 7], [0, 0, 0], [-3e-39, -3e-39, -3e-39], [5, -1, 2]])
    w = np.float32([w_value, w_value, -w_value])
    b = None if bias is None else np.float32([bias, -bias, bias])
    check(x, w, b)
    check(x, None, b)


def test_hard_rows_correctly_rounded(rng):
    for _ in range(12):
        dim = int(rng.choice([2, 3, 5, 16, 33, 100]))
        x = hard_layer_norm_rows(rng, dim)
        w = rng.choice([-2, -1, -0.0, 0.0, 0.5, 3, 1 + 2.0**-23], dim).astype(np.float32)
        b = rng.choice([-0.0, 0.0, 1, -1, 2.0**-30], dim).astype(np.float32)
        eps = float(rng.choice([1e-5, 1e-300, 3.0, 1e-40]))
        check(x, w if rng.random() < 0.7 else None, b if rng.random() < 0.6 else None, eps)


@pytest.mark.parametrize("scale", [-140, -120, -60, 0, 60, 100, 126])
def test_rows_scaled_to_the_ends_of_the_range(rng, scale):
    # The row's power-of-two scale makes the pair arithmetic independent of it;
    # eps does not scale, so each scale meets eps differently. Draws clipped to
    # |z| < 3.9: at 2^126 a larger one is past FLT_MAX, an inf row, whose NaN
    # outputs are right but not what this test checks (about 1 run in 170 drew one).
    x = (np.clip(rng.standard_normal((4, 24)), -3.9, 3.9) * 2.0**scale).astype(np.float32)
    w = rng.standard_normal(24).astype(np.float32)
    b = (rng.standard_normal(24) * 2.0 ** float(rng.integers(-30, 5))).astype(np.float32)
    for eps in (0.0, 1e-5, 1e-300):
        check(x, w, b, eps, reference=False)
    check(x[:1], w, b, 1e-5)


def ties(rng, rows):
    """Rows with outputs exactly on float32 midpoints: x = (0, 2 s) has mean s and
    variance s^2 (eps = 0), so n = -1, 1, and b puts w n + b on a midpoint (odd
    multiples of half an ulp: 2^-25 below 1, 2^-24 above 1.5)."""
    s = np.float32(2.0) ** rng.integers(-100, 100, rows).astype(np.float32)
    x = np.stack([np.zeros(rows, np.float32), 2 * s], axis=1)
    w = np.float32([1.0, 1.5])
    b = np.float32([2.0**-25, -(2.0**-24)]) * np.float32(rng.choice([1, 3, 5]))
    return x, w, b


def test_ties_and_near_ties(rng):
    x, w, b = ties(rng, 6)
    for eps in (0.0, 1e-300, 5e-324):
        check(x, w, b, eps)


def test_random_rows_against_the_cpu(rng):
    for dim, scale in ((768, 1.0), (1000, 1e-30), (333, 1e25)):
        x = (rng.standard_normal((32, dim)) * scale + scale * rng.standard_normal()).astype(np.float32)
        w = rng.standard_normal(dim).astype(np.float32)
        b = rng.standard_normal(dim).astype(np.float32)
        open_ = check(x, w, b, 1e-5, reference=False)
        assert open_.mean() <= 0.01, f"open fraction {open_.mean():.4f} at dim {dim}"


def test_mean_far_above_the_spread(rng):
    # Cancellation by 2^20 .. 2^40: the two-pass mean keeps the numerators; rows
    # whose bound stays open are rounded exactly.
    for shift in (20, 30, 40):
        x = (2.0**shift + rng.standard_normal((4, 64)) * 4).astype(np.float32)
        check(x, None, None, 1e-5, reference=False)
    check(x[:1], None, None, 1e-5)


def bias_cancelling(rng, rows, dim):
    """b = -fl(n w): each output is n w's rounding residual, about 2^-25 |n w|, so
    the pair's error relative to it is 2^20 times its error relative to n w."""
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    return x, w, -cpu_layer_norm(x[:1], w)[0], 1e-5


def test_bias_cancelling_the_product(rng):
    # The pair's 2^-45 of n w is 2^-20 of these outputs: all stay open and are
    # rounded exactly.
    x, w, b, eps = bias_cancelling(rng, 1, 40)
    assert np.all(check(x, w, b, eps))


def test_shrunk_bound_is_caught(rng):
    # Outputs cancelled by the bias (the pair value within 2^-20 of their size)
    # and exact ties: the true bound rounds them all correctly; a bound 2^30 too
    # small certifies some of them wrongly.
    x, w, b, eps = bias_cancelling(rng, 1, 256)
    ref = cpu_layer_norm(x, w, b, eps)
    y, _ = metal_layer_norm(x, w, b, eps)
    assert_same_bits(y, ref, "true bound")
    y, _ = metal_layer_norm(x, w, b, eps, err_scale=2.0**-30)
    wrong = int(np.sum(y.view(np.uint32) != ref.view(np.uint32)))
    assert wrong > 0, "a bound 2^30 too small went unnoticed"


@pytest.mark.parametrize("scale", [0, 20, 60])
def test_bias_gradient_correctly_rounded(rng, scale):
    # Column sums of the cotangent (grad bias), cancelling by 2^scale, with exact
    # zeros and ties: certified by the pair running bound, else summed exactly.
    rows, dim = 40, 12
    g = rng.standard_normal((rows, dim)) * 2.0 ** rng.integers(-scale, scale + 1, (rows, dim))
    g[rows // 2 :] = -g[: rows // 2] * rng.choice([1, 1, 1 + 2.0**-20], (rows // 2, dim))
    g[:, 0] = 0
    g[:2, 1] = [1, 2.0**-24]  # a tie: to even
    g[2:, 1] = 0
    g = g.astype(np.float32)
    y = _ext.testing.metal_layer_norm_bias_grad(g.ravel(), dim)
    ref = np.float32([round_exact_sum(g[:, i].astype(np.float64).tolist()) for i in range(dim)])
    assert_same_bits(y, ref, "grad bias")
