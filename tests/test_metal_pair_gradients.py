"""Metal's pair gradients, run on the CPU (no Mac here): the pair sum (PairSum, the vjp
of pair broadcasts), the take_rows gradient (PairRows' ScatterAdd), the layer_norm
gradient (PairLayerNormVJP) and the cross-entropy with its gradient (PairCrossEntropy)
of kernels/pair_grad.h in float pairs, and the rfft_conv gradients (PairRFFTCorrelate:
Metal's pair rfft_conv rows in the correlation geometry), as
pair_kernels.metal runs them, through the test hooks mlx_precise._ext.testing.metal_pair_*
(the Metal host's own layouts, backend/gpu/pair_grad_layout.h, for the sum).

Each output must be within the float-pair bound of pair_grad.h of the exact sum:
3 u^2 (u = 2^-24) times the sum of the partial sums' magnitudes (4 u^2 here, for the
float64 partial sums this test computes), and within that bound plus 2^-47 relative of
the CPU's double result (mlx_precise.pair on mx.cpu). The layer_norm gradient: within
2^-40 of the CPU's double result relative to each output's condition (the magnitudes of
the terms that make it up). The cross-entropy: within 2^-44 of mpmath's value relative
to its condition (the loss: the weighted |log-sum-exp| + |target logit|; each gradient
entry: |c w / sum w| (softmax (1 + |logit| + |log-sum-exp|) + onehot), plus 2^-146 (1 +
|c w / sum w|) where a result's lo part underflows), and within that of the CPU's double
result. The rfft_conv rows: within the transform's normwise bound
kappa ||a||_2 ||b||_2 (kappa from conv_error_bound with the float pairs' u, as Metal's
certification uses it) plus 2^-44 of the bias product's magnitude, of a longdouble
direct sum and of the CPU's double result. Fresh random inputs each run (the
seed is printed); the hooks' outputs start as NaN-free only if every output is written,
and NaN never passes."""

import math
import os
import zlib

import mlx.core as mx
import mpmath
import numpy as np
import pytest

from mlx_precise import _ext, pair
from mlx_precise.pair import Pair

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_metal_pair_gradients seed: {SEED}")

U2 = 2.0**-48


@pytest.fixture
def rng(request):
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def random_pair(rng, shape, spread=8):
    """A pair hi + lo with lo about 2^-24 |hi|, magnitudes over 2^+-spread, signs mixed
    (sums cancel)."""
    x = rng.standard_normal(shape) * np.exp2(rng.uniform(-spread, spread, shape))
    hi = x.astype(np.float32)
    lo = (x - hi.astype(np.float64)).astype(np.float32)
    return hi, lo


def as_double(hi, lo):
    return np.asarray(hi, np.float64) + np.asarray(lo, np.float64)


