"""Value fuzzing (hypothesis) of the certified ops against exact references (issue 15).

hypothesis draws the values themselves: the whole float32 range (subnormals,
near-overflow), small integers (exact ties with a bias), rows of mixed scale, and
NaN/Inf placed anywhere. References: exact sums of float32 products rounded once
(rfft_conv, its gradients, addmm) and mpmath intervals refined until they round
to one float32, midpoints decided in Fractions (layer_norm). Example counts come
from tests/conftest.py's profile ("ci", or HYPOTHESIS_PROFILE=dev)."""

import mlx.core as mx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import mlx_precise as mp
from reference import exact_conv, layer_norm_reference_mp, round_exact_sum

CERTIFIED = ("extended", "dd")

any_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
tiny_float32 = st.floats(min_value=-(2.0**-120), max_value=2.0**-120, width=32)
huge_float32 = st.floats(min_value=2.0**100, max_value=2.0**127, width=32).flatmap(
    lambda v: st.sampled_from([v, -v])
)
small_integers = st.integers(-64, 64).map(float)
values = st.one_of(any_float32, tiny_float32, huge_float32, small_integers)


def rows(length, elements=values):
    return st.lists(elements, min_size=length, max_size=length).map(lambda v: np.float32(v))


def scaled_rows(length):
    """A row of ordinary values times one power of two (whole-row dynamic range)."""
    return st.tuples(rows(length, st.floats(-4, 4, width=32)), st.integers(-140, 120)).map(
        lambda r: np.float32(np.ldexp(r[0].astype(np.float64), r[1]))
    )


def row_pairs(draw, L, Lk):
    kind = draw(st.sampled_from(["any", "scaled", "integers"]))
    if kind == "scaled":
        return draw(scaled_rows(L)), draw(scaled_rows(Lk))
    if kind == "integers":
        return draw(rows(L, small_integers)), draw(rows(Lk, small_integers))
    return draw(rows(L)), draw(rows(Lk))


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


@st.composite
def conv_cases(draw):
    L = draw(st.integers(1, 20))
    Lk = draw(st.integers(1, 20))
    u, k = row_pairs(draw, L, Lk)
    n = draw(st.one_of(st.none(), st.integers(max(L, Lk), 2 * max(L, Lk) + 3)))
    bias = draw(st.one_of(st.none(), rows(L, st.one_of(small_integers, any_float32))))
    return u, k, n, bias


@given(conv_cases())
def test_rfft_conv_is_correctly_rounded(case):
    u, k, n, bias = case
    expected = exact_conv(u, k, n=n, bias=bias)
    for precision in CERTIFIED:
        y = mp.rfft_conv(
            mx.array(u), mx.array(k), n=n, bias=None if bias is None else mx.array(bias), precision=precision
        )
        np.testing.assert_array_equal(bits(y), bits(expected), err_msg=precision)


@given(st.data())
def test_rfft_conv_gradients_are_correctly_rounded(data):
    L = data.draw(st.integers(1, 16))
    u, k = row_pairs(data.draw, L, L)
    g = data.draw(st.one_of(rows(L), scaled_rows(L)))
    d = data.draw(rows(L, st.one_of(small_integers, any_float32)))
    u64, k64, g64, d64 = (x.astype(np.float64) for x in (u, k, g, d))
    ref_u = [round_exact_sum([g64[t] * k64[t - s] for t in range(s, L)] + [g64[s] * d64[s]]) for s in range(L)]
    ref_k = [round_exact_sum([g64[t] * u64[t - j] for t in range(j, L)]) for j in range(L)]
    ref_d = [round_exact_sum([g64[t] * u64[t]]) for t in range(L)]
    for precision in CERTIFIED:
        _, vjp = mx.vjp(
            lambda u, k, d: mp.rfft_conv(u, k, bias=d, precision=precision),
            [mx.array(u), mx.array(k), mx.array(d)],
            [mx.array(g)],
        )
        for got, ref in zip(vjp, (ref_u, ref_k, ref_d)):
            np.testing.assert_array_equal(bits(got), bits(ref), err_msg=precision)


