"""Metal's certified float-pair layer_norm gradients, run on the CPU (no Mac here).

Metal has no float64: grad x is computed in float pairs on the row scaled by a power
of two and the cotangent products g w scaled by another (kernels/layer_norm_pair.h),
each output certified against a rigorous bound (certified_round_pair), and the rest
rounded exactly (kernels/exact_layer_norm.h, big integers). The kernels' own code runs
here (mlx_precise._ext.testing.metal_certified_layer_norm_grad_x, whose outputs start
as NaN), and every output must be the correctly rounded float32 (tests/reference.py's
rigorous reference) and equal to the CPU's certified extended gradient bit for bit. A
bound shrunk below the true error must make these tests fail
(test_grad_x_shrunk_bound_is_caught).

Fresh random inputs each run (MLX_PRECISE_TEST_SEED replays one)."""

import os
import zlib

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mlx_precise as mp
from mlx_precise import _ext
from reference import (
    layer_norm_grad_weight_reference,
    layer_norm_grad_x_reference,
    weight_grad_eps_ties,
    weight_grad_near_ties,
    weight_grad_related_ties,
)
from test_layer_norm_certified import (
    hard_grad_weight_case,
    hard_grad_x_case,
    one_variance_zeros_and_ties,
    weight_grad_cases,
)
from test_metal_layer_norm_certify import NONE, assert_same_bits

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_metal_layer_norm_grads seed: {SEED}")


@pytest.fixture
def rng(request):
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def metal_grad_x(x, w, g, eps=1e-5, err_scale=1.0):
    x = np.ascontiguousarray(x, np.float32)
    w = NONE if w is None else np.ascontiguousarray(w, np.float32)
    g = np.ascontiguousarray(g, np.float32)
    dx, open_ = _ext.testing.metal_certified_layer_norm_grad_x(x.ravel(), w, g.ravel(), x.shape[-1], eps, err_scale)
    return dx.reshape(x.shape), open_.reshape(x.shape).astype(bool)


def cpu_grad_x(x, w, g, eps=1e-5):
    args = [mx.array(np.float32(x))] + ([] if w is None else [mx.array(np.float32(w))])
    _, grads = mx.vjp(lambda x_, *w_: mp.layer_norm(x_, *w_, None, eps=eps, precision="extended"), args,
                      [mx.array(np.float32(g))])
    return np.array(grads[0])


def check_grad_x(x, w, g, eps=1e-5, reference=True):
    """Metal's grad x equals the CPU's certified one bit for bit (zeros' signs
    included) and, where asked, the rigorous reference; returns the open mask."""
    x, g = np.float32(x), np.float32(g)
    dx, open_ = metal_grad_x(x, w, g, eps)
    msg = f"x={x.tolist()} w={w} g={g.tolist()} eps={eps!r}"
    assert not np.any(np.isnan(dx)), f"NaN output: {msg}"
    assert_same_bits(dx, cpu_grad_x(x, w, g, eps), f"against the CPU, {msg}")
    if reference:
        np.testing.assert_array_equal(dx, layer_norm_grad_x_reference(x, w, g, eps), err_msg=msg)
    return open_


@pytest.mark.parametrize(
    "x, w, eps",
    [
        ([[1, 2, 3]], np.full(3, 3e38, np.float32), 1e-5),  # g w past the float range
        ([[3e38, -3e38, 1e38]], None, 1e-5),  # squares past the float range
        ([[1e-39, 2e-39, 4e-39]], None, 0.0),  # subnormal row, eps = 0: dx near 1e38
        ([[1e-45, 2e-45, 4e-45, 0]], None, 0.0),  # the smallest subnormals
        ([[1e-45, 3e-45]], None, 1e-5),  # eps dominates a subnormal row
        ([[5, 5, 5]], np.float32([-1, 2, 3]), 1e-5),  # constant row: n = 0
        ([[1, 2, 3]], np.float32([1, 1, 1]), 3e38),  # eps far above the variance
        ([[1e30, 1e30 + 2**77, 1e30]], None, 1e-5),  # mean far above the spread
        ([[0, 0, 3, 3], [0, 1, 2, 7]], np.float32([1, -2, 0.5, 3]), 0.0),  # rational inv_std
    ],
)
@pytest.mark.parametrize("g_kind", ["ones", "integers", "wide", "tiny", "huge"])
def test_grad_x_reproducers(rng, x, w, eps, g_kind):
    shape = np.shape(x)
    g = {
        "ones": np.ones(shape),
        "integers": rng.integers(-3, 4, shape),
        "wide": rng.standard_normal(shape) * np.exp2(rng.integers(-60, 61, shape)),
        "tiny": rng.standard_normal(shape) * 1e-42,  # subnormal cotangents
        "huge": rng.standard_normal(shape) * 3e37,
    }[g_kind]
    check_grad_x(x, w, np.float32(g), eps)


