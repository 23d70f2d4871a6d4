"""Property tests (hypothesis) of the ops' shape, broadcasting, n and bias semantics.

hypothesis draws the shapes, n, bias shapes, scalars and a seed for the values;
the outputs are compared with references computed here from the documented
definitions, by direct summation in float64 (rfft_conv, layer_norm) or exactly
with fractions (addmm, linear). The example counts come from the profile that
tests/conftest.py loads: "ci" by default, HYPOTHESIS_PROFILE=dev for a long run.
"""

from fractions import Fraction

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import mlx_precise as mp
from reference import ulp32

EXTENDED = ("extended", "dd")


def normal32(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_close(y, ref, scale, precision):
    """Extended modes: within 1 ulp of the float64 reference (plus the reference's own
    error, far below); float32: within a float32 FFT/sum's error of the scale of the
    summed terms. Either way a wrong term, index or broadcast shows as an error of
    the order of `scale`."""
    y = np.asarray(y, dtype=np.float64)
    assert not np.any(np.isnan(y)), "NaN in output"
    err = np.abs(y - ref)
    if precision in EXTENDED:
        bound = ulp32(ref) + 2.0**-40 * scale
    else:
        bound = 2.0**-16 * scale + 1e-30
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), (
        f"{precision}: error {err[worst]:.3e} > {bound[worst]:.3e} at {worst}"
    )


def shapes_broadcasting_to(shape):
    """Shapes that broadcast to `shape` without enlarging it: its trailing dims,
    each kept or set to 1."""
    return st.integers(0, len(shape)).flatmap(
        lambda ndim: st.tuples(
            *(st.sampled_from(sorted({1, d})) for d in shape[len(shape) - ndim :])
        )
    )


# ------------------------------------------------------------------ rfft_conv


@st.composite
def conv_cases(draw):
    """u (..., L), k (..., Lk) with broadcasting leading dims, n, and a bias
    broadcastable to the output."""
    (u_lead, k_lead), out_lead = draw(
        mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
    )
    L = draw(st.integers(1, 48))
    Lk = draw(st.integers(1, 48))
    n = draw(st.one_of(st.none(), st.integers(max(L, Lk), max(L, Lk) + 40)))
    out_shape = out_lead + (L,)
    bias_shape = draw(st.one_of(st.none(), shapes_broadcasting_to(out_shape)))
    seed = draw(st.integers(0, 2**32 - 1))
    return u_lead + (L,), k_lead + (Lk,), n, bias_shape, out_shape, seed


def conv_reference64(u, k, n, bias):
    """The documented definition, summed directly in float64: causal
    y[t] = sum_{j <= min(t, Lk-1)} u[t-j] k[j] for n=None, else the circular
    convolution of size n, [..., :L]; plus u * bias. Also the per-output sum of
    |terms| (the scale of what was added)."""
    u = u.astype(np.float64)
    k = k.astype(np.float64)
    L, Lk = u.shape[-1], k.shape[-1]
    size = n if n is not None else L + Lk  # the causal form never wraps at L + Lk
    u_pad = np.concatenate([u, np.zeros(u.shape[:-1] + (size - L,))], axis=-1)
    k_pad = np.concatenate([k, np.zeros(k.shape[:-1] + (size - Lk,))], axis=-1)
    taps = (np.arange(L)[:, None] - np.arange(size)[None, :]) % size  # (t, j) -> t - j mod size
    terms = u_pad[..., taps] * k_pad[..., None, :]  # (..., t, j)
    y, scale = terms.sum(-1), np.abs(terms).sum(-1)
    if bias is not None:
        y = y + u * bias.astype(np.float64)
        scale = scale + np.abs(u * bias.astype(np.float64))
    return y, scale


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@given(case=conv_cases())
def test_rfft_conv_shape_broadcasting_n_and_bias(precision, case):
    u_shape, k_shape, n, bias_shape, out_shape, seed = case
    u, k = normal32(seed, u_shape), normal32(seed + 1, k_shape)
    bias = None if bias_shape is None else normal32(seed + 2, bias_shape)
    y = mp.rfft_conv(
        mx.array(u),
        mx.array(k),
        n=n,
        bias=None if bias is None else mx.array(bias),
        precision=precision,
    )
    assert y.shape == out_shape and y.dtype == mx.float32
    ref, scale = conv_reference64(u, k, n, bias)
    # An FFT's error scales with its whole row, not with each output's own terms.
    row_scale = np.broadcast_to(scale, out_shape).max(axis=-1, keepdims=True)
    ref, row_scale = np.broadcast_to(ref, out_shape), np.broadcast_to(row_scale, out_shape)
    assert_close(y, ref, row_scale, precision)


@given(
    L=st.integers(1, 40),
    Lk=st.integers(1, 40),
    short=st.integers(1, 40),
    precision=st.sampled_from(mp.PRECISIONS),
)
def test_rfft_conv_rejects_n_below_either_length(L, Lk, short, precision):
    n = max(L, Lk) - short
    assume(n >= 1)
    with pytest.raises(ValueError, match="n = "):
        mp.rfft_conv(mx.zeros((2, L)), mx.zeros((Lk,)), n=n, precision=precision)


@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
    extra=st.integers(1, 3),
    precision=st.sampled_from(mp.PRECISIONS),
)
def test_rfft_conv_rejects_a_bias_that_would_grow_the_output(shapes, extra, precision):
    (u_lead, k_lead), out_lead = shapes
    bias_shape = (extra + 1,) + out_lead + (1,)  # one more leading dim than the output
    with pytest.raises(ValueError, match="bias"):
        mp.rfft_conv(
            mx.zeros(u_lead + (8,)),
            mx.zeros(k_lead + (8,)),
            bias=mx.zeros(bias_shape),
            precision=precision,
        )


