"""The GPU kernels' FFT in register passes against their stage-by-stage FFT, run on the CPU.

The CUDA kernels group the radix-4/radix-2 stages into passes that keep 16, 8, 4 or 2 points
in registers (kernels/rfft_conv_rows.h, fft_pass: "wide"), or run one stage per pass
("narrow"), on a swizzled row; the forward transform's first pass reads the real row from
device memory, as a DeviceRow or (unit stride, even length, aligned) a ContiguousRow
("contiguous"), or the same on a row with each point's parts side by side ("interleaved",
conv_rows<float>'s rows on CUDA). Every
butterfly is the stage-by-stage one on the same operands, so the results must be bitwise
equal: that is what keeps the GPU's float32 results and its certified extended/dd bits
unchanged. Here one CPU thread runs both forms (mlx_precise._ext.testing.gpu_transform).
"""

import numpy as np
import pytest

from mlx_precise import _ext

# Complex lengths H = N/2 = 2^0 ... 2^14: an even and an odd number of radix-4 stages,
# with and without the radix-2 stage, up to the longest row the GPU keeps on chip.
SIZES = [2**e for e in range(1, 16)]


def random_row(fft_size):
    """re, im of fft_size / 2 float32 entries each, from a fresh printed seed."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    h = fft_size // 2
    return rng.standard_normal(h).astype(np.float32), rng.standard_normal(h).astype(np.float32)


def assert_methods_equal_stages(re, im, fft_size, precision, inverse, methods, length=-1):
    t = _ext.testing.gpu_transform
    by_stage = t(re, im, fft_size, precision, inverse, "stages", length)
    for method in methods:
        by_pass = t(re, im, fft_size, precision, inverse, method, length)
        for a, b in zip(by_stage, by_pass):
            assert np.all(np.isfinite(a))
            np.testing.assert_array_equal(a.view(np.uint64), b.view(np.uint64))


@pytest.mark.parametrize("precision", ["float32", "extended", "dd"])
@pytest.mark.parametrize("fft_size", SIZES)
def test_passes_equal_stages_bitwise(precision, fft_size):
    re, im = random_row(fft_size)
    h = fft_size // 2
    t = _ext.testing.gpu_transform
    for inverse in (False, True):
        methods = ("wide", "narrow", "contiguous", "interleaved")
        assert_methods_equal_stages(re, im, fft_size, precision, inverse, methods)
    # And the transform is one: the inverse of the forward is H times the input.
    fre, fim = t(re, im, fft_size, precision, False, "wide")
    back = t(fre.astype(np.float32), fim.astype(np.float32), fft_size, precision, True, "wide")
    z = re.astype(np.float64) + 1j * im.astype(np.float64)
    err = np.abs((back[0] + 1j * back[1]) / h - z).max()
    assert err < 1e-4 * max(1.0, np.log2(fft_size))


@pytest.mark.parametrize("precision", ["float32", "extended", "dd"])
@pytest.mark.parametrize("fft_size", [2, 8, 32, 256, 2048, 8192])
def test_first_pass_of_a_cut_row_bitwise(precision, fft_size):
    """The real row shorter than the transform (zero-padded, as the convolutions load
    their operands): the first pass reads it as a DeviceRow (any length) or a
    ContiguousRow (even length), bitwise as the stages on the padded row."""
    re, im = random_row(fft_size)
    h = fft_size // 2
    for length in sorted({1, h, h + 1, 2 * h - 1, 2 * h - 2} - {0}):
        methods = ["wide", "narrow"] + (["contiguous", "interleaved"] if length % 2 == 0 else [])
        assert_methods_equal_stages(re, im, fft_size, precision, False, methods, length)


# (a_len, b_len, out_len, period, fold, out_reversed, out_origin, outputs are entries) for
# fft_size 16: the causal form (even and odd lengths), then outputs past the support, a
# folded (periodic) form and a reversed one, which keep gather_output's general path.
OUTPUT_SHAPES = [
    (8, 8, 8, 0, False, False, 0, True),
    (7, 7, 7, 0, False, False, 0, True),
    (8, 8, 15, 0, False, False, 0, True),
    (3, 1, 5, 0, False, False, 0, False),
    (8, 8, 12, 12, True, False, 0, False),
    (8, 8, 8, 0, False, True, 7, False),
]


@pytest.mark.parametrize("shape", OUTPUT_SHAPES)
@pytest.mark.parametrize("threads", [1, 3, 4])
def test_outputs_two_per_point_equal_gather_bitwise(shape, threads):
    """for_each_output (the CUDA kernels' output step: two outputs per packed point where
    outputs are entries) writes every output once, bitwise what gather_output reads."""
    *fields, entries = shape
    re, im = random_row(16)
    by_threads, by_gather, writes, are_entries = _ext.testing.gpu_outputs(re, im, *fields, threads)
    assert are_entries == entries
    np.testing.assert_array_equal(writes, np.ones(fields[2]))
    assert np.all(np.isfinite(by_gather))
    np.testing.assert_array_equal(by_threads.view(np.uint64), by_gather.view(np.uint64))


@pytest.mark.parametrize("length", [2, 16, 64, 512, 1024, 4096])
@pytest.mark.parametrize("rows", [1, 3])
def test_interleaved_rows_equal_arrays_bitwise(length, rows):
    """conv_rows<float, true>'s rows interleaved (InterleavedRow) give the outputs of the
    (re, im) arrays bit for bit: passes, the spectral product over several rows and the
    outputs read through either layout."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(rows * length).astype(np.float32)
    b = rng.standard_normal(length).astype(np.float32)
    arrays, interleaved = _ext.testing.gpu_conv_row_layouts(a, b, rows, 2 * length)
    assert np.all(np.isfinite(arrays))
    np.testing.assert_array_equal(arrays.view(np.uint64), interleaved.view(np.uint64))
    # And it is the convolution: against float64 (float32 rounding of O(L) terms).
    a64 = a.astype(np.float64).reshape(rows, length)
    ref = np.stack([np.convolve(a64[r], b)[:length] for r in range(rows)])
    scale = np.abs(a).max() * np.abs(b).max() * length
    assert np.abs(arrays.reshape(rows, length) - ref).max() < 1e-4 * scale


