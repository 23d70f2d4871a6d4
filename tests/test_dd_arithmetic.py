"""Double-word arithmetic of kernels/dd.h against exact references.

Every test draws fresh random inputs (the seed is printed, so a failure can be
replayed) plus adversarial families, and checks them against references that
involve no rounding at all:
  * float64 where the operation is provably exact in it (each use says why),
  * Python integers: every float32 is an integer multiple of 2^-149, so
    x * 2^149 is an exact integer, and sums and products of such integers are
    exact (a Fraction with a power-of-two denominator, without gcd costs).
u = 2^-24 is the unit roundoff of float32.
"""

from fractions import Fraction

import numpy as np
import pytest

import mlx_precise  # noqa: F401  (loads mlx.core before the extension)
from mlx_precise._ext import testing as dd

U = 2.0**-24
F32_MAX = np.finfo(np.float32).max


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"rng seed {seed}")  # pytest shows it when the test fails
    return np.random.default_rng(seed)


# ------------------------------------------------------------- generators ----


def f32(x):
    with np.errstate(over="ignore"):  # near-overflow cases round to inf on purpose
        return np.asarray(x, dtype=np.float32)


def random_floats(rng, n, min_exp, max_exp):
    """Random-sign normal float32 in [2^e, 2^(e+1)), e uniform in [min_exp, max_exp],
    24-bit significand uniform. Built exactly in float64, then cast exactly."""
    significand = rng.integers(2**23, 2**24, n).astype(np.float64)
    exponent = rng.integers(min_exp, max_exp + 1, n)
    sign = rng.choice([-1.0, 1.0], n)
    return f32(sign * np.ldexp(significand, exponent - 23))


def random_subnormals(rng, n):
    """Subnormal (and zero) float32: integer multiples of 2^-149 below 2^-126."""
    return f32(np.ldexp(rng.integers(-(2**23) + 1, 2**23, n).astype(np.float64), -149))


def exponent(x):
    """e with |x| in [2^e, 2^(e+1)) (for zero: -1, never used as a gap)."""
    return np.frexp(f32(x))[1].astype(np.int64) - 1


def ulp(x):
    """ulp(x) = 2^(e - 23) for |x| in [2^e, 2^(e+1)), 2^-149 for subnormals and 0
    (np.spacing would say inf for FLT_MAX)."""
    x = f32(x)
    e = np.where(x == 0, -126, np.maximum(exponent(x), -126))
    return f32(np.ldexp(1.0, e - 23))


def normalise(hi, lo):
    """(RN(hi + lo), hi + lo - RN(hi + lo)) for |lo| <= ulp(hi)/2.

    Only |lo| >= ulp(hi)/4 can move hi (a tie, or just below a power of two);
    there hi + lo spans at most 24 + 26 bits, so it is exact in float64, its
    float32 rounding is RN(hi + lo) and the tail is exact too."""
    total = hi.astype(np.float64) + lo.astype(np.float64)
    may_move = np.abs(lo) >= ulp(hi) / 4
    new_hi = np.where(may_move, f32(total), hi)
    new_lo = np.where(may_move, f32(total - new_hi.astype(np.float64)), lo)
    return new_hi, new_lo


def random_lo(rng, hi):
    """lo for hi: |lo| from exactly ulp(hi)/2 down to ulp(hi)/2^31, some lo = 0."""
    n = hi.size
    half_ulp = ulp(hi).astype(np.float64) / 2
    fraction = rng.integers(-(2**24), 2**24 + 1, n) / 2.0**24
    shrink = 2.0 ** -rng.choice([0, 0, 0, 0, 1, 2, 5, 12, 30], n)
    lo = half_ulp * fraction * shrink
    kind = rng.random(n)
    lo = np.where(kind < 0.03, 0.0, lo)
    return f32(np.where((kind >= 0.03) & (kind < 0.08), half_ulp * rng.choice([-1.0, 1.0], n), lo))


