"""The GPU's split rows, run on the CPU: rfft_conv rows too long for shared memory as a
cyclic and a negacyclic half (kernels/rfft_conv_rows.h, "split rows"; CUDA's
split_kernel_spectra / split_conv_rows), certified with their own bound (certify.h,
split_entry_error; docs/certification.md, "Split rows"); and the deep split rows (deep=True:
four pieces of N/8 complex values, "deep split rows"; CUDA's deep_split_kernel_spectra /
deep_split_conv_rows, the form of n = 65536), with theirs (deep_row_certificate;
docs/certification.md, "Deep split rows").

mlx_precise._ext.testing.gpu_split_conv runs the kernels' row code for one row with one CPU
thread, certifies each output against the split bound (times bound_scale) and recomputes the
open ones as recompute_open does. Its outputs must be the CPU's correctly rounded bits; the
values it certified must lie within their bounds of the exact convolution (integer data,
exact in int64); and a bound shrunk below the true error must give wrong bits.
"""

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from mlx_precise import _ext

split_conv = _ext.testing.gpu_split_conv


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    return np.random.default_rng(seed)


def cpu_reference(variant, a, b, bias, period):
    """The CPU's correctly rounded (extended) output: rfft_conv, or grad u by its vjp."""
    n = period or None
    kw = {"n": n, "precision": "extended", "stream": mx.cpu}
    if variant == "convolve":
        d = mx.array(bias) if bias.size else None
        return np.array(mp.rfft_conv(mx.array(a), mx.array(b), bias=d, **kw))
    # grad u of y = rfft_conv(u, k) (+ u * d) for the cotangent a
    u = mx.zeros(a.shape, dtype=mx.float32)
    d = mx.array(bias) if bias.size else None
    _, (gu,) = mx.vjp(lambda u: mp.rfft_conv(u, mx.array(b), bias=d, **kw), [u], [mx.array(a)])
    return np.array(gu)


def assert_bitwise(y, ref):
    assert np.all(np.isfinite(ref))
    np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))


# (variant, a_len, b_len, period): the causal form (n = 32768 at L = 16384; a prime
# length), a short kernel, grad u (correlate_input), a folded period, and M2-BERT's
# bidirectional form (n = 2L, kernel 2L: the kernel folded into the halves) forward and
# grad u, at the benchmark's n = 32768 too.
CASES = [
    ("convolve", 16384, 16384, 0),
    ("convolve", 4093, 4093, 0),
    ("convolve", 1000, 37, 0),
    ("correlate_input", 4096, 4096, 0),
    ("correlate_input", 2039, 500, 0),
    ("convolve", 3000, 3000, 5000),
    ("convolve", 16384, 32768, 32768),
    ("convolve", 1000, 2000, 2048),
    ("correlate_input", 4096, 8192, 8192),
]

# n = 65536, where CUDA runs the deep split rows: M2-BERT's L = 32768 (causal; and its
# bidirectional 2L kernel, forward and grad u).
CASES_65536 = [
    ("convolve", 32768, 32768, 0),
    ("convolve", 32768, 65536, 65536),
    ("correlate_input", 32768, 65536, 65536),
]
DEPTHS = [pytest.param(False, id="split"), pytest.param(True, id="deep")]


@pytest.mark.parametrize("case", CASES + CASES_65536)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("deep", DEPTHS)
def test_split_rows_equal_cpu_bitwise(rng, case, with_bias, deep):
    """The outputs (poisoned with NaN before the row code runs, as are its rows, stash and
    spectra) are the CPU's bits."""
    variant, a_len, b_len, period = case
    applies, n = _ext.testing.split_rows_apply(variant, period, a_len, b_len)
    assert applies and n >= 2 * a_len
    a = rng.standard_normal(a_len).astype(np.float32)
    b = (rng.standard_normal(b_len) / np.sqrt(b_len)).astype(np.float32)
    bias = rng.standard_normal(a_len).astype(np.float32) if with_bias else np.zeros(0, np.float32)
    y, open_, values, bounds = split_conv(a, b, bias, period, variant, deep=deep)
    print(f"{variant} n={n} deep={deep}: {int(open_.sum())} of {a_len} outputs open")
    assert np.all(np.isfinite(values)) and np.all(bounds > 0)
    assert_bitwise(y, cpu_reference(variant, a, b, bias, period))