def emulated_conv_rows(u, k, fft_size):
    """conv_rows<float>'s outputs for u (B, H, L), k (H, Lk) by the CPU emulation of its row
    code (testing.gpu_conv_row_layouts, interleaved rows), the layout of rfft_conv's output."""
    B, H, L = u.shape
    heads = []
    for h in range(H):
        rows = np.ascontiguousarray(u[:, h, :]).ravel()
        heads.append(_ext.testing.gpu_conv_row_layouts(rows, k[h], B, fft_size)[1].reshape(B, L))
    return np.stack(heads, 1).astype(np.float32)


# (B, H, L, Lk, n): the causal form (n = None: fft_size 2L) and M2-BERT's (kernel 2L, n = 2L).
ROW_CODE_SHAPES = [(2, 3, 64, 64, None), (2, 3, 1024, 1024, None), (2, 2, 1024, 2048, 2048), (1, 2, 4096, 8192, 8192)]


@pytest.mark.parametrize("shape", ROW_CODE_SHAPES)
def test_cpu_float32_is_the_gpu_row_code(shape):
    """The CPU's float32 rfft_conv performs the GPU row code's operations in the same order
    (kernels/rfft_conv_rows.h), so its bits are the emulated conv_rows<float>'s: the reference
    that tests/test_gpu.py holds CUDA's float32 bits to."""
    import mlx.core as mx

    import mlx_precise as mp

    B, H, L, Lk, n = shape
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((B, H, L)).astype(np.float32)
    k = rng.standard_normal((H, Lk)).astype(np.float32)
    y = np.array(mp.rfft_conv(mx.array(u), mx.array(k), n=n, stream=mx.cpu))
    np.testing.assert_array_equal(y.view(np.uint32), emulated_conv_rows(u, k, 2 * L).view(np.uint32))