# ---------------------------------------------------------------- strict ops


def round_to_float32(x: Fraction) -> float:
    """The float32 nearest to the exact rational x (ties to even)."""
    guess = np.float32(float(x))  # within an ulp of the answer
    below, above = np.nextafter(guess, np.float32(-np.inf)), np.nextafter(guess, np.float32(np.inf))
    distance_then_odd = lambda c: (abs(Fraction(float(c)) - x), int(c.view(np.uint32)) & 1)  # noqa: E731
    return min([below, guess, above], key=distance_then_odd)


def exact_addmm(c, a, b, alpha, beta):
    """float32(beta * c + alpha * (a @ b)) rounded once from the exact value, with
    mx.addmm's broadcasting (c to the output, batch dims of a and b)."""
    out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    a = np.broadcast_to(a, out_shape[:-2] + a.shape[-2:])
    b = np.broadcast_to(b, out_shape[:-2] + b.shape[-2:])
    c = np.broadcast_to(c, out_shape)
    alpha, beta = Fraction(float(np.float32(alpha))), Fraction(float(np.float32(beta)))
    out = np.empty(out_shape, np.float32)
    for index in np.ndindex(*out_shape):
        *batch, i, j = index
        row, column = a[(*batch, i)], b[(*batch, slice(None), j)]
        dot = sum(Fraction(float(p)) * Fraction(float(q)) for p, q in zip(row, column))
        out[index] = round_to_float32(beta * Fraction(float(c[index])) + alpha * dot)
    return out


def assert_strict_value(y, exact, scale, precision):
    """extended and dd: every output correctly rounded (dd is computed as extended where
    float64 exists: README, "The dd contract"). float32: MLX's own path, held to a
    float32 sum's error."""
    if precision in EXTENDED:
        np.testing.assert_array_equal(y, exact)
    else:
        assert_close(y, exact.astype(np.float64), scale, precision)


@st.composite
def addmm_cases(draw):
    (a_batch, b_batch), out_batch = draw(
        mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=2)
    )
    M, K, N = (draw(st.integers(1, 5)) for _ in range(3))
    out_shape = out_batch + (M, N)
    c_shape = draw(shapes_broadcasting_to(out_shape))
    # alpha, beta: 0 or of magnitude 2^-10 .. 4.
    magnitude = st.floats(2.0**-10, 4.0)
    scalar = st.one_of(st.just(0.0), magnitude, magnitude.map(lambda x: -x))
    return a_batch + (M, K), b_batch + (K, N), c_shape, out_shape, draw(scalar), draw(scalar), draw(
        st.integers(0, 2**32 - 1)
    )


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@given(case=addmm_cases())
def test_addmm_shapes_broadcasting_and_value(precision, case):
    a_shape, b_shape, c_shape, out_shape, alpha, beta, seed = case
    a, b, c = normal32(seed, a_shape), normal32(seed + 1, b_shape), normal32(seed + 2, c_shape)
    y = mp.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=alpha, beta=beta, precision=precision)
    assert y.shape == out_shape and y.dtype == mx.float32
    exact = exact_addmm(c, a, b, alpha, beta)
    ab = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    scale = np.abs(np.float32(alpha)) * ab + np.abs(np.float32(beta) * c.astype(np.float64))
    scale = np.broadcast_to(scale, out_shape)
    assert_strict_value(np.asarray(y), exact, scale, precision)


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    features=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_linear_is_x_weight_transposed_plus_bias(precision, lead, features, with_bias, seed):
    d_in, d_out = features
    x, weight = normal32(seed, lead + (d_in,)), normal32(seed + 1, (d_out, d_in))
    bias = normal32(seed + 2, (d_out,)) if with_bias else None
    y = mp.linear(
        mx.array(x), mx.array(weight), None if bias is None else mx.array(bias), precision=precision
    )
    assert y.shape == lead + (d_out,) and y.dtype == mx.float32
    c = bias if bias is not None else np.zeros((d_out,), np.float32)
    exact = exact_addmm(c, x.reshape((-1, d_in)), weight.T, 1.0, 1.0).reshape(lead + (d_out,))
    scale = np.abs(x.astype(np.float64)) @ np.abs(weight.T.astype(np.float64)) + np.abs(c)
    assert_strict_value(np.asarray(y), exact, scale, precision)


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    D=st.integers(2, 40),
    affine=st.sampled_from(["none", "weight", "both"]),
    eps=st.sampled_from([0.0, 1e-5, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_layer_norm_over_the_last_axis(precision, lead, D, affine, eps, seed):
    x = normal32(seed, lead + (D,))
    weight = normal32(seed + 1, (D,)) if affine != "none" else None
    bias = normal32(seed + 2, (D,)) if affine == "both" else None
    y = mp.layer_norm(
        mx.array(x),
        None if weight is None else mx.array(weight),
        None if bias is None else mx.array(bias),
        eps=eps,
        precision=precision,
    )
    assert y.shape == x.shape and y.dtype == mx.float32
    x64 = x.astype(np.longdouble)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    ref = (x64 - mean) / np.sqrt(var + np.longdouble(eps))
    # Errors in x - mean scale with the row's spread (the normalised values are
    # O(1)), so each output's scale is 1 + |its normalised value| before the affine map.
    scale = 1 + np.abs(ref)
    if weight is not None:
        ref, scale = ref * weight.astype(np.longdouble), scale * np.abs(weight)
    if bias is not None:
        ref, scale = ref + bias.astype(np.longdouble), scale + np.abs(bias)
    assert_close(y, ref.astype(np.float64), scale.astype(np.float64), precision)
