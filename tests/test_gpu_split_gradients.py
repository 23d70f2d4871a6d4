"""The GPU's split gradient rows, run on the CPU: both gradients of rfft_conv (grad u and
grad k, RFFTConvGradients) for rows too long for shared memory, each half of the split
(cyclic, negacyclic) summed spectrally over a target's rows for grad k
(kernels/rfft_conv_rows.h, "split gradient rows"; CUDA's split_gradient_rows), certified
with split_row_certificate (grad u) and split_sum_certificate (grad k;
docs/certification.md, "Split gradient rows").

mlx_precise._ext.testing.gpu_split_gradients runs the kernels' row code for one target
(rows of u and of the cotangent sharing one kernel row) with one CPU thread, certifies
each output against its bound (times bound_scale) and recomputes the open ones as
recompute_open does. Its outputs must be the CPU's correctly rounded bits; the values it
certified must lie within their bounds of the exact gradients (integer data, exact in
int64); and a bound shrunk below the true error must give wrong bits.
"""

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from mlx_precise import _ext

split_gradients = _ext.testing.gpu_split_gradients


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    return np.random.default_rng(seed)


def cpu_gradients(g, k, u, bias, rows, period):
    """The CPU's correctly rounded (extended) grad u and grad k of sum(g * rfft_conv(u, k))."""
    L = g.size // rows
    d = mx.array(bias.reshape(rows, L)) if bias.size else None
    kw = {"n": period or None, "bias": d, "precision": "extended", "stream": mx.cpu}
    _, (gu, gk) = mx.vjp(
        lambda u, k: mp.rfft_conv(u, k, **kw),
        [mx.array(u.reshape(rows, L)), mx.array(k)],
        [mx.array(g.reshape(rows, L))],
    )
    return np.array(gu).ravel(), np.array(gk)


def assert_bitwise(y, ref):
    assert np.all(np.isfinite(ref))
    np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))


