"""rfft_conv forward: accuracy contract, semantics, broadcasting, bad input."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp
from reference import accuracy, assert_correctly_rounded, conv_reference

EXTENDED = ("extended", "dd")


def hyena_kernel(rng, shape, decay=None):
    """Random filter under an exponential envelope, as Hyena/M2 implicit filters."""
    L = shape[-1]
    decay = decay if decay is not None else 8.0 / L
    envelope = np.exp(-decay * np.arange(L))
    return (rng.standard_normal(shape) * envelope).astype(np.float32)


def run(u, k, **kw):
    return np.array(mp.rfft_conv(mx.array(u), mx.array(k), **kw))


@pytest.mark.parametrize("precision", EXTENDED)
@pytest.mark.parametrize("kernel", ["random", "hyena"])
@pytest.mark.parametrize("L", [1, 2, 3, 7, 64, 100, 257, 1000, 4096, 65536])
def test_extended_modes_are_correctly_rounded(rng, precision, kernel, L):
    rows = 1 if L > 4096 else 3
    u = rng.standard_normal((rows, L)).astype(np.float32)
    k = rng.standard_normal((rows, L)).astype(np.float32) if kernel == "random" else hyena_kernel(
        rng, (rows, L)
    )
    y = run(u, k, precision=precision)
    assert y.shape == u.shape and y.dtype == np.float32
    assert_correctly_rounded(y, conv_reference(u, k))


@pytest.mark.parametrize("precision", EXTENDED)
def test_small_integer_inputs_give_exact_results(rng, precision):
    # |y| <= 8 * 8 * 3000 < 2^24: the exact convolution is a float32 integer, and
    # sparse inputs make many outputs exactly zero (+0, as an exact sum gives).
    for L in (5, 300, 3000):
        for density in (1.0, 0.05):
            u = (rng.integers(-8, 9, size=(2, L)) * (rng.random((2, L)) < density)).astype(np.float32)
            k = rng.integers(-8, 9, size=(2, L)).astype(np.float32)
            exact = np.stack([np.convolve(u[i].astype(np.int64), k[i].astype(np.int64))[:L] for i in range(2)])
            y = run(u, k, precision=precision)
            np.testing.assert_array_equal(y.view(np.uint32), exact.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("precision", EXTENDED)
def test_dyadic_grid_inputs_give_exact_results(rng, precision):
    # Multiples of 2^-10 times multiples of 2^-6: the convolution lies on the 2^-16 grid.
    L = 500
    u = (rng.integers(-1000, 1000, size=(3, L)) * 2.0**-10).astype(np.float32)
    k = (rng.integers(-50, 50, size=(3, L)) * 2.0**-6).astype(np.float32)
    exact = np.stack([np.convolve(u[i].astype(np.float64), k[i].astype(np.float64))[:L] for i in range(3)])
    y = run(u, k, precision=precision)
    np.testing.assert_array_equal(y, exact.astype(np.float32))


@pytest.mark.parametrize("L", [64, 1000, 4096])
def test_float32_mode_is_as_accurate_as_mlx_composed(rng, L):
    u = rng.standard_normal((4, 8, L)).astype(np.float32)
    k = hyena_kernel(rng, (8, L))
    ref = conv_reference(u, k)
    n = 2 * L
    composed = mx.fft.irfft(mx.fft.rfft(mx.array(u), n) * mx.fft.rfft(mx.array(k), n), n)[..., :L]
    _, mlx_err, _ = accuracy(np.array(composed), ref)
    y = run(u, k, precision="float32")
    assert np.all(np.isfinite(y))
    _, ours, _ = accuracy(y, ref)
    assert ours <= 1.5 * mlx_err, f"float32 rel L2 {ours:.3e} vs MLX composed {mlx_err:.3e}"


@pytest.mark.parametrize("precision", ("float32",) + EXTENDED)
@pytest.mark.parametrize(
    "L,Lk,n",
    [(16, 32, 32), (100, 200, 200), (1000, 2000, 2000), (10, 10, 13), (100, 37, 257), (64, 64, 64),
     (50, 20, 60), (7, 7, 7)],
)
def test_given_n_is_numpys_circular_form(rng, precision, L, Lk, n):
    u = rng.standard_normal((2, 3, L)).astype(np.float32)
    k = rng.standard_normal((3, Lk)).astype(np.float32)
    y = run(u, k, n=n, precision=precision)
    ref = conv_reference(u, k, n=n)
    numpy64 = np.fft.irfft(np.fft.rfft(u.astype(np.float64), n) * np.fft.rfft(k.astype(np.float64), n), n)[..., :L]
    if precision == "float32":
        _, err, _ = accuracy(y, ref)
        assert err < 1e-6
    else:
        assert_correctly_rounded(y, ref)
        # numpy float64 agrees with the exact value far below float32 rounding.
        np.testing.assert_allclose(y, numpy64, rtol=0, atol=4 * float(np.max(np.abs(numpy64))) * 2**-24)


@pytest.mark.parametrize("precision", ("float32",) + EXTENDED)
def test_m2_bidirectional_form(rng, precision):
    # M2-BERT: kernel of length 2L (forward filter, then the reversed reverse filter), n = 2L.
    B, H, L = 2, 4, 256
    u = rng.standard_normal((B, H, L)).astype(np.float32)
    k = hyena_kernel(rng, (H, 2 * L))
    D = rng.standard_normal((H, 1)).astype(np.float32)
    y = np.array(mp.rfft_conv(mx.array(u), mx.array(k), n=2 * L, bias=mx.array(D), precision=precision))
    ref = conv_reference(u, k, n=2 * L, bias=D)
    if precision == "float32":
        assert accuracy(y, ref)[1] < 1e-6
    else:
        assert_correctly_rounded(y, ref)


@pytest.mark.parametrize("precision", ("float32",) + EXTENDED)
@pytest.mark.parametrize(
    "u_shape,k_shape",
    [((3, 4, 50), (4, 50)), ((4, 50), (3, 4, 30)), ((2, 1, 50), (1, 3, 20)), ((50,), (5, 7)), ((6, 50), (1, 50))],
)
def test_broadcast_rows_match_rows_computed_alone(rng, precision, u_shape, k_shape):
    u = rng.standard_normal(u_shape).astype(np.float32)
    k = rng.standard_normal(k_shape).astype(np.float32)
    y = run(u, k, precision=precision)
    out_shape = np.broadcast_shapes(u_shape[:-1], k_shape[:-1]) + (u_shape[-1],)
    assert y.shape == out_shape
    ub = np.broadcast_to(u, out_shape)
    kb = np.broadcast_to(k, out_shape[:-1] + (k_shape[-1],))
    for idx in np.ndindex(out_shape[:-1]):
        alone = run(ub[idx][None], kb[idx][None], precision=precision)[0]
        # Every row is transformed on its own: bits do not depend on the batch.
        np.testing.assert_array_equal(y[idx], alone)
    if precision != "float32":
        assert_correctly_rounded(y, conv_reference(u, k))


@pytest.mark.parametrize("precision", ("float32",) + EXTENDED)
@pytest.mark.parametrize("bias_shape", [(), (1,), (4, 1), (60,), (4, 60), (3, 4, 60), (3, 1, 1)])
def test_bias_adds_u_times_d_before_rounding(rng, precision, bias_shape):
    u = rng.standard_normal((3, 4, 60)).astype(np.float32)
    k = rng.standard_normal((4, 60)).astype(np.float32)
    D = rng.standard_normal(bias_shape).astype(np.float32)
    y = np.array(mp.rfft_conv(mx.array(u), mx.array(k), bias=mx.array(D), precision=precision))
    ref = conv_reference(u, k, bias=D)
    if precision == "float32":
        assert accuracy(y, ref)[1] < 1e-6
    else:
        assert_correctly_rounded(y, ref)


@pytest.mark.parametrize("precision", ("float32",) + EXTENDED)
def test_strided_and_broadcast_views(rng, precision):
    base_u = rng.standard_normal((8, 6, 130)).astype(np.float32)
    base_k = rng.standard_normal((130, 6)).astype(np.float32)
    u_view = mx.array(base_u)[::2, :, 1::2]  # strided in batch and time
    k_view = mx.array(base_k).T[:, ::2]  # transposed: time stride != 1
    D_view = mx.broadcast_to(mx.array(np.float32(0.5)), (4, 6, 65))
    y = np.array(mp.rfft_conv(u_view, k_view, bias=D_view, precision=precision))
    y_contig = run(np.ascontiguousarray(base_u[::2, :, 1::2]), np.ascontiguousarray(base_k.T[:, ::2]),
                   bias=mx.array(np.full((4, 6, 65), 0.5, np.float32)), precision=precision)
    np.testing.assert_array_equal(y, y_contig)


def test_installed_as_mx_fft_rfft_conv():
    assert mx.fft.rfft_conv is mp.rfft_conv


def test_lengths_up_to_2_pow_20(rng):
    L = 2**20
    u = rng.standard_normal((1, L)).astype(np.float32)
    k = hyena_kernel(rng, (1, 4096), decay=1e-3)
    y = run(u, k, precision="extended")
    assert np.all(np.isfinite(y))
    # Check a stretch directly: float64 sums of exact products.
    t = np.arange(L - 64, L)
    direct = np.array([np.dot(u[0, i - np.arange(4096)].astype(np.float64), k[0].astype(np.float64)) for i in t])
    np.testing.assert_allclose(y[0, t], direct, rtol=1e-6, atol=1e-6)


def test_nan_and_inf_stay_in_their_row(rng):
    u = rng.standard_normal((3, 40)).astype(np.float32)
    k = rng.standard_normal((3, 40)).astype(np.float32)
    clean = run(u, k, precision="dd")
    u[1, 7] = np.nan
    u[2, 3] = np.inf
    for precision in ("float32", "extended", "dd"):
        y = run(u, k, precision=precision)
        assert np.isnan(y[1]).any() and not np.isfinite(y[2]).all()
        if precision == "dd":
            np.testing.assert_array_equal(y[0], clean[0])
        assert np.all(np.isfinite(y[0]))


class TestBadInput:
    u = mx.array(np.ones((2, 8), np.float32))
    k = mx.array(np.ones((2, 8), np.float32))

    @pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16, mx.float64, mx.int32, mx.complex64])
    def test_dtypes_other_than_float32_are_refused(self, dtype):
        bad = self.u.astype(dtype)
        with pytest.raises(ValueError, match="astype"):
            mp.rfft_conv(bad, self.k)
        with pytest.raises(ValueError, match="astype"):
            mp.rfft_conv(self.u, bad)
        with pytest.raises(ValueError, match="astype"):
            mp.rfft_conv(self.u, self.k, bias=bad)

    @pytest.mark.parametrize("value", [[1.0, 2.0], np.ones(4, np.float32), 3.0, None])
    def test_non_arrays_are_refused(self, value):
        with pytest.raises(TypeError, match="mlx.core.array"):
            mp.rfft_conv(value, self.k)

    def test_shapes_that_do_not_broadcast(self):
        with pytest.raises(ValueError, match="broadcast"):
            mp.rfft_conv(mx.zeros((3, 8)), mx.zeros((2, 8)))
        with pytest.raises(ValueError, match="bias"):
            mp.rfft_conv(self.u, self.k, bias=mx.zeros((3, 8)))

    @pytest.mark.parametrize("n", [7, 4, 0, -1])
    def test_n_below_lengths(self, n):
        with pytest.raises(ValueError, match="n ="):
            mp.rfft_conv(self.u, self.k, n=n)
        with pytest.raises(ValueError, match="Lk"):
            mp.rfft_conv(mx.zeros((2, 4)), mx.zeros((2, 16)), n=8)

    def test_non_integer_n(self):
        with pytest.raises(TypeError):
            mp.rfft_conv(self.u, self.k, n=16.0)

    @pytest.mark.parametrize("shape", [(2, 0), (0, 8), (0,)])
    def test_empty_inputs(self, shape):
        with pytest.raises(ValueError, match="empty"):
            mp.rfft_conv(mx.zeros(shape), self.k)
        with pytest.raises(ValueError, match="empty"):
            mp.rfft_conv(self.u, mx.zeros(shape))

    def test_scalar_input(self):
        with pytest.raises(ValueError, match="time"):
            mp.rfft_conv(mx.array(1.0), self.k)

    @pytest.mark.parametrize("precision", ["float64", "double", "", "DD", 3])
    def test_unknown_precision(self, precision):
        with pytest.raises((ValueError, TypeError), match="precision"):
            mp.rfft_conv(self.u, self.k, precision=precision)
