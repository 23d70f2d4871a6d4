"""Extended layer_norm is correctly rounded for every finite input: its three stages
(kernels/layer_norm_certify.h: certified float64, double words, exact comparisons;
dd is the same computation)
against a rigorous reference, on rows built to reach each stage, and the sign of
exact zeros (layer_norm_exact_zero's rule), which every stage and backend follows.
The gradients too: grad x, grad bias, and grad weight (sums over rows of different
variance; a hypothesis fuzz over dynamic range, subnormals, ties and repeated rows,
bounded by tests/conftest.py's profile).

Fresh random inputs each run (MLX_PRECISE_TEST_SEED replays one)."""

import os
import zlib

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def eps_for(rng, x):
    """eps from 0 to 3 (not 0 for a constant row: 0 / 0)."""
    eps = float(rng.choice([1e-5, 1e-300, 3.0, 0.0]))
    return 1e-5 if eps == 0.0 and np.any(np.all(x == x[:, :1], axis=1)) else eps


def hard_grad_x_case(rng, weights):
    """(x, w, g, eps): rows that reach the exact stage, small-integer or normal
    cotangents, a weight from `weights` (or none) and eps (eps_for)."""
    dim = int(rng.choice([2, 3, 5, 16, 33]))
    x = hard_layer_norm_rows(rng, dim)
    g = (rng.integers(-3, 4, x.shape) if rng.random() < 0.4 else rng.standard_normal(x.shape)).astype(np.float32)
    w = rng.choice(weights, dim).astype(np.float32) if rng.random() < 0.7 else None
    return x, w, g, eps_for(rng, x)


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_x_correctly_rounded(rng, precision):
    # grad x on rows that reach the exact stage: a mean far above the spread, small
    # integers with integer cotangents (exact zeros and ties), wide dynamic ranges.
    for _ in range(8):
        x, w, g, eps = hard_grad_x_case(rng, [-2, -1, 0.5, 3, 1 + 2.0**-23])
        args = [mx.array(x)] + ([] if w is None else [mx.array(w)])
        _, grads = mx.vjp(lambda x_, *w_: mp.layer_norm(x_, *w_, None, eps=eps, precision=precision), args,
                          [mx.array(g)])
        dx = grads[0]
        expected = layer_norm_grad_x_reference(x, w, g, eps)
        np.testing.assert_array_equal(np.array(dx), expected,
                                      err_msg=f"x={x.tolist()} w={w} g={g.tolist()} eps={eps!r}")


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_x_ties_in_the_subnormal_range(precision):
    # Cotangents near 1e-43: the exact sum of g w lies below float's normal range,
    # where the double-word stage's mean must read it out scaled (it kept too few
    # bits and rounded the tie -94.5 2^-149 to -95 2^-149). Outputs 2 and 3 are exact
    # ties (+-94.5 2^-149: x has variance 1.5^2), which round to even.
    x = np.float32([[0, 0, 3, 3]])
    w = np.float32([1, -2, 0.5, 3])
    g = np.float32([[-3.643376007244524e-43, 5.493089980153283e-43, 9.710998357770982e-43, 2.942726775082116e-44]])
    for sign in (1, -1):
        _, (dx,) = mx.vjp(lambda x_: mp.layer_norm(x_, mx.array(w), None, eps=0.0, precision=precision),
                          [mx.array(x)], [mx.array(sign * g)])
        expected = layer_norm_grad_x_reference(x, w, sign * g, 0.0)
        np.testing.assert_array_equal(np.abs(expected[0, 2:]), np.float32(94 * 2.0**-149))
        np.testing.assert_array_equal(np.array(dx).view(np.uint32), expected.view(np.uint32))


def check_grad_weight(x, g, eps, precision):
    """grad weight against the exact reference, bit for bit; a column whose exact
    value is rational while rows of more than four variances feed it (the exact
    stage's documented limit, docs/certification.md) only within one ulp. Returns
    how many columns were rational with rows of two or more variances."""
    w = mx.array(np.linspace(-1.5, 2.0, x.shape[1]).astype(np.float32))
    _, (dw,) = mx.vjp(lambda w_: mp.layer_norm(mx.array(x), w_, None, eps=eps, precision=precision), [w],
                      [mx.array(g)])
    got = np.array(dw)
    expected, mixed = layer_norm_grad_weight_reference(x, g, eps)
    msg = f"x={x.tolist()} g={g.tolist()} eps={eps!r}"
    beyond = mixed > 4
    np.testing.assert_array_equal(got[~beyond].view(np.uint32), expected[~beyond].view(np.uint32), err_msg=msg)
    if beyond.any():
        gap = np.abs(got[beyond].astype(np.float64) - expected[beyond])
        assert np.all(gap <= np.spacing(np.abs(expected[beyond]))), msg
    return int((mixed > 0).sum())


def cotangent(rng, shape):
    kind = int(rng.integers(5))
    if kind == 0:
        g = rng.standard_normal(shape)
    elif kind == 1:
        g = rng.integers(-3, 4, shape).astype(np.float64)
    elif kind == 2:
        g = rng.standard_normal(shape) * np.exp2(rng.integers(-60, 61, shape))
    elif kind == 3:
        g = rng.standard_normal(shape) * 1e-40  # subnormal
    else:
        g = rng.standard_normal(shape) * 1e36
    return g.astype(np.float32)