def check_sums(got_hi, got_lo, terms, cpu, what):
    """terms: (outputs, n) float64 values in the kernels' order; cpu: the CPU's result."""
    assert not np.any(np.isnan(got_hi)) and not np.any(np.isnan(got_lo)), f"{what}: NaN"
    got = as_double(got_hi, got_lo)
    exact = np.array([math.fsum(row) for row in terms])
    bound = 4 * U2 * np.abs(np.cumsum(terms, axis=1)).sum(axis=1) + 2.0**-52 * np.abs(exact)
    err = np.abs(got - exact)
    assert np.all(err <= bound), f"{what}: error {err.max():.3e} above the float-pair bound"
    cpu_err = np.abs(got - cpu)
    assert np.all(cpu_err <= bound + 2.0**-47 * np.abs(exact)), f"{what}: off the CPU's result"
    # the hi part is a float32 near the sum, the lo part what the float32 leaves
    np.testing.assert_array_equal(got_hi, got.astype(np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(exact != 0, err / np.abs(exact), 0)
    return rel.max()


@pytest.mark.parametrize(
    "shape,out_shape,order",
    [
        ((64, 33), (33,), None),  # a bias gradient: leading dim summed
        ((7, 5, 40), (5, 1), None),  # a missing leading dim and a kept dim of 1 summed
        ((3, 4, 6, 5), (4, 1, 5), (2, 0, 3, 1)),  # strided (a transposed buffer)
        ((300,), (1,), None),  # one long sum
        ((9, 1), (9, 1), None),  # nothing summed
    ],
)
def test_pair_sum(rng, shape, out_shape, order):
    # The pair is a view of a buffer with its dims permuted (order) or contiguous; hi
    # and lo laid out differently (lo always contiguous) to check both layouts.
    hi_buf, lo_view = random_pair(rng, shape)
    hi_view = hi_buf
    if order is not None:
        hi_buf, _ = random_pair(rng, tuple(shape[i] for i in order))
        hi_view = hi_buf.transpose(np.argsort(order))
        assert hi_view.shape == shape
    hi_strides = [s // 4 for s in hi_view.strides]
    lo_strides = [s // 4 for s in lo_view.strides]
    got_hi, got_lo = _ext.testing.metal_pair_sum(
        hi_buf.reshape(-1), lo_view.reshape(-1), list(shape),
        hi_strides, lo_strides, list(out_shape))

    # The terms of each output in the kernels' order: summed dims (left to right,
    # row-major) for each kept index (row-major).
    x = as_double(hi_view, lo_view)
    offset = len(shape) - len(out_shape)
    keep = [d >= offset and out_shape[d - offset] != 1 for d in range(len(shape))]
    kept = [d for d in range(len(shape)) if keep[d]]
    summed = [d for d in range(len(shape)) if not keep[d]]
    terms = x.transpose(kept + summed).reshape(int(np.prod(out_shape)), -1)

    cpu = pair.sum_to(Pair(mx.array(hi_view), mx.array(lo_view)), out_shape, stream=mx.cpu)
    cpu = as_double(np.array(cpu.hi), np.array(cpu.lo)).reshape(-1)
    worst = check_sums(got_hi, got_lo, terms, cpu, f"pair sum {shape} -> {out_shape}")
    print(f"pair sum {shape} -> {out_shape}: worst relative error {worst:.2e}")


@pytest.mark.parametrize("count,table_rows,dim", [(200, 13, 9), (5, 40, 3), (1, 1, 1)])
def test_take_rows_gradient(rng, count, table_rows, dim):
    # ids repeat, some rows get none, and some ids fall outside the table (dropped).
    ids = rng.integers(-2, table_rows + 2, count).astype(np.int32)
    g_hi, g_lo = random_pair(rng, (count, dim))
    got_hi, got_lo = _ext.testing.metal_pair_scatter_add(
        g_hi.reshape(-1), g_lo.reshape(-1), ids, dim, table_rows)
    g = as_double(g_hi, g_lo)
    most = max(1, max(int(np.sum(ids == v)) for v in range(table_rows)))
    terms = np.zeros((table_rows * dim, most))
    for v in range(table_rows):
        rows = g[ids == v]  # in position order, the CPU's and the kernels' order
        terms[v * dim:(v + 1) * dim, :len(rows)] = rows.T

    # The CPU's double gradient: the vjp of pair take_rows (ids inside the table only:
    # the CPU gathers NaN rows for the others, and their cotangents are dropped anyway).
    table = Pair(mx.zeros((table_rows, dim)), mx.zeros((table_rows, dim)))
    inside = (ids >= 0) & (ids < table_rows)
    mids = mx.array(ids[inside])

    def gathered(th, tl):
        return list(pair.take_rows(Pair(th, tl), mids, stream=mx.cpu).astuple())

    _, (cpu_hi, cpu_lo) = mx.vjp(gathered, [table.hi, table.lo],
                                 [mx.array(g_hi[inside]), mx.array(g_lo[inside])])
    cpu = as_double(np.array(cpu_hi), np.array(cpu_lo)).reshape(-1)
    worst = check_sums(got_hi, got_lo, terms, cpu, "take_rows gradient")
    print(f"take_rows gradient ({count} ids, {table_rows} rows): worst relative error "
          f"{worst:.2e}")


@pytest.mark.parametrize("rows,dim,with_weight", [(6, 48, True), (3, 768, True), (4, 33, False)])
def test_layer_norm_gradient(rng, rows, dim, with_weight):
    offset = rng.standard_normal((rows, 1)) * 4  # rows whose mean is far from zero
    x_hi, x_lo = random_pair(rng, (rows, dim), spread=1)
    x = as_double(x_hi, x_lo) + offset
    x_hi = x.astype(np.float32)
    x_lo = (x - x_hi.astype(np.float64)).astype(np.float32)
    x = as_double(x_hi, x_lo)
    g_hi, g_lo = random_pair(rng, (rows, dim), spread=2)
    g = as_double(g_hi, g_lo)
    weight = (rng.standard_normal(dim) * 2).astype(np.float32)
    eps = 1e-5
    dx_hi, dx_lo, gx_hi, gx_lo = _ext.testing.metal_pair_layer_norm_vjp(
        x_hi.reshape(-1), x_lo.reshape(-1), g_hi.reshape(-1), g_lo.reshape(-1),
        weight if with_weight else np.zeros(0, np.float32), dim, eps)
    for part in (dx_hi, dx_lo, gx_hi, gx_lo):
        assert not np.any(np.isnan(part)), "NaN output"
    dx = as_double(dx_hi, dx_lo).reshape(rows, dim)
    gx = as_double(gx_hi, gx_lo).reshape(rows, dim)

    # The CPU's double gradients: dx, and the weight's (the sum of g xhat over rows).
    def normalized(xh, xl, *wt):
        out = pair.layer_norm(Pair(xh, xl), wt[0] if wt else None, None, eps, stream=mx.cpu)
        return list(out.astuple())

    primals = [mx.array(x_hi), mx.array(x_lo)] + ([mx.array(weight)] if with_weight else [])
    _, grads = mx.vjp(normalized, primals, [mx.array(g_hi), mx.array(g_lo)])
    cpu_dx = as_double(np.array(grads[0]), np.array(grads[1]))

    # Each output's condition, in float64: rstd (|gw| + mean|gw| + (|xhat| + 1) mean|gw
    # xhat|), plus the centring's (|mean| rstd, the error of xhat from the mean's).
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    gw = g * (weight if with_weight else 1)
    centring = np.abs(mean) * rstd + 1
    scale_dx = rstd * (np.abs(gw) + np.abs(gw).mean(axis=1, keepdims=True)
                       + (np.abs(xhat) + centring) * np.abs(gw * xhat).mean(axis=1, keepdims=True))
    err = np.abs(dx - cpu_dx)
    assert np.all(err <= 2.0**-40 * scale_dx), (
        f"dx: {np.max(err / scale_dx):.3e} of its condition off the CPU's")
    # g xhat against the exact-input float64 value (its own condition), and its sum over
    # rows against the CPU's weight gradient
    scale_gx = np.abs(g) * (np.abs(xhat) + centring)
    assert np.all(np.abs(gx - g * xhat) <= 2.0**-40 * scale_gx), "g xhat off"
    if with_weight:
        summed = np.array([math.fsum(col) for col in gx.T])
        cpu_dw = np.array(grads[2], np.float64)
        # the CPU's weight gradient is float32 (one rounding of its double sum)
        assert np.all(np.abs(summed - cpu_dw) <= 2.0**-24 * np.abs(summed)
                      + 2.0**-40 * scale_gx.sum(axis=0)), "g xhat summed off the weight gradient"
    print(f"layer_norm gradient ({rows}x{dim}): worst dx error "
          f"{np.max(err / scale_dx):.2e} of its condition")


@pytest.mark.parametrize("rows,classes,offset", [(7, 40, 0.0), (5, 3, 60.0), (3, 1000, -30.0)])
def test_cross_entropy(rng, rows, classes, offset):
    # Logits spread over +-2^4 about an offset (log-sum-exp far from zero), weights 0, 1
    # and in between; the last row's target is outside the classes, with weight 0: the
    # loss skips it, its gradient row is NaN (as on the CPU).
    logits = rng.standard_normal((rows, classes)) * np.exp2(rng.uniform(-2, 4, (rows, 1)))
    l_hi = (logits + offset).astype(np.float32)
    l_lo = ((logits + offset) - l_hi.astype(np.float64)).astype(np.float32)
    targets = rng.integers(0, classes, rows).astype(np.int32)
    targets[-1] = classes
    weights = rng.choice([0.0, 1.0, 0.375, 2.5], rows).astype(np.float32)
    weights[0], weights[-1] = 1.0, 0.0
    c_hi, c_lo = random_pair(rng, (), spread=3)
    loss_hi, loss_lo = _ext.testing.metal_pair_cross_entropy(
        l_hi.reshape(-1), l_lo.reshape(-1), targets, weights, classes, False)
    grad_hi, grad_lo = _ext.testing.metal_pair_cross_entropy(
        l_hi.reshape(-1), l_lo.reshape(-1), targets, weights, classes, True,
        float(c_hi), float(c_lo))

    # mpmath references: each row's log-sum-exp, the loss, the gradient.
    x = as_double(l_hi, l_lo)
    c = float(c_hi) + float(c_lo)
    total = float(weights.astype(np.float64).sum())
    with mpmath.workdps(40):
        lse = [mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row)) for row in x]
        loss = mpmath.fsum(mpmath.mpf(float(w)) * (lse[i] - mpmath.mpf(x[i, targets[i]]))
                           for i, w in enumerate(weights) if w != 0) / total
        grad = np.array([[float(c * float(weights[i]) / total
                                * (mpmath.exp(mpmath.mpf(x[i, j]) - lse[i]) - (j == targets[i])))
                          for j in range(classes)] for i in range(rows - 1)])
        softmax = np.array([[float(mpmath.exp(mpmath.mpf(v) - lse[i])) for v in x[i]]
                            for i in range(rows - 1)])
    lse = np.array([float(v) for v in lse])

    # The loss.
    assert np.isfinite(loss_hi[0]) and np.isfinite(loss_lo[0]), "NaN loss"
    got = as_double(loss_hi, loss_lo)[0]
    condition = sum(float(w) * (abs(lse[i]) + abs(x[i, targets[i]]))
                    for i, w in enumerate(weights) if w != 0) / total
    loss_error = abs(got - float(loss)) / condition
    assert loss_error <= 2.0**-44, f"loss: {loss_error:.3e} of its condition off"
    cpu = pair.cross_entropy(Pair(mx.array(l_hi), mx.array(l_lo)), mx.array(targets),
                             mx.array(weights), stream=mx.cpu)
    assert abs(got - as_double(np.array(cpu.hi), np.array(cpu.lo))) <= 2.0**-43 * condition

    # The gradient: NaN exactly in the row with no valid target.
    g_hi, g_lo = grad_hi.reshape(rows, classes), grad_lo.reshape(rows, classes)
    assert np.all(np.isnan(g_hi[-1])), "the row without a valid target must be NaN"
    assert not np.any(np.isnan(g_hi[:-1])) and not np.any(np.isnan(g_lo[:-1])), "NaN gradient"
    g = as_double(g_hi, g_lo)[:-1]
    scale = abs(c) * weights[:-1, None].astype(np.float64) / total
    onehot = np.arange(classes)[None, :] == targets[:-1, None]
    condition = scale * (softmax * (1 + np.abs(x[:-1]) + np.abs(lse[:-1, None])) + onehot)
    # Below about 2^-102 a float pair's lo part is subnormal: each of dd_exp's scaling
    # and the product with the scale can then be off by 2^-150 absolutely.
    underflow = 2.0**-146 * (1 + scale)
    error = np.abs(g - grad)
    assert np.all(error <= 2.0**-44 * condition + underflow), (
        "gradient off by more than 2^-44 of its condition")
    np.testing.assert_array_equal(g_hi[:-1], g.astype(np.float32))
    _, (cpu_hi, cpu_lo) = mx.vjp(
        lambda h, lo: list(pair.cross_entropy(Pair(h, lo), mx.array(targets), mx.array(weights),
                                              stream=mx.cpu).astuple()),
        [mx.array(l_hi), mx.array(l_lo)], [mx.array(c_hi), mx.array(c_lo)])
    cpu_g = as_double(np.array(cpu_hi), np.array(cpu_lo))
    assert np.all(np.isnan(cpu_g[-1]))
    assert np.all(np.abs(g - cpu_g[:-1]) <= 2.0**-43 * condition + underflow), "off the CPU's"
    print(f"cross_entropy ({rows}x{classes}, offset {offset}): loss error "
          f"{loss_error:.2e}, worst gradient error "
          f"{np.max(np.maximum(error - underflow, 0)[condition > 0] / condition[condition > 0]):.2e}"
          " of its condition")


NO_BIAS = np.zeros(0, np.float32)


def conv_reference(variant, a, b, size, out_len):
    """The exact-to-2^-60 direct sums (longdouble; pair values hi + lo are exact in it)
    of the cyclic convolution of size `size` (the causal form never wraps):
    convolve y[t] = sum_j b[j] a[(t - j) mod size]; correlate_* out[s] = sum_t a[t]
    b_pad[(t - s) mod size] (grad u: b = k; grad k: b = u)."""
    a, b = a.astype(np.longdouble), b.astype(np.longdouble)
    L = len(a)
    t = np.arange(out_len)
    if variant == "convolve":
        a_pad = np.concatenate([a, np.zeros(size - L, np.longdouble)])
        taps = a_pad[(t[:, None] - np.arange(len(b))[None, :]) % size]  # (t, j)
        return taps @ b
    b_pad = np.concatenate([b, np.zeros(size - len(b), np.longdouble)])
    taps = b_pad[(np.arange(L)[None, :] - t[:, None]) % size]  # (s, t)
    return taps @ a


def cpu_pair_conv(variant, a, b, bias, n, kernel_len):
    """The CPU's double result: pair.rfft_conv, or its vjp for the correlations."""
    a_pair, b_pair = [Pair(mx.array(h), mx.array(lo)) for h, lo in (a, b)]
    bias_arr = mx.array(bias) if len(bias) else None

    def conv(u, k):
        return list(pair.rfft_conv(u, k, n=n, bias=bias_arr, stream=mx.cpu).astuple())

    if variant == "convolve":
        out = conv(a_pair, b_pair)
    elif variant == "correlate_input":  # a = g, b = k
        u = Pair(mx.zeros(len(a[0])), mx.zeros(len(a[0])))
        _, out = mx.vjp(lambda uh, ul: conv(Pair(uh, ul), b_pair), [u.hi, u.lo], [mx.array(p) for p in a])
    else:  # a = g, b = u
        k = Pair(mx.zeros(kernel_len), mx.zeros(kernel_len))
        _, out = mx.vjp(lambda kh, kl: conv(b_pair, Pair(kh, kl)), [k.hi, k.lo], [mx.array(p) for p in a])
    return as_double(np.array(out[0]), np.array(out[1]))


@pytest.mark.parametrize(
    "variant,L,Lk,n,with_bias",
    [
        ("correlate_input", 37, 37, None, True),
        ("correlate_input", 64, 20, 64, False),
        ("correlate_input", 300, 300, None, False),
        ("correlate_kernel", 37, 37, None, False),
        ("correlate_kernel", 48, 48, 96, False),
        ("correlate_kernel", 300, 120, None, False),
        ("convolve", 48, 48, 96, True),
        ("convolve", 300, 300, None, False),
    ],
)
def test_rfft_conv_rows(rng, variant, L, Lk, n, with_bias):
    # a: u (convolve) or the cotangent g; b: k, or u for the kernel's gradient.
    a = random_pair(rng, L, spread=3)
    b = random_pair(rng, L if variant == "correlate_kernel" else Lk, spread=3)
    bias = (rng.standard_normal(L) * 2).astype(np.float32) if with_bias else NO_BIAS
    kernel_len = Lk if variant == "correlate_kernel" else 0
    out_len = Lk if variant == "correlate_kernel" else L
    got_hi, got_lo, kappa = _ext.testing.metal_pair_conv(
        a[0], a[1], b[0], b[1], bias, n or 0, variant, kernel_len)
    assert len(got_hi) == out_len
    assert not np.any(np.isnan(got_hi)) and not np.any(np.isnan(got_lo)), "NaN output"
    got = as_double(got_hi, got_lo)
    np.testing.assert_array_equal(got_hi, got.astype(np.float32))

    av, bv = as_double(*a), as_double(*b)
    exact = conv_reference(variant, av, bv, n or L + len(bv), out_len)
    bias_product = np.zeros(out_len)
    if with_bias:
        bias_product = av * bias.astype(np.float64)
        exact = exact + bias_product.astype(np.longdouble)
    bound = (kappa * np.linalg.norm(av) * np.linalg.norm(bv)
             + 2.0**-44 * (np.abs(exact.astype(np.float64)) + np.abs(bias_product)))
    err = np.abs((got.astype(np.longdouble) - exact).astype(np.float64))
    assert np.all(err <= bound), f"{variant}: error {np.max(err / bound):.3e} of the bound"
    cpu = cpu_pair_conv(variant, a, b, bias, n, Lk)
    assert np.all(np.abs(got - cpu) <= bound), f"{variant}: off the CPU's result"
    scale = np.linalg.norm(av) * np.linalg.norm(bv)
    print(f"{variant} (L {L}, Lk {Lk}, n {n}): worst error {np.max(err) / scale:.2e} of "
          f"||a|| ||b|| (bound {kappa:.2e})")
