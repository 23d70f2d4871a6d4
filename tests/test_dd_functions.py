"""Double-word exp, log, sin, tanh and GELU and the derivatives of sin, tanh and GELU
(kernels/pair_math.h, the pair ops' elementwise functions and vjps where there is no
double: Metal; log for the pair cross-entropy's logsumexp) against mpmath, run on the CPU through the
test hook mlx_precise._ext.testing.dd_function.

Random sweeps over each function's domain plus small magnitudes; fresh inputs every run
(the seed is printed). MLX_PRECISE_DD_FUNCTION_SAMPLES sets the sweep size (default 1500
per function; the numbers in the docs came from 10^5). The worst relative error is
printed in powers of two and must stay below 2^-44 (GELU and its derivative: divided by
1 + x^2, the condition number's growth; see pair_math.h)."""

import math
import os

import mpmath
import numpy as np
import pytest

from mlx_precise._ext import testing

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
SAMPLES = int(os.environ.get("MLX_PRECISE_DD_FUNCTION_SAMPLES", "1500"))
print(f"test_dd_functions seed: {SEED}, {SAMPLES} samples per function")

BOUND = 2.0**-44

def _gelu_derivative_terms(v):
    """The two terms of gelu'(v) = Phi(v) + v phi(v)."""
    return (mpmath.erfc(-v / mpmath.sqrt(2)) / 2,
            v * mpmath.exp(-v * v / 2) / mpmath.sqrt(2 * mpmath.pi))


FUNCTIONS = {
    "exp": (mpmath.exp, (-69.0, 88.7)),  # results >= 2^-100: lo stays normal
    "sin": (mpmath.sin, (-2.0**16, 2.0**16)),
    "tanh": (mpmath.tanh, (-25.0, 25.0)),
    "gelu": (lambda v: v / 2 * mpmath.erfc(-v / mpmath.sqrt(2)), (-12.0, 10.0)),
    # the derivatives (the pair ops' vjps, binary ops with cotangent 1 here)
    "sin_grad": (mpmath.cos, (-2.0**16, 2.0**16)),
    "tanh_grad": (lambda v: mpmath.sech(v) ** 2, (-25.0, 25.0)),
    "gelu_grad": (lambda v: sum(_gelu_derivative_terms(v)), (-12.0, 10.0)),
}


def error_scale(name, x, reference):
    """What the error is relative to: |f(x)|, times GELU's condition growth 1 + x^2; for
    gelu' the sum of its two terms' magnitudes (it changes sign near x = -0.75)."""
    if name == "gelu":
        return abs(reference) * (1 + x * x)
    if name == "gelu_grad":
        return sum(abs(term) for term in _gelu_derivative_terms(x)) * (1 + x * x)
    return abs(reference)


def as_pairs(x: np.ndarray):
    hi = x.astype(np.float32)
    lo = (x - hi.astype(np.float64)).astype(np.float32)
    return hi, lo


def inputs(rng, low, high):
    wide = rng.uniform(low, high, SAMPLES)
    small = rng.choice([-1.0, 1.0], SAMPLES // 3) * 10.0 ** rng.uniform(-10, 0.5, SAMPLES // 3)
    return as_pairs(np.concatenate([wide, small]))


def check_against_mpmath(name, function, hi, lo):
    """dd_function(name) on the pairs (hi, lo) against mpmath's function: normalised
    outputs, error <= BOUND of error_scale (an exact result where that is 0)."""
    out_hi, out_lo = testing.dd_function(name, hi, lo)
    assert np.all(np.isfinite(out_hi)) and np.all(np.isfinite(out_lo))
    # hi = float32(hi + lo): the pair is normalised.
    total = out_hi.astype(np.float64) + out_lo.astype(np.float64)
    np.testing.assert_array_equal(total.astype(np.float32), out_hi)
    worst, worst_x = 0.0, None
    with mpmath.workdps(40):
        for h, l, oh, ol in zip(hi.tolist(), lo.tolist(), out_hi.tolist(), out_lo.tolist()):
            x = mpmath.mpf(h) + mpmath.mpf(l)
            reference = function(x)
            got = mpmath.mpf(oh) + mpmath.mpf(ol)
            scale = error_scale(name, x, reference)
            if scale == 0:
                assert got == reference, f"{name}({float(x)!r}) must be exact"
                continue
            error = abs(got - reference) / scale
            if error > worst:
                worst, worst_x = float(error), float(x)
    print(f"{name}: worst relative error 2^{math.log2(worst):.2f} at x = {worst_x!r}")
    assert worst <= BOUND


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_against_mpmath(name):
    function, (low, high) = FUNCTIONS[name]
    rng = np.random.default_rng([SEED, len(name)])
    check_against_mpmath(name, function, *inputs(rng, low, high))


def test_log_against_mpmath():
    """log over the whole positive float range, subnormals included (hi = 2^-149 ...
    2^128, lo carrying the input's bits below hi's), and next to 1 (1 +- 2^-1 ...
    2^-48, where m - 1 must not cancel); log(1) = 0 exactly."""
    rng = np.random.default_rng([SEED, 3])
    count = SAMPLES
    wide = np.exp2(rng.uniform(-149.0, 128.0, count)) * rng.uniform(0.5, 1.0, count)
    near_one = 1.0 + rng.choice([-1.0, 1.0], count) * np.exp2(rng.uniform(-48.0, -1.0, count))
    tiny = np.exp2(rng.uniform(-149.0, -126.0, count // 3))  # subnormal hi parts
    x = np.concatenate([wide, near_one, tiny, [1.0, 2.0**-149, 2.0**127 * (2 - 2.0**-23)]])
    hi, lo = as_pairs(x)
    assert np.count_nonzero(hi < 2.0**-126) > count // 4 and np.count_nonzero(lo) > count
    check_against_mpmath("log", mpmath.log, hi, lo)


def test_special_values():
    def dd(name, values):
        hi = np.asarray(values, dtype=np.float32)
        return testing.dd_function(name, hi, np.zeros_like(hi))

    hi, lo = dd("exp", [0.0, 89.0, -110.0, 1.0])
    assert hi[0] == 1.0 and lo[0] == 0.0
    assert np.isposinf(hi[1]) and hi[2] == 0.0
    assert abs((float(hi[3]) + float(lo[3])) - math.e) < 1e-14
    hi, lo = dd("tanh", [0.0, 30.0, -30.0])
    assert list(hi) == [0.0, 1.0, -1.0]
    hi, lo = dd("gelu", [0.0, -20.0, 20.0])
    assert hi[0] == 0.0 and hi[1] == 0.0 and hi[2] == 20.0
    hi, lo = dd("sin", [0.0, 3.0])
    assert hi[0] == 0.0
    assert abs((float(hi[1]) + float(lo[1])) - math.sin(3.0)) < 1e-15
    hi, lo = dd("log", [0.0, -1.0, np.inf, np.nan, 1.0, -0.0])
    assert np.isneginf(hi[0]) and np.isnan(hi[1]) and np.isposinf(hi[2]) and np.isnan(hi[3])
    assert hi[4] == 0.0 and lo[4] == 0.0 and np.isneginf(hi[5])
    with pytest.raises(ValueError, match="pass"):
        dd("cos", [0.0])