def exact_integer_convolve(x, y):
    """The linear convolution of int64 rows: np.convolve, or for long rows (np.convolve's
    direct sum takes seconds at 32768 x 65536) the float64 FFT's, rounded to integers: at
    these magnitudes (|z| < 2^40) its error is below 2^-10, checked."""
    if len(x) * len(y) <= 2**26:
        return np.convolve(x, y)
    n = len(x) + len(y) - 1
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(x.astype(np.float64), size) * np.fft.rfft(y.astype(np.float64), size)
    z = np.fft.irfft(spectrum, size)[:n]
    rounded = np.rint(z)
    assert np.abs(z - rounded).max() < 2.0**-10 and np.abs(rounded).max() < 2.0**40
    return rounded.astype(np.int64)


def exact_convolution(variant, a_int, b_int, period, out_len):
    """The exact output of integer rows (int64: no rounding at these sizes): entries of
    the linear convolution (of a reversed, for grad u), summed modulo the period."""
    a_len = len(a_int)
    z = exact_integer_convolve(a_int[::-1] if variant == "correlate_input" else a_int, b_int)
    if period:
        folded = np.zeros(period, np.int64)
        for start in range(0, len(z), period):
            chunk = z[start : start + period]
            folded[: len(chunk)] += chunk
        z = folded
    t = np.arange(out_len)
    if variant == "correlate_input":
        return z[(a_len - 1 - t) % (period or len(z))]
    return z[t]


# The bound against exact integers: every case in both forms, and at n = 65536 (where
# CUDA takes the deep form) M2-BERT's forward in the deep form (integer rows leave about
# a fifth of their outputs on exact ties, recomputed: seconds per case at this length).
BOUND_CASES = [
    pytest.param(case, deep, id=f"{'deep' if deep else 'split'}-{'-'.join(map(str, case))}")
    for case in CASES
    for deep in (False, True)
] + [pytest.param(CASES_65536[1], True, id="deep-m2bert-65536")]


@pytest.mark.parametrize("case, deep", BOUND_CASES)
def test_split_bound_holds_against_exact(rng, case, deep):
    """Rows of integers times 2^-10 (10 significant bits): the exact convolution is an
    int64 sum, so every value the split certified can be checked against its bound."""
    variant, a_len, b_len, period = case
    scale = 2.0**-10
    a_int = rng.integers(-1024, 1025, a_len)
    b_int = rng.integers(-1024, 1025, b_len)
    a = (a_int * scale).astype(np.float32)
    b = (b_int * scale).astype(np.float32)
    y, open_, values, bounds = split_conv(
        a, b, np.zeros(0, np.float32), period, variant, deep=deep
    )
    exact = exact_convolution(variant, a_int, b_int, period, a_len)
    # error in units of 2^-20, exact in float64 (both sides far below 2^53)
    err = np.abs(values / scale**2 - exact.astype(np.float64))
    ratio = (err / (bounds / scale**2)).max()
    print(f"{variant} {a_len}x{b_len} deep={deep}: max error / bound = {ratio:.3g}")
    assert ratio <= 1.0
    # The outputs are exact integers times 2^-20, correctly rounded.
    np.testing.assert_array_equal(y, (exact.astype(np.float64) * scale**2).astype(np.float32))