def hard_grad_weight_case(rng):
    """(x, g, eps): one to three blocks of hard rows, a cotangent() and eps_for."""
    dim = int(rng.choice([1, 2, 3, 5, 16]))
    x = np.concatenate([hard_layer_norm_rows(rng, dim) for _ in range(int(rng.integers(1, 4)))])
    return x, cotangent(rng, x.shape), eps_for(rng, x)


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_weight_correctly_rounded(rng, precision):
    # Rows built to leave the float64 bound open (hard_layer_norm_rows), cotangents
    # over a wide range (subnormal to 1e36), eps from 0 to 3.
    for _ in range(8):
        check_grad_weight(*hard_grad_weight_case(rng), precision)


def one_variance_zeros_and_ties(rng):
    """((x, g), (x2, g2)) for grad weight: repeated, shifted and permuted rows (one
    variance) with cotangents that cancel exactly (every column +0); and rows of n =
    +-1 exactly (two elements, eps = 0) whose columns 2^24 + 1 and 2^24 + 3 are ties."""
    base = rng.integers(-3, 4, 6).astype(np.float32)
    if np.all(base == base[0]):
        base[0] += 1
    x = np.stack([base, base + 16, base[::-1], base])
    g = cotangent(rng, (1, 6))[0]
    cancel = np.stack([g, -g, np.zeros(6, np.float32), np.zeros(6, np.float32)])
    x2 = np.float32([[0, 2], [5, 7], [9, 7], [0, 2]])
    g2 = np.float32([[2**24, 2**24], [1, 3], [0, 0], [0, 2**-30]])
    return (x, cancel), (x2, g2)


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_weight_exact_zeros_and_ties(rng, precision):
    # Rows of one variance (repeated, shifted by an exact integer, permuted rows):
    # cotangents that cancel exactly give +0, and sums that land on a float32
    # midpoint round to even (v = var + eps = 1 makes n rational). These reach the
    # exact stage; every column is decided there, none is of the mixed kind.
    (x, cancel), (x2, g2) = one_variance_zeros_and_ties(rng)
    assert check_grad_weight(x, cancel, 1e-5, precision) == 0
    _, (dw,) = mx.vjp(lambda w_: mp.layer_norm(mx.array(x), w_, None, precision=precision),
                      [mx.ones(6)], [mx.array(cancel)])
    np.testing.assert_array_equal(np.array(dw).view(np.uint32), np.zeros(6, np.uint32))  # +0
    assert check_grad_weight(x2, g2, 0.0, precision) == 0


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_weight_ties_across_related_variances(rng, precision):
    # Exact ties and zeros fed by rows whose variances are rational squares of one
    # another (reference.weight_grad_related_ties): decided exactly, since their
    # radicands share one square root; +0 for a zero, ties to even.
    for x, g, eps in weight_grad_related_ties(rng):
        assert check_grad_weight(x, g, eps, precision) > 0


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_weight_near_ties(rng, precision):
    # Columns within ~2^-70 (rows of different variance: the double words decide) or
    # ~2^-140 (repeated rows: the exact stage decides) of a float32 midpoint, and an
    # exact zero the float64 sum misses (reference.weight_grad_near_ties). The
    # float64 sum rounds about half of these the wrong way.
    for x, g, eps in weight_grad_near_ties(rng):
        assert check_grad_weight(x, g, eps, precision) == 0


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_grad_weight_ties_moved_by_eps(precision):
    # Sums that a tiny eps moves 2^-1000 and less off float32 midpoints, across rows
    # of different variance: decided at 2^-1536 (kernels/exact_layer_norm.h).
    for x, g, eps in weight_grad_eps_ties():
        assert check_grad_weight(x, g, eps, precision) == 0


@st.composite
def weight_grad_cases(draw):
    rows = draw(st.integers(1, 5))
    dim = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([1.0, 2.0**-140, 2.0**-126, 2.0**60, 1e-20]))
    values = st.one_of(
        st.integers(-4, 4).map(float),
        st.floats(-8, 8, width=32),
        st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=True),
    )
    x = np.float32(draw(st.lists(st.lists(values, min_size=dim, max_size=dim), min_size=rows, max_size=rows)))
    with np.errstate(over="ignore"):
        x = (x * np.float32(scale)).astype(np.float32)
    if draw(st.booleans()):  # repeated rows: ties and exact cancellation
        x = np.concatenate([x, x[: draw(st.integers(1, rows))]])
    g = np.float32(draw(st.lists(st.lists(values, min_size=dim, max_size=dim), min_size=len(x), max_size=len(x))))
    with np.errstate(over="ignore"):
        g = (g * np.float32(draw(st.sampled_from([1.0, 2.0**-140, 1e-30, 2.0**40])))).astype(np.float32)
    eps = draw(st.sampled_from([1e-5, 0.0, 1e-300, 0.25, 3.0]))
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(g)):
        x, g = np.nan_to_num(x), np.nan_to_num(g)
    if eps == 0.0 and np.any(np.all(x == x[:, :1], axis=1)):
        eps = 1e-5
    return x, g, eps


@given(weight_grad_cases(), st.sampled_from(["extended", "dd"]))
def test_grad_weight_fuzz(case, precision):
    x, g, eps = case
    check_grad_weight(x, g, eps, precision)