def test_grad_x_hard_rows(rng):
    # Rows that reach the exact stage: a mean far above the spread, small integers
    # with integer cotangents (exact zeros and ties), wide dynamic ranges.
    for _ in range(10):
        check_grad_x(*hard_grad_x_case(rng, [-2, -1, 0.5, 3, 1 + 2.0**-23, 0.0]))


@pytest.mark.parametrize("scale", [-140, -100, 0, 60, 126])
def test_grad_x_scaled_rows(rng, scale):
    # The row's and the products' power-of-two scales make the pair arithmetic
    # independent of them; eps does not scale, so each scale meets eps differently.
    # Draws clipped to |z| < 3.9: at 2^126 a larger one is an inf row.
    x = (np.clip(rng.standard_normal((3, 24)), -3.9, 3.9) * 2.0**scale).astype(np.float32)
    w = (rng.standard_normal(24) * 2.0 ** float(rng.integers(-60, 60))).astype(np.float32)
    g = (rng.standard_normal((3, 24)) * 2.0 ** float(rng.integers(-60, 60))).astype(np.float32)
    for eps in (0.0, 1e-5, 1e-300):
        check_grad_x(x, w, g, eps, reference=False)
    check_grad_x(x[:1], w, g[:1], 1e-5)


def test_grad_x_zero_cotangent_rows_give_positive_zeros():
    # g w = +-0 everywhere (masked rows): every exact zero is +0, on the CPU (whose
    # certification leaves a -0 open for the exact stage) and on Metal.
    x = np.float32([[1, 2, 3, 4], [4, -1, 2, 0], [7, 7, 7, 7]])
    g = np.float32([[0, -0.0, 0, -0.0], [0, 0, -0.0, 0], [-0.0, 0, 0, 0]])
    for w in (np.float32([1, -2, -0.5, 3]), np.float32([-0.0, 0, -1, 1]), None):
        dx, open_ = metal_grad_x(x, w, g)
        assert not open_.any()
        assert_same_bits(dx, np.zeros_like(dx), f"w={w}")
        assert_same_bits(dx, cpu_grad_x(x, w, g), f"w={w}")


def test_grad_x_non_finite_rows_give_nan():
    x = np.float32([[1, np.inf, 2], [1, 2, 3], [1, 2, 3], [np.nan, 0, 1]])
    g = np.float32([[1, 1, 1], [np.inf, 1, 1], [1, 2, 3], [1, 1, 1]])
    dx, open_ = metal_grad_x(x, None, g)
    assert np.all(np.isnan(dx[[0, 1, 3]])) and not np.any(open_[[0, 1, 3]])
    assert_same_bits(dx[2], cpu_grad_x(x[2:3], None, g[2:3])[0], "finite row")
    dx, _ = metal_grad_x(np.float32([[3, 3, 3]]), None, np.float32([[1, 2, 3]]), eps=0.0)  # 0 / 0
    assert np.all(np.isnan(dx))
    dx, _ = metal_grad_x(np.float32([[1, 2, 3]]), np.float32([np.inf, 1, 1]), np.float32([[1, 2, 3]]))
    assert np.all(np.isnan(dx))


def test_grad_x_random_rows_against_the_cpu(rng):
    for dim, scale in ((768, 1.0), (1000, 1e-30), (333, 1e25)):
        x = (rng.standard_normal((24, dim)) * scale + scale * rng.standard_normal()).astype(np.float32)
        w = rng.standard_normal(dim).astype(np.float32)
        g = rng.standard_normal((24, dim)).astype(np.float32)
        open_ = check_grad_x(x, w, g, 1e-5, reference=False)
        assert open_.mean() <= 0.01, f"open fraction {open_.mean():.4f} at dim {dim}"


def self_cancelling(rng, rows, dim):
    """g w = float32(n): dx = inv_std ((gw - mean gw) - n mean(gw n)) cancels down to
    the cotangent's rounding residuals (about 2^-24 of the terms), so the pair's
    2^-45 of the terms is 2^-21 of these outputs: every one stays open."""
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    n = np.array(mp.layer_norm(mx.array(x), None, None, eps=1e-5, precision="extended"))
    return x, w, (n / w).astype(np.float32)


def test_grad_x_self_cancelling_outputs(rng):
    x, w, g = self_cancelling(rng, 2, 40)
    assert np.all(check_grad_x(x, w, g, 1e-5))