@pytest.mark.parametrize("deep", DEPTHS)
@pytest.mark.parametrize("length", [16384, 32768])
def test_integer_rows_are_exact(rng, deep, length):
    """Small integers: every output is an exact integer below 2^24, as on the CPU."""
    a = rng.integers(-8, 9, length).astype(np.float32)
    b = rng.integers(-8, 9, length).astype(np.float32)
    y, open_, _, _ = split_conv(a, b, np.zeros(0, np.float32), 0, "convolve", deep=deep)
    exact = exact_integer_convolve(a.astype(np.int64), b.astype(np.int64))[:length]
    np.testing.assert_array_equal(y, exact.astype(np.float32))
    assert_bitwise(y, cpu_reference("convolve", a, b, np.zeros(0, np.float32), 0))


def tie_rows(rng, length):
    """A row of ones and a kernel 2^24 + 2^12, 2^40, -2^40, +-1, +-1, ...: from t = 2 on
    the outputs are 2^24 + 2^12 plus a walk of +-1 (the 2^40 taps cancel exactly; the walk
    never reaches -2^12 in a few thousand steps), so about half of them are odd integers in
    (2^24, 2^25), halfway between two float32 values, while the transform's errors scale
    with the 2^40 taps."""
    a = np.ones(length, np.float32)
    b = (rng.integers(0, 2, length) * 2 - 1).astype(np.float32)
    b[:3] = [2.0**24 + 2.0**12, 2.0**40, -(2.0**40)]
    return a, b


@pytest.mark.parametrize("deep", DEPTHS)
def test_shrunk_bound_is_caught(rng, deep):
    """Outputs on exact ties are decided by the exact sum; with the bound shrunk to nothing
    (certified_round's own 4u|v| margin left), or below the largest error made, they
    certify on whichever side the transform's rounding errors put them: wrong bits. With
    the true bound none is wrong."""
    a, b = tie_rows(rng, 2048)
    none = np.zeros(0, np.float32)
    ref = cpu_reference("convolve", a, b, none, 0)
    y, open_, values, bounds = split_conv(a, b, none, 0, "convolve", deep=deep)
    assert_bitwise(y, ref)
    exact = np.convolve(a.astype(np.int64), b.astype(np.int64))[:2048]
    ratio = (np.abs(values - exact) / bounds).max()
    assert 0 < ratio <= 1.0
    # Shrunk to nothing, and to a quarter of the largest error actually made.
    for scale in (0.0, ratio / 4):
        y_shrunk, _, _, _ = split_conv(
            a, b, none, 0, "convolve", bound_scale=scale, deep=deep
        )
        wrong = int((y_shrunk.view(np.uint32) != ref.view(np.uint32)).sum())
        print(f"max error / bound {ratio:.3g}; bound x {scale:.3g}: {wrong} of {ref.size} "
              f"wrong; true bound: {int(open_.sum())} open")
        assert wrong > 0


# (variant, period, a_len, b_len, kernel_len): rows that must keep the workspace path.
NOT_SPLIT = [
    ("convolve", 0, 20011, 31, 0),  # prime L past N/2 = 16384 (N = 32768)
    ("convolve", 4096, 4096, 4096, 0),  # circular, n = L: rows fill the whole transform
    ("correlate_kernel", 0, 16384, 16384, 16384),  # grad k: rows summed (reduce_rows)
]


@pytest.mark.parametrize("case", NOT_SPLIT)
@pytest.mark.parametrize("deep", DEPTHS)
def test_rows_past_half_do_not_split(case, deep):
    variant, period, a_len, b_len, kernel_len = case
    applies, _ = _ext.testing.split_rows_apply(variant, period, a_len, b_len, kernel_len)
    if variant == "correlate_kernel":
        # The geometry would allow it; the kernel gradient's rows are summed spectrally
        # over the broadcast rows (reduce_rows), which the split rows do not serve.
        with pytest.raises(ValueError, match="reduce_rows"):
            split_conv(
                np.ones(a_len, np.float32), np.ones(b_len, np.float32),
                np.zeros(0, np.float32), period, variant, deep=deep,
            )
        return
    assert not applies
    with pytest.raises(ValueError, match="split rows"):
        split_conv(
            np.ones(a_len, np.float32), np.ones(b_len, np.float32),
            np.zeros(0, np.float32), period, variant, deep=deep,
        )