# (rows, L, kernel taps, period): M2-BERT's bidirectional form (n = 2L, a 2L kernel, folded
# into the halves) up to the benchmark's n = 32768, the causal form (a prime length, a
# short kernel), and one row (grad k sums nothing).
CASES = [
    (3, 1000, 2000, 2048),
    (2, 16384, 32768, 32768),
    (2, 2039, 500, 0),
    (4, 1024, 1024, 0),
    (1, 4096, 8192, 8192),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_split_gradients_equal_cpu_bitwise(rng, case, with_bias):
    rows, L, taps, period = case
    g = rng.standard_normal(rows * L).astype(np.float32)
    u = rng.standard_normal(rows * L).astype(np.float32)
    k = (rng.standard_normal(taps) / np.sqrt(taps)).astype(np.float32)
    bias = rng.standard_normal(rows * L).astype(np.float32) if with_bias else np.zeros(0, np.float32)
    gu, gk, open_u, open_k, values_u, bounds_u, values_k, bounds_k = split_gradients(
        g, k, u, bias, rows, period
    )
    print(f"{case}: {int(open_u.sum())} of {gu.size} grad u, {int(open_k.sum())} of {gk.size} grad k open")
    for values, bounds in ((values_u, bounds_u), (values_k, bounds_k)):
        assert np.all(np.isfinite(values)) and np.all(bounds > 0)
    ref_u, ref_k = cpu_gradients(g, k, u, bias, rows, period)
    assert_bitwise(gu, ref_u)
    assert_bitwise(gk, ref_k)


def exact_gradients(g_int, k_int, u_int, rows, period):
    """grad u and grad k of sum(g * y), y[t] = sum_s u[(t - s) mod n] k[s] (t < L; n the
    period, else long enough not to wrap), for integer rows, exactly in int64."""
    L = g_int.size // rows
    taps = k_int.size
    n = period or L + taps
    t = np.arange(L)
    shift = (t[None, :] - np.arange(taps)[:, None]) % n  # [s, t]: index of u
    # grad u[i] = sum_t g[t] k[s] over (t - s) mod n == i; grad k[s] = sum_t g[t] u[(t - s) mod n]
    k_at = np.zeros((L, L), np.int64)  # [t, i]
    for s in range(taps):
        i = shift[s]
        inside = i < L
        k_at[t[inside], i[inside]] += k_int[s]
    grad_u, grad_k = [], np.zeros(taps, np.int64)
    for j in range(rows):
        g_j, u_j = g_int[j * L : (j + 1) * L], u_int[j * L : (j + 1) * L]
        grad_u.append(g_j @ k_at)
        u_pad = np.concatenate([u_j, np.zeros(max(n - L, 0), np.int64)])
        grad_k += (u_pad[shift] * g_j[None, :]).sum(axis=1)
    return np.concatenate(grad_u), grad_k


@pytest.mark.parametrize(
    "case", [(3, 1000, 2000, 2048), (2, 999, 300, 0), (2, 2048, 4096, 4096), (24, 512, 1024, 1024)]
)
def test_split_gradient_bounds_hold_against_exact(rng, case):
    """Rows of integers times 2^-10 (10 significant bits): the exact gradients are int64
    sums, so every value certified can be checked against its bound."""
    rows, L, taps, period = case
    scale = 2.0**-10
    g_int, u_int = (rng.integers(-1024, 1025, rows * L) for _ in range(2))
    k_int = rng.integers(-1024, 1025, taps)
    g, u, k = ((x * scale).astype(np.float32) for x in (g_int, u_int, k_int))
    gu, gk, _, _, values_u, bounds_u, values_k, bounds_k = split_gradients(
        g, k, u, np.zeros(0, np.float32), rows, period
    )
    exact_u, exact_k = exact_gradients(g_int, k_int, u_int, rows, period)
    for name, values, bounds, exact, y in (
        ("u", values_u, bounds_u, exact_u, gu),
        ("k", values_k, bounds_k, exact_k, gk),
    ):
        err = np.abs(values / scale**2 - exact.astype(np.float64))
        ratio = (err / (bounds / scale**2)).max()
        print(f"grad {name} {case}: max error / bound = {ratio:.3g}")
        assert ratio <= 1.0
        np.testing.assert_array_equal(y, (exact.astype(np.float64) * scale**2).astype(np.float32))


def test_shrunk_bound_is_caught(rng):
    """grad k on exact ties: with g = 1 its entry s is the sum of u[0 .. L - 1 - s], and u =
    2^24 + 2^12, 2^40, -2^40, +-1, ... makes about half of those odd integers in
    (2^24, 2^25), halfway between two float32 values, while the transform's errors scale
    with the 2^40 entries. The true bound gives the CPU's bits; shrunk to nothing
    (certified_round's own margin left), or to a quarter of the largest error actually
    made, some outputs certify on the wrong side."""
    L, rows = 2048, 1
    g = np.ones(L, np.float32)
    u = (rng.integers(0, 2, L) * 2 - 1).astype(np.float32)
    u[:3] = [2.0**24 + 2.0**12, 2.0**40, -(2.0**40)]
    k = (rng.integers(-4, 5, L)).astype(np.float32)
    none = np.zeros(0, np.float32)
    _, ref_k = cpu_gradients(g, k, u, none, rows, 0)
    _, gk, _, open_k, _, _, values_k, bounds_k = split_gradients(g, k, u, none, rows, 0)
    assert_bitwise(gk, ref_k)
    exact = np.array([u[: L - s].astype(np.int64).sum() for s in range(gk.size)])
    ratio = (np.abs(values_k - exact) / bounds_k).max()
    assert 0 < ratio <= 1.0
    for bound_scale in (0.0, ratio / 4):
        _, shrunk, _, _, _, _, _, _ = split_gradients(g, k, u, none, rows, 0, bound_scale=bound_scale)
        wrong = int((shrunk.view(np.uint32) != ref_k.view(np.uint32)).sum())
        print(f"max error / bound {ratio:.3g}; bound x {bound_scale:.3g}: {wrong} of {ref_k.size} "
              f"wrong; true bound: {int(open_k.sum())} open")
        assert wrong > 0


def test_rows_past_half_do_not_split():
    """u past N/2 (a circular n = L): the halves would need u folded, which grad k's
    split accumulators do not do."""
    with pytest.raises(ValueError, match="split gradient rows"):
        split_gradients(*(np.ones(4096, np.float32) for _ in range(3)), np.zeros(0, np.float32), 1, 4096)