def test_grad_x_shrunk_bound_is_caught(rng):
    # The self-cancelling outputs: the true bound rounds them all correctly; a bound
    # 2^30 too small certifies some of them wrongly (4 to 22 of these 2048 in 24
    # draws).
    x, w, g = self_cancelling(rng, 8, 256)
    ref = cpu_grad_x(x, w, g)
    dx, _ = metal_grad_x(x, w, g)
    assert_same_bits(dx, ref, "true bound")
    dx, _ = metal_grad_x(x, w, g, err_scale=2.0**-30)
    wrong = int(np.sum(dx.view(np.uint32) != ref.view(np.uint32)))
    assert wrong > 0, "a bound 2^30 too small went unnoticed"


# ------------------------------------------------------------ grad weight ----
def metal_grad_weight(x, g, eps=1e-5, err_scale=1.0):
    x = np.ascontiguousarray(x, np.float32)
    g = np.ascontiguousarray(g, np.float32)
    dw, open_ = _ext.testing.metal_certified_layer_norm_grad_weight(x.ravel(), g.ravel(), x.shape[-1], eps, err_scale)
    return dw, open_.astype(bool)


def cpu_grad_weight(x, g, eps=1e-5):
    w = mx.array(np.linspace(-1.5, 2.0, np.shape(x)[1]).astype(np.float32))
    _, (dw,) = mx.vjp(lambda w_: mp.layer_norm(mx.array(np.float32(x)), w_, None, eps=eps, precision="extended"), [w],
                      [mx.array(np.float32(g))])
    return np.array(dw)


def check_grad_weight(x, g, eps=1e-5, reference=True):
    """Metal's grad weight equals the CPU's bit for bit and, where asked, the exact
    reference; a column whose exact value is rational while rows of more than four
    variances feed it (the exact stage's documented limit) only within one ulp of
    it. Returns (open mask, columns rational across two or more variances)."""
    x, g = np.float32(x), np.float32(g)
    dw, open_ = metal_grad_weight(x, g, eps)
    msg = f"x={x.tolist()} g={g.tolist()} eps={eps!r}"
    assert not np.any(np.isnan(dw)), f"NaN output: {msg}"
    mixed = np.zeros(len(dw), np.int64)
    if reference:
        expected, mixed = layer_norm_grad_weight_reference(x, g, eps)
        beyond = mixed > 4
        assert_same_bits(dw[~beyond], expected[~beyond], f"against the reference, {msg}")
        gap = np.abs(dw[beyond].astype(np.float64) - expected[beyond])
        assert np.all(gap <= np.spacing(np.abs(expected[beyond]))), msg
    decided = mixed <= 4
    assert_same_bits(dw[decided], cpu_grad_weight(x, g, eps)[decided], f"against the CPU, {msg}")
    return open_, int((mixed > 0).sum())


@pytest.mark.parametrize(
    "x, eps",
    [
        ([[1, 2, 3], [3e38, -3e38, 1e38]], 1e-5),  # squares past the float range
        ([[1e-39, 2e-39, 4e-39], [1e-45, 2e-45, 4e-45]], 0.0),  # subnormal rows, eps = 0
        ([[1e-45, 3e-45, 0], [5, 5, 5]], 1e-5),  # eps dominates; a constant row (n = 0)
        ([[1, 2, 3], [7, 8, 10]], 3e38),  # eps far above the variance
        ([[1e30, 1e30 + 2**77, 1e30], [0, 0, 3]], 1e-5),  # mean far above the spread
    ],
)
@pytest.mark.parametrize("g_kind", ["ones", "integers", "wide", "tiny", "huge"])
def test_grad_weight_reproducers(rng, x, eps, g_kind):
    shape = np.shape(x)
    g = {
        "ones": np.ones(shape),
        "integers": rng.integers(-3, 4, shape),
        "wide": rng.standard_normal(shape) * np.exp2(rng.integers(-60, 61, shape)),
        "tiny": rng.standard_normal(shape) * 1e-42,
        "huge": rng.uniform(-3e38, 3e38, shape),  # column sums past FLT_MAX
    }[g_kind]
    check_grad_weight(x, np.float32(g), eps)


def test_grad_weight_hard_rows(rng):
    for _ in range(8):
        check_grad_weight(*hard_grad_weight_case(rng))