def random_double_words(rng, n, min_exp, max_exp):
    """Normalised pairs (hi = RN(hi + lo)), hi as in random_floats but 10 % with
    extreme significands (a power of two, all ones), lo as in random_lo."""
    hi = random_floats(rng, n, min_exp, max_exp)
    extreme = rng.random(n) < 0.1
    power = np.sign(hi) * np.ldexp(1.0, exponent(hi))
    all_ones = np.sign(hi) * np.ldexp(2.0**24 - 1, exponent(hi) - 23)
    hi = f32(np.where(extreme, np.where(rng.random(n) < 0.5, power, all_ones), hi))
    return normalise(hi, random_lo(rng, hi))


def gap_sweep_pairs(rng, n):
    """a, b whose exponents differ by every amount from -60 to 60."""
    a = random_floats(rng, n, -90, 90)
    b = random_floats(rng, n, 0, 0)
    b = f32(np.ldexp(b.astype(np.float64), exponent(a) + rng.integers(-60, 61, n)))
    return a, b


def cancellation_pairs(rng, n):
    """b = -a + k ulp(a), |k| <= 8, and b = -a with its low significand bits changed."""
    a = random_floats(rng, n, -120, 120)
    k = rng.integers(-8, 9, n)
    b1 = f32(-(a.astype(np.float64) + k * ulp(a).astype(np.float64)))
    bits = rng.integers(-(2**12), 2**12, n)
    b2 = f32(-(a.astype(np.float64) + bits * ulp(a).astype(np.float64)))
    return np.concatenate([a, a]), np.concatenate([b1, b2])


def near_overflow_pairs(rng, n):
    """Operands of magnitude 2^125 .. F32_MAX (sums that overflow are filtered
    out by the callers), and F32_MAX plus or minus anything."""
    a = random_floats(rng, n, 125, 127)
    b = random_floats(rng, n, 120, 127)
    c = f32(np.full(n, F32_MAX) * rng.choice([-1.0, 1.0], n))
    d = random_floats(rng, n, -126, 127)
    return np.concatenate([a, c]), np.concatenate([b, d])