@given(st.data())
def test_nan_and_inf_stay_in_their_row(data):
    L = data.draw(st.integers(2, 16))
    u = np.stack([data.draw(rows(L, st.floats(-4, 4, width=32))) for _ in range(2)])
    k = data.draw(rows(L, st.floats(-4, 4, width=32)))
    where = data.draw(st.integers(0, L - 1))
    u[0, where] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    for precision in CERTIFIED:
        y = np.array(mp.rfft_conv(mx.array(u), mx.array(k), precision=precision))
        assert not np.all(np.isfinite(y[0]))
        np.testing.assert_array_equal(bits(y[1]), bits(exact_conv(u[1], k)))


@given(st.data())
def test_extended_addmm_is_correctly_rounded(data):
    m, kk, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    a = np.stack([data.draw(rows(kk)) for _ in range(m)])
    b = np.stack([data.draw(rows(n)) for _ in range(kk)])
    c = np.stack([data.draw(rows(n)) for _ in range(m)])
    alpha = np.float32(data.draw(st.one_of(st.just(1.0), any_float32)))
    beta = np.float32(data.draw(st.one_of(st.just(0.0), st.just(1.0), any_float32)))
    y = np.array(mp.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=float(alpha), beta=float(beta), precision="extended"))
    # alpha * sum a b + beta * c: every product of three floats exact as a Fraction.
    from fractions import Fraction

    for i in range(m):
        for j in range(n):
            exact = Fraction(float(alpha)) * sum(Fraction(float(a[i, p])) * Fraction(float(b[p, j])) for p in range(kk))
            if beta != 0:
                exact += Fraction(float(beta)) * Fraction(float(c[i, j]))
            expected = fraction_to_float32(exact)
            assert bits(y[i, j]) == bits(expected), (i, j, y[i, j], expected)
    # dd is computed as extended (README, "The dd contract"): the same bits.
    dd = np.array(mp.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=float(alpha), beta=float(beta), precision="dd"))
    np.testing.assert_array_equal(bits(dd), bits(y))


def fraction_to_float32(x):
    """The float32 nearest to the Fraction x (ties to even, +0 for zero, inf beyond range)."""
    from fractions import Fraction

    if x == 0:
        return np.float32(0.0)
    sign = -1 if x < 0 else 1
    x = abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    lsb = max(e - 23, -149)
    q = x / Fraction(2) ** lsb
    floor = q.numerator // q.denominator
    rest = q - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    value = floor * 2.0**lsb if lsb < 900 else float("inf")
    return np.float32(sign * value)  # exact unless beyond float32: inf


@given(st.data())
def test_layer_norm_is_correctly_rounded(data):
    D = data.draw(st.integers(2, 12))
    x = np.stack([data.draw(st.one_of(rows(D), scaled_rows(D))) for _ in range(2)])
    w = data.draw(st.one_of(st.none(), rows(D, st.floats(-4, 4, width=32))))
    b = data.draw(st.one_of(st.none(), rows(D, st.floats(-4, 4, width=32))))
    eps = data.draw(st.sampled_from([0.0, 1e-5, 1e-12]))
    # eps = 0 and a constant row divide by zero: not a finite case.
    spread = np.ptp(x.astype(np.float64), axis=1)
    if eps == 0.0 and np.any(spread == 0):
        eps = 1e-5
    expected = layer_norm_reference_mp(x, w, b, eps)
    args = (mx.array(x), None if w is None else mx.array(w), None if b is None else mx.array(b))
    y = np.array(mp.layer_norm(*args, eps=eps, precision="extended"))
    # A zero weight makes an exact zero whose sign is IEEE's (-n * 0 = -0), which the
    # real-valued reference cannot express: zeros compare by value.
    np.testing.assert_array_equal(bits(np.where(expected == 0, 0, y)), bits(np.where(expected == 0, 0, expected)))
    assert np.all(y[expected == 0] == 0)
    dd = np.array(mp.layer_norm(*args, eps=eps, precision="dd"))
    np.testing.assert_array_equal(bits(dd), bits(y))
