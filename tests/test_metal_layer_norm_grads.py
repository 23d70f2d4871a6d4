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

import mlx_precise as mp
from mlx_precise import _ext
from reference import hard_layer_norm_rows, layer_norm_grad_x_reference
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
        dim = int(rng.choice([2, 3, 5, 16, 33]))
        x = hard_layer_norm_rows(rng, dim)
        g = (rng.integers(-3, 4, x.shape) if rng.random() < 0.4 else rng.standard_normal(x.shape)).astype(np.float32)
        w = rng.choice([-2, -1, 0.5, 3, 1 + 2.0**-23, 0.0], dim).astype(np.float32) if rng.random() < 0.7 else None
        eps = float(rng.choice([1e-5, 1e-300, 3.0, 0.0]))
        if eps == 0.0 and np.any(np.all(x == x[:, :1], axis=1)):
            eps = 1e-5
        check_grad_x(x, w, g, eps)


@pytest.mark.parametrize("scale", [-140, -100, 0, 60, 126])
def test_grad_x_scaled_rows(rng, scale):
    # The row's and the products' power-of-two scales make the pair arithmetic
    # independent of them; eps does not scale, so each scale meets eps differently.
    x = (rng.standard_normal((3, 24)) * 2.0**scale).astype(np.float32)
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