def subnormal_pairs(rng, n):
    """Subnormals with subnormals, with the smallest normals, and with zero."""
    a = random_subnormals(rng, n)
    b = np.concatenate([random_subnormals(rng, n // 2), random_floats(rng, n - n // 2, -126, -120)])
    return a, b


def tie_pairs(rng, n):
    """b = +-ulp(a)/2 (exact ties, odd and even a), just off the tie, and
    -ulp(a)/4 on a power of two (the tie just below it)."""
    a = random_floats(rng, n, -100, 100)
    half = ulp(a).astype(np.float64) / 2 * rng.choice([-1.0, 1.0], n)
    off = rng.choice([1.0, 1.0, 1.0 - 2.0**-24, 1.0 + 2.0**-23], n)
    power = f32(np.ldexp(np.sign(a), exponent(a)))
    quarter = -ulp(power).astype(np.float64) / 4 * np.sign(power)
    return np.concatenate([a, power]), np.concatenate([f32(half * off), f32(quarter)])


def sum_cases(rng, n):
    """Random pairs over the whole float32 range and every adversarial family."""
    families = [
        (random_floats(rng, n, -126, 127), random_floats(rng, n, -126, 127)),
        gap_sweep_pairs(rng, n),
        cancellation_pairs(rng, n // 2),
        near_overflow_pairs(rng, n // 4),
        subnormal_pairs(rng, n // 4),
        tie_pairs(rng, n // 4),
    ]
    a = np.concatenate([f[0] for f in families])
    b = np.concatenate([f[1] for f in families])
    with np.errstate(over="ignore"):
        finite = np.isfinite(a + b)  # TwoSum is exact unless a + b overflows
    return a[finite], b[finite]


# -------------------------------------------------------------- references ----


def fraction(x):
    return Fraction(float(x))


def scaled_ints(x):
    """x * 2^149 as Python ints (object array): exact, since every float32 is a
    multiple of 2^-149 and x * 2^149 <= 2^277 is an exact float64 integer."""
    ints = np.empty(x.size, dtype=object)
    ints[:] = [int(v) for v in (x.astype(np.float64) * 2.0**149).tolist()]
    return ints


def assert_double_word(hi, lo):
    """hi = RN(hi + lo): |lo| <= ulp(hi)/2, and where |lo| >= ulp(hi)/4 (the only
    place a tie or a power of two can matter) the exact float64 sum rounds to hi."""
    assert np.all(np.abs(lo) <= ulp(hi) / 2), "|lo| > ulp(hi)/2"
    check = np.abs(lo) >= ulp(hi) / 4
    total = hi[check].astype(np.float64) + lo[check].astype(np.float64)
    np.testing.assert_array_equal(f32(total), hi[check], err_msg="hi != RN(hi + lo)")


def assert_exact_sum(a, b, hi, lo):
    """hi == fl(a + b) and hi + lo == a + b exactly.

    With |big| >= |small|: when their exponents differ by at most 28, a + b spans
    at most 28 + 25 bits, so it is exact in float64 (subnormals included: all are
    multiples of 2^-149, far above float64's range limits); the float64 tail
    (a + b) - hi is then exact too. When they differ by 29 or more, |small| <
    ulp(big)/16, so fl(a + b) == big and the exact error is small itself."""
    swap = np.abs(a) < np.abs(b)
    big, small = np.where(swap, b, a), np.where(swap, a, b)
    np.testing.assert_array_equal(hi, a + b, err_msg="hi != fl(a + b)")
    far = (small != 0) & (exponent(big) - exponent(small) >= 29)
    near = ~far
    exact = a[near].astype(np.float64) + b[near].astype(np.float64)
    np.testing.assert_array_equal(lo[near].astype(np.float64), exact - hi[near].astype(np.float64))
    np.testing.assert_array_equal(hi[far], big[far])
    np.testing.assert_array_equal(lo[far], small[far])
    return int(near.sum()), int(far.sum())


def assert_exact_on_fractions(rng, a, b, hi, lo, combine, count=3000):
    """The same identity with Fractions on a random subsample, a check of the
    float64 reasoning above that relies on nothing but Python's exact rationals."""
    for i in rng.choice(len(a), min(count, len(a)), replace=False):
        assert fraction(hi[i]) + fraction(lo[i]) == combine(fraction(a[i]), fraction(b[i])), (
            a[i], b[i], hi[i], lo[i])


def relative_errors_in_u2(computed_hi, computed_lo, exact, exact_scale, bound_u2, bound_u3=0):
    """Asserts |computed - exact| <= (bound_u2 u^2 + bound_u3 u^3) |exact| in exact
    integer arithmetic (exact = reference * 2^exact_scale, an object array of ints)
    and returns the observed errors in units of u^2 (zero exact results excluded;
    for them the assertion demands an exact zero)."""
    z = (scaled_ints(computed_hi) + scaled_ints(computed_lo)) * 2 ** (exact_scale - 149)
    err = np.abs(z - exact)
    allowed = np.abs(exact) * (bound_u2 * 2**24 + bound_u3)  # * 2^-72
    bad = np.flatnonzero(err * 2**72 > allowed)
    assert bad.size == 0, f"{bad.size} results outside the bound, first at index {bad[0]}"
    nonzero = exact != 0
    return (err[nonzero] * 2**48) / np.abs(exact[nonzero])


# ------------------------------------------------- error-free transforms ----


def test_two_sum_is_exact(rng):
    a, b = sum_cases(rng, 1_000_000)
    # Both argument orders: TwoSum needs no ordering. Its one exception (see
    # dd.h and the next test), a second operand of +-FLT_MAX, is left out here.
    for first, second in [(a, b), (b, a)]:
        keep = np.abs(second) != F32_MAX
        first, second = first[keep], second[keep]
        hi, lo = dd.two_sum(first, second)
        near, far = assert_exact_sum(first, second, hi, lo)
        assert near > 1_000_000 and far > 500_000  # both references were exercised
        assert_double_word(hi, lo)
        assert_exact_on_fractions(rng, first, second, hi, lo, lambda x, y: x + y)


def test_two_sum_near_overflow_is_exact_or_nan(rng):
    """With b = +-FLT_MAX and a of the other sign, s - a can round to inf: lo is
    then NaN (Boldo, Graillat, Muller 2017). Never a wrong finite result."""
    a = random_floats(rng, 100_000, 100, 127)
    b = f32(-np.sign(a) * F32_MAX)
    hi, lo = dd.two_sum(a, b)
    failed = np.isnan(lo)
    assert failed.any()  # the exception is real, hence documented
    np.testing.assert_array_equal(hi, a + b)
    assert_exact_sum(a[~failed], b[~failed], hi[~failed], lo[~failed])


def test_fast_two_sum_is_exact_when_ordered(rng):
    a, b = sum_cases(rng, 1_000_000)
    swap = np.abs(a) < np.abs(b)
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    hi, lo = dd.fast_two_sum(a, b)
    assert_exact_sum(a, b, hi, lo)
    assert_double_word(hi, lo)
    assert_exact_on_fractions(rng, a, b, hi, lo, lambda x, y: x + y)


def quantum_exponent(x):
    """q with x = M 2^q, M an integer of at most 24 bits (q = -149 for subnormals)."""
    return np.maximum(exponent(x) - 23, -149)


def product_cases(rng, n):
    """Pairs inside TwoProd's validity range: qa + qb >= -149 (the error term is a
    multiple of 2^(qa+qb), hence representable) and fl(a b) finite. Random
    exponent pairs over the whole range, the boundary qa + qb == -149 itself,
    subnormal a times large b, products near overflow, and exact ties
    (2^m + 1)(2^(24-m) + 1) = 2^24 + 2^m + 2^(24-m) + 1, a 25-bit odd number."""
    ea = rng.integers(-126, 128, n)
    eb = rng.integers(np.maximum(-103 - ea, -126), np.minimum(127 - ea, 127) + 1)
    a1 = random_floats(rng, n, 0, 0) * f32(np.ldexp(1.0, ea))
    b1 = random_floats(rng, n, 0, 0) * f32(np.ldexp(1.0, eb))
    eb_edge = -103 - rng.integers(-23, 127, n // 4)
    ea_edge = -103 - eb_edge
    keep = (ea_edge >= -126) & (ea_edge <= 127) & (eb_edge >= -126) & (eb_edge <= 127)
    a2 = random_floats(rng, n // 4, 0, 0)[keep] * f32(np.ldexp(1.0, ea_edge[keep]))
    b2 = random_floats(rng, n // 4, 0, 0)[keep] * f32(np.ldexp(1.0, eb_edge[keep]))
    a3 = random_subnormals(rng, n // 4)
    b3 = random_floats(rng, n // 4, 23, 100)
    a4 = random_floats(rng, n // 4, 60, 70)
    b4 = f32(np.ldexp(random_floats(rng, n // 4, 0, 0), 127 - exponent(a4)))
    m = rng.integers(1, 24, n // 4)
    shift = rng.integers(-60, 61, n // 4)
    a5 = f32(np.ldexp(2.0**m + 1, shift - m) * rng.choice([-1.0, 1.0], n // 4))
    b5 = f32(np.ldexp(2.0 ** (24 - m) + 1, -shift - 24 + m))
    a = np.concatenate([a1, a2, a3, a4, a5])
    b = np.concatenate([b1, b2, b3, b4, b5])
    with np.errstate(over="ignore"):
        valid = (quantum_exponent(a) + quantum_exponent(b) >= -149) & np.isfinite(a * b)
    return a[valid], b[valid]


def test_two_prod_is_exact_in_its_range(rng):
    a, b = product_cases(rng, 2_000_000)
    assert a.size > 2_000_000
    hi, lo = dd.two_prod(a, b)
    # The product of two float32 is exact in float64: 48 significant bits, and
    # exponents in [-298, 256], inside float64's normal range. Its float32
    # rounding is fl(a b), and the tail exact - hi (< 25 bits) is exact as well.
    exact = a.astype(np.float64) * b.astype(np.float64)
    np.testing.assert_array_equal(hi, f32(exact), err_msg="hi != fl(a b)")
    np.testing.assert_array_equal(lo.astype(np.float64), exact - hi.astype(np.float64))
    assert_double_word(hi, lo)
    assert_exact_on_fractions(rng, a, b, hi, lo, lambda x, y: x * y)


def test_two_prod_validity_boundary():
    """At qa + qb == -149 the error term is still exact; one step lower it is not
    representable (TwoProd's documented range is tight)."""
    a = f32([np.ldexp(2.0**23 + 1, -75 - 0), np.ldexp(2.0**23 + 1, -75 - 1)])
    b = f32([np.ldexp(2.0**23 + 1, -74), np.ldexp(2.0**23 + 1, -74)])
    assert list(quantum_exponent(a) + quantum_exponent(b)) == [-149, -150]
    hi, lo = dd.two_prod(a, b)
    exact = [fraction(x) * fraction(y) for x, y in zip(a, b)]
    assert fraction(hi[0]) + fraction(lo[0]) == exact[0]
    assert fraction(hi[1]) + fraction(lo[1]) != exact[1]


# ------------------------------------------------------ double-word ops ----


def assert_within_bound(name, hi, lo, exact, exact_scale, bound_u2, bound_u3=0):
    assert_double_word(hi, lo)
    errors = relative_errors_in_u2(hi, lo, exact, exact_scale, bound_u2, bound_u3)
    print(f"{name}: {exact.size} cases, max relative error {max(errors):.3f} u^2")
    return errors


def scale_pair(hi, lo, power):
    """(hi, lo) * 2^power, exact and still normalised (no under/overflow here)."""
    return f32(np.ldexp(hi, power)), f32(np.ldexp(lo, power))


def add_cases(rng, n):
    """x, y normalised, hi parts in [2^-70, 2^70]: independent exponents, exponents
    within 30 of each other, and heavy cancellation: yh = -(xh + k ulp(xh)) with
    |k| <= 3 and yl random, yl = -xl (an exact result), or yl = -xl off by a little."""
    xh, xl = random_double_words(rng, n, -40, 40)
    yh, yl = random_double_words(rng, n, -40, 40)
    close = rng.random(n) < 0.5
    yh, yl = scale_pair(yh, yl, np.where(close, exponent(xh) - exponent(yh) + rng.integers(-30, 31, n), 0))
    ch, cl = random_double_words(rng, n, -40, 40)
    k = rng.integers(-3, 4, n)
    zh = f32(-(ch.astype(np.float64) + k * ulp(ch).astype(np.float64)))
    variant = rng.random(n)
    zl = random_lo(rng, zh)
    zl = np.where(variant < 0.3, -cl, zl)
    nudged = f32(-cl.astype(np.float64) * (1 + rng.integers(-4, 5, n) * 2.0**-20))
    zl = np.where((variant >= 0.3) & (variant < 0.6), nudged, zl)
    # -cl may exceed ulp(zh)/2 when zh dropped a binade below ch: clip, renormalise.
    zh, zl = normalise(zh, f32(np.clip(zl, -ulp(zh) / 2, ulp(zh) / 2)))
    return (np.concatenate([xh, ch]), np.concatenate([xl, cl]),
            np.concatenate([yh, zh]), np.concatenate([yl, zl]))


N_DD = 500_000


@pytest.mark.parametrize("op", ["dd_add", "dd_sub"])
def test_dd_add_sub_within_3u2(rng, op):
    xh, xl, yh, yl = add_cases(rng, N_DD)
    if op == "dd_add":
        hi, lo = dd.dd_add(xh, xl, yh, yl)
    else:  # x - (-y): the same cases, cancellation included
        hi, lo = dd.dd_sub(xh, xl, -yh, -yl)
    exact = scaled_ints(xh) + scaled_ints(xl) + scaled_ints(yh) + scaled_ints(yl)
    # AccurateDWPlusDW: 3u^2 / (1 - 4u) <= 3u^2 + 13u^3.
    errors = assert_within_bound(op, hi, lo, exact, 149, 3, 13)
    assert np.count_nonzero(exact == 0) > N_DD // 100  # exact cancellations were exercised
    assert max(errors) > 0.5  # the inputs reach into the bound's range


def mul_cases(rng, n):
    xh, xl = random_double_words(rng, n, -30, 30)
    yh, yl = random_double_words(rng, n, -30, 30)
    return xh, xl, yh, yl


def test_dd_mul_within_4u2(rng):
    xh, xl, yh, yl = mul_cases(rng, N_DD)
    hi, lo = dd.dd_mul(xh, xl, yh, yl)
    exact = (scaled_ints(xh) + scaled_ints(xl)) * (scaled_ints(yh) + scaled_ints(yl))
    errors = assert_within_bound("dd_mul", hi, lo, exact, 298, 4)
    assert max(errors) > 1.0


def test_dd_mul_f_within_2u2(rng):
    xh, xl, y, _ = mul_cases(rng, N_DD)
    hi, lo = dd.dd_mul_f(xh, xl, y)
    exact = (scaled_ints(xh) + scaled_ints(xl)) * scaled_ints(y)
    errors = assert_within_bound("dd_mul_f", hi, lo, exact, 298, 2)
    assert max(errors) > 0.5


def test_cdd_mul_within_componentwise_bound(rng):
    """Each part of cdd_mul is dd_sub / dd_add of two dd_mul results p1, p2
    (exact products P1, P2): |p_i - P_i| <= 4u^2 |P_i| and the add/sub adds at most
    (3u^2 + 13u^3)|p1 +- p2| <= (3u^2 + 13u^3)(1 + 4u^2)(|P1| + |P2|), so
        |part - exact part| <= (7u^2 + 14u^3) (|P1| + |P2|).
    Cases: random, and b = (a.im, a.re) nudged, where the real part cancels."""
    n = N_DD // 2
    a = [*random_double_words(rng, n, -30, 30), *random_double_words(rng, n, -30, 30)]
    b = [*random_double_words(rng, n, -30, 30), *random_double_words(rng, n, -30, 30)]
    half_ulp = ulp(a[2]).astype(np.float64) / 2
    nudge = rng.integers(-4, 5, n) * half_ulp * 2.0**-20
    b_re = normalise(a[2], f32(np.clip(a[3] + nudge, -half_ulp, half_ulp)))
    cancel = rng.random(n) < 0.5
    b = [np.where(cancel, s, t) for s, t in zip([*b_re, a[0], a[1]], b)]
    re_h, re_l, im_h, im_l = dd.cdd_mul(*a, *b)
    ar, ai = scaled_ints(a[0]) + scaled_ints(a[1]), scaled_ints(a[2]) + scaled_ints(a[3])
    br, bi = scaled_ints(b[0]) + scaled_ints(b[1]), scaled_ints(b[2]) + scaled_ints(b[3])
    for name, (hi, lo), p1, p2, exact in [
        ("real", (re_h, re_l), ar * br, ai * bi, ar * br - ai * bi),
        ("imag", (im_h, im_l), ar * bi, ai * br, ar * bi + ai * br),
    ]:
        assert_double_word(hi, lo)
        z = (scaled_ints(hi) + scaled_ints(lo)) * 2**149
        err = np.abs(z - exact)
        magnitude = np.abs(p1) + np.abs(p2)
        assert np.all(err * 2**72 <= magnitude * (7 * 2**24 + 14)), name
        print(f"cdd_mul {name}: {n} cases, max error {max((err * 2**48) / magnitude):.3f} u^2 (|P1|+|P2|)")


# ------------------------------------------------------------- rounding ----


def assert_nearest_even(rounded, a, b):
    """rounded is the float32 nearest to a + b (exact Fractions), ties to even."""
    for r, x, y in zip(rounded, a, b):
        exact = fraction(x) + fraction(y)
        distance = abs(fraction(r) - exact)
        for neighbour in (np.nextafter(r, f32(np.inf)), np.nextafter(r, f32(-np.inf))):
            if np.isfinite(neighbour):
                other = abs(fraction(neighbour) - exact)
                assert distance < other or (distance == other and int(r.view(np.uint32)) % 2 == 0), (
                    x, y, r)


def test_dd_round_is_correctly_rounded(rng):
    """Any pairs, normalised or not (the adversarial sum families: exact ties
    hi + ulp(hi)/2, near ties, huge gaps, subnormals, near overflow). Reference:
    the float64 sum rounded to float32. That double rounding is innocuous for
    the sum of two float32 (Figueroa 1995: 53 >= 2 * 24 + 1), so it is the
    correctly rounded float32; the tie family is also checked with Fractions."""
    a, b = sum_cases(rng, 500_000)
    rounded = dd.dd_round(a, b)
    np.testing.assert_array_equal(rounded, f32(a.astype(np.float64) + b.astype(np.float64)))
    ties_a, ties_b = tie_pairs(rng, 2000)
    assert_nearest_even(dd.dd_round(ties_a, ties_b), ties_a, ties_b)


def test_dd_from_double_is_normalised_and_accurate(rng):
    """hi = RN(hi + lo) always, including doubles d = hi + (ulp(hi)/2)(1 - 2^-k),
    hi odd, whose tail d - hi rounds to exactly ulp(hi)/2 in float32, and
    |d - (hi + lo)| <= u |d - fl(d)| <= u^2 (1 + u) |d|. The error is computed
    exactly in float64: d - hi and then - lo subtract numbers within a factor
    of two of each other (Sterbenz), or zero."""
    n = 500_000
    d = np.ldexp(rng.random(n) + 1.0, rng.integers(-60, 61, n)) * rng.choice([-1.0, 1.0], n)
    odd = random_floats(rng, n, -60, 60)
    odd = f32(np.where(odd.view(np.uint32) % 2 == 1, odd, np.nextafter(odd, f32(0))))
    half_ulp = ulp(odd).astype(np.float64) / 2 * np.sign(odd)
    ties = odd.astype(np.float64) + half_ulp * (1 - 2.0 ** -rng.integers(25, 29, n))
    d = np.concatenate([d, ties])
    hi, lo = dd.dd_from_double(d)
    assert_double_word(hi, lo)
    err = np.abs((d - hi.astype(np.float64)) - lo.astype(np.float64))
    assert np.all(err <= U**2 * (1 + U) * np.abs(d))


# ------------------------------------------------------ NaN and overflow ----

ARITY = {"two_sum": 2, "fast_two_sum": 2, "two_prod": 2, "dd_add": 4, "dd_sub": 4,
         "dd_mul": 4, "dd_mul_f": 3, "dd_round": 2, "cdd_mul": 8}


def rounded_outputs(result):
    """Each output value as the float the pipeline would finally produce."""
    if isinstance(result, np.ndarray):
        return [result]
    return [dd.dd_round(result[i], result[i + 1]) for i in range(0, len(result), 2)]


@pytest.mark.parametrize("name", ARITY)
def test_nan_input_gives_nan_output(rng, name):
    """A NaN in any input position, with ordinary values elsewhere, gives NaN in
    every output that depends on it (all of them, for these operations)."""
    for position in range(ARITY[name]):
        args = [random_floats(rng, 1000, -10, 10) for _ in range(ARITY[name])]
        args[position] = f32(np.full(1000, np.nan))
        for out in rounded_outputs(getattr(dd, name)(*args)):
            assert np.all(np.isnan(out)), (name, position)


@pytest.mark.parametrize("name,args", [
    ("dd_add", (F32_MAX, 0, F32_MAX, 0)),
    ("dd_sub", (-F32_MAX, 0, F32_MAX, 0)),
    ("dd_mul", (2.0**100, 0, 2.0**100, 0)),
    ("dd_mul_f", (2.0**100, 0, 2.0**100)),
    ("dd_add", (np.inf, 0, 1, 0)),
    ("dd_mul", (np.inf, 0, 1, 0)),
])
def test_overflow_and_inf_never_give_a_finite_number(name, args):
    result = getattr(dd, name)(*[f32([x]) for x in args])
    assert not np.isfinite(rounded_outputs(result)[0][0])