def test_grad_weight_exact_zeros_and_ties(rng):
    # Repeated, shifted and permuted rows (one variance): cotangents that cancel
    # exactly give +0; n = +-1 rows (eps = 0) make 2^24 + 1 and 2^24 + 3 ties.
    (x, cancel), (x2, g2) = one_variance_zeros_and_ties(rng)
    check_grad_weight(x, cancel)
    assert_same_bits(metal_grad_weight(x, cancel)[0], np.zeros(6, np.float32), "exact zeros")
    check_grad_weight(x2, g2, 0.0)


def test_grad_weight_ties_across_related_variances(rng):
    for x, g, eps in weight_grad_related_ties(rng):
        assert check_grad_weight(x, g, eps)[1] > 0


def test_grad_weight_near_ties(rng):
    # Within ~2^-70 (three rows of different variance) or ~2^-140 (five equal rows)
    # of a midpoint: all open, decided by the exact stages.
    for x, g, eps in weight_grad_near_ties(rng):
        check_grad_weight(x, g, eps)


def test_grad_weight_ties_moved_by_eps():
    for x, g, eps in weight_grad_eps_ties():
        check_grad_weight(x, g, eps)


def test_grad_weight_zero_and_non_finite_columns():
    x = np.float32([[1, 2, 3], [4, 4, 4], [0, 1, 5]])
    g = np.float32([[0, 1, -0.0], [1, 2, 3], [-0.0, 1, 0]])  # columns 0, 2: every term 0
    dw, open_ = metal_grad_weight(x, g)
    assert_same_bits(dw[[0, 2]], np.zeros(2, np.float32), "zero columns")
    assert not open_[[0, 2]].any()
    dw, _ = metal_grad_weight(np.float32([[1, 2, 3], [1, np.inf, 2]]), np.float32([[1, 1, 1], [0, 0, 0]]))
    assert np.all(np.isnan(dw))  # a non-finite row: n = NaN, as on the CPU
    dw, _ = metal_grad_weight(np.float32([[1, 2, 3], [1, 4, 2]]), np.float32([[1, np.inf, 1], [0, 0, np.nan]]))
    assert np.isnan(dw[1]) and np.isnan(dw[2]) and not np.isnan(dw[0])


def test_grad_weight_random_rows_against_the_cpu(rng):
    for rows, dim, scale in ((256, 96, 1.0), (64, 48, 1e-30), (64, 48, 1e25)):
        x = (rng.standard_normal((rows, dim)) * scale + scale * rng.standard_normal()).astype(np.float32)
        g = rng.standard_normal((rows, dim)).astype(np.float32)
        open_, _ = check_grad_weight(x, g, 1e-5, reference=False)
        assert open_.mean() <= 0.05, f"open fraction {open_.mean():.4f}"


def cancelling_columns(rng, dim):
    """Rows x and 3x + 1 (float32: nearly equal n), cotangents 1 and -(1 + 2^-23):
    each column sum cancels to about 2^-23 of its terms, so the pair's error is
    about 2^-22 of it."""
    x = rng.standard_normal((2, dim)).astype(np.float32)
    x[1] = x[0] * np.float32(3) + np.float32(1)
    g = np.stack([np.ones(dim, np.float32), np.full(dim, -(1 + 2.0**-23), np.float32)])
    return x, g


def test_grad_weight_cancelling_columns(rng):
    x, g = cancelling_columns(rng, 24)
    check_grad_weight(x, g, 0.0)
    check_grad_weight(x, g, 1e-5)


def test_grad_weight_shrunk_bound_is_caught(rng):
    # The cancelling columns: the true bound rounds them all correctly; a bound 2^30
    # too small certifies some of them wrongly (8 of 64 on average).
    x, g = cancelling_columns(rng, 256)
    ref = cpu_grad_weight(x, g, 0.0)
    assert_same_bits(metal_grad_weight(x, g, 0.0)[0], ref, "true bound")
    dw, _ = metal_grad_weight(x, g, 0.0, err_scale=2.0**-30)
    wrong = int(np.sum(dw.view(np.uint32) != ref.view(np.uint32)))
    assert wrong > 0, "a bound 2^30 too small went unnoticed"


@given(weight_grad_cases())
def test_grad_weight_fuzz(case):
    x, g, eps = case
    check_grad_weight(x, g, eps)


@given(weight_grad_cases(), st.booleans())
def test_grad_x_fuzz(case, with_weight):
    # The grad weight strategy's rows (dynamic range, subnormals, repeated rows,
    # ties) as rows of grad x, with a weight of mixed scales or none.
    x, g, eps = case
    w = np.float32(np.linspace(-3, 2, x.shape[1]) * 2.0 ** np.arange(x.shape[1])) if with_weight else None
    check_grad_x(x, w, g, eps)
