"""rfft_conv on the GPU (MLX's CUDA or Metal backend).

Skipped, visibly, where MLX has no GPU (CI). On a GPU machine: every variant and
precision against float64 references with docs/design.md's accuracy bars, and
"extended" and "dd" outputs and gradients bitwise equal to the CPU's (certified,
correctly rounded, on CUDA and Metal alike).
"""

import math

import mlx.core as mx
import numpy as np
import pytest

import mlx_precise as mp

GPU_AVAILABLE = mx.metal.is_available() or mx.cuda.is_available()
# Precisions whose GPU bits must equal the CPU's: CUDA and Metal certify extended and
# dd rfft_conv (docs/certification.md; Metal's in float pairs, never run here).
BITWISE_PRECISIONS = ("extended", "dd")
pytestmark = pytest.mark.skipif(not GPU_AVAILABLE, reason="MLX has no GPU backend here")

torch = pytest.importorskip("torch") if GPU_AVAILABLE else None

# (batch, channels, L, kernel length, n): M2-BERT's bidirectional form (n = 2L,
# kernel 2L), a non-power-of-two period (folded), the causal form, and sizes
# whose rows exceed shared memory in double / dd (global-workspace kernels).
SHAPES = [
    (2, 3, 64, 128, 128),
    (2, 3, 1000, 2000, 2000),
    (1, 2, 300, 77, None),
    (2, 2, 4096, 8192, 8192),
    (1, 2, 16384, 32768, 32768),
]


def random_inputs(B, H, L, Lk, seed, bias=False):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((B, H, L)).astype(np.float32)
    k = (rng.standard_normal((H, Lk)) / np.sqrt(Lk)).astype(np.float32)
    d = rng.standard_normal((H, 1)).astype(np.float32) if bias else None
    return u, k, d


def torch_conv(u, k, d, n):
    """float64 reference (torch on the CPU, so it also gives gradients)."""
    L, Lk = u.shape[-1], k.shape[-1]
    size = n if n is not None else 1 << int(np.ceil(np.log2(L + Lk - 1)))
    y = torch.fft.irfft(torch.fft.rfft(u, size) * torch.fft.rfft(k, size), size)[..., :L]
    return y + u * d if d is not None else y


def reference(u, k, n, d):
    t = [torch.tensor(x, dtype=torch.float64) if x is not None else None for x in (u, k, d)]
    return torch_conv(*t, n).numpy()


def exact_gradients(u, k, d, cot, n):
    """grad u and grad k of sum(cot * rfft_conv(u, k, n, bias=d)), each entry an
    exactly rounded float64 sum (math.fsum) of exact products: for small shapes,
    where an FFT reference would blur the structural zeros."""
    B, H, L = u.shape
    Lk = k.shape[-1]
    u_pad = np.zeros((B, H, n)); u_pad[..., :L] = u
    k_pad = np.zeros((H, n)); k_pad[:, :Lk] = k
    c = cot.astype(np.float64)
    gu = np.array([[[math.fsum(list(c[b, h] * k_pad[h, (np.arange(L) - s) % n])
                               + [c[b, h, s] * float(d[h, 0])])
                     for s in range(L)] for h in range(H)] for b in range(B)])
    gk = np.array([[math.fsum((c[:, h] * u_pad[:, h, (np.arange(L) - j) % n]).ravel())
                    for j in range(Lk)] for h in range(H)])
    return gu, gk


def check_accuracy(y, ref, precision):
    y = np.asarray(y, dtype=np.float64)
    rel_l2 = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    if precision == "float32":
        assert rel_l2 < 2e-6, rel_l2
        return
    # Structural zeros (e.g. kernel taps no output reaches) are never read from
    # the transform (rfft_conv_core.h gather_index): they must be exact zeros.
    zero = ref == 0
    assert np.all(y[zero] == 0)
    y, ref = y[~zero], ref[~zero]
    rounded = ref.astype(np.float32).astype(np.float64)
    correct = np.mean(y == rounded)
    ulp = np.spacing(np.abs(rounded).astype(np.float32)).astype(np.float64)
    big = np.abs(ref) >= 1e-3 * np.abs(ref).max()
    worst_big = np.max(np.abs(y - ref)[big] / ulp[big])
    assert rel_l2 <= 4e-8, rel_l2
    assert correct >= 0.999, correct
    assert worst_big <= 1.0, worst_big


@pytest.mark.skipif(not mx.cuda.is_available(), reason="CUDA's float32 rows: the CPU's operations")
@pytest.mark.parametrize("shape", [(2, 3, 1024, 1024, None), (2, 2, 4096, 8192, 8192)])
def test_cuda_float32_bits_equal_cpu(shape):
    """CUDA's float32 conv_rows runs the row code of kernels/rfft_conv_rows.h with IEEE float
    operations (--fmad=false), which the CPU's float32 engine performs in the same order
    (tests/test_gpu_transform.py, test_cpu_float32_is_the_gpu_row_code): so the bits are equal,
    whatever addressing or layout the kernel uses (its rows' layout changed in 44715e2)."""
    B, H, L, Lk, n = shape
    u, k, _ = random_inputs(B, H, L, Lk, seed=L + 7, bias=False)
    args = [mx.array(x) for x in (u, k)]
    y_gpu, y_cpu = gpu_and_cpu(lambda dev, u, k: mp.rfft_conv(u, k, n=n, stream=dev), *args)
    assert np.array_equal(np.array(y_gpu).view(np.uint32), np.array(y_cpu).view(np.uint32))


def gpu_and_cpu(fn, *arrays):
    outs = []
    for device in (mx.gpu, mx.cpu):
        res = fn(device, *arrays)
        mx.eval(res)
        outs.append(res)
    return outs


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"_n{s[4]}")
def test_forward_accuracy_and_dd_bits(shape, precision):
    B, H, L, Lk, n = shape
    u, k, d = random_inputs(B, H, L, Lk, seed=L + Lk, bias=True)
    args = [mx.array(x) for x in (u, k, d)]

    def run(device, u, k, d):
        return mp.rfft_conv(u, k, n=n, bias=d, precision=precision, stream=device)

    y_gpu, y_cpu = gpu_and_cpu(run, *args)
    check_accuracy(y_gpu, reference(u, k, n, d), precision)
    if precision in BITWISE_PRECISIONS:
        assert np.array_equal(np.array(y_gpu).view(np.uint32), np.array(y_cpu).view(np.uint32))


@pytest.mark.parametrize(
    "L, data", [(40000, "normal"), (70000, "normal"), (70000, "zero_head"), (1 << 17, "normal")]
)
def test_long_rows_recompute_bits(rng, L, data):
    # CUDA's recompute of open outputs stages a row's a and b in shared memory when
    # they fit (~53 000 floats together on an H100/H200): L = 40000 stages only
    # prefixes of both (products beyond them are read from global memory). Longer
    # rows go to recompute_open_windows (windows of 8192 outputs, chunks of 4096
    # entries of b and the span of a they meet staged): at L = 2^17 some 360 outputs
    # of a row are open, tens per window. zero_head: u is zero but for its last 3000
    # samples, so the outputs before them are exact zeros, all open (batches of 1024
    # per window), and those after few per window (fewer than 4 read device memory).
    u, k, d = random_inputs(1, 3, L, L, seed=int(rng.integers(2**31)), bias=True)
    if data == "zero_head":
        u[..., : L - 3000] = 0.0
    args = [mx.array(x) for x in (u, k, d)]
    y_gpu, y_cpu = gpu_and_cpu(
        lambda dev, u, k, d: mp.rfft_conv(u, k, bias=d, precision="extended", stream=dev), *args
    )
    assert not np.isnan(np.array(y_gpu)).any()
    assert np.array_equal(np.array(y_gpu).view(np.uint32), np.array(y_cpu).view(np.uint32))


@pytest.mark.parametrize("precision", BITWISE_PRECISIONS)
def test_long_rows_exact_ties(precision):
    # Rows too long to stage (recompute_open_windows, then a block per undecided
    # output in recompute_undecided_long) whose last 300 outputs are exact float32
    # ties: u = 3 on them, k = (5592407, 2, 2, ...), y_t = 2^24 + 5 + 6 (t - t_0), odd
    # integers between 2^24 and 2^25, which only the exact sum decides (half to even);
    # the outputs before them are exact zeros, open under the rows' large bound.
    L, W = 70000, 300
    u = np.zeros((1, 2, L), np.float32)
    u[..., L - W :] = 3
    k = np.full((2, L), 2, np.float32)
    k[:, 0] = 5592407
    t = np.arange(L)
    exact = np.where(t >= L - W, 3 * 5592407 + 6 * (t - (L - W)), 0)
    expected = np.broadcast_to(exact.astype(np.float64).astype(np.float32), (1, 2, L))
    halves = np.abs(exact - expected[0, 0].astype(np.int64)) * 2
    assert ((halves == np.spacing(np.abs(expected[0, 0])).astype(np.int64)) & (exact != 0)).sum() == W
    args = [mx.array(x) for x in (u, k)]
    y_gpu, y_cpu = gpu_and_cpu(lambda dev, u, k: mp.rfft_conv(u, k, precision=precision, stream=dev), *args)
    np.testing.assert_array_equal(np.array(y_gpu).view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(np.array(y_cpu).view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("precision", BITWISE_PRECISIONS)
def test_long_rows_gradients_bits(rng, precision):
    # grad u's rows (the reversed cotangent against k) at L = 70000 take
    # recompute_open_windows as the forward's do; grad k sums over rows (reduce).
    L = 70000
    u, k, d = random_inputs(1, 2, L, L, seed=int(rng.integers(2**31)), bias=True)
    cot = mx.array(rng.standard_normal((1, 2, L)).astype(np.float32))

    def grads(device, u, k, d):
        def loss(u, k, d):
            y = mp.rfft_conv(u, k, bias=d, precision=precision, stream=device)
            return mx.sum(mx.multiply(y, cot, stream=device), stream=device)

        return mx.grad(loss, argnums=(0, 1, 2))(u, k, d)

    g_gpu, g_cpu = gpu_and_cpu(grads, *[mx.array(x) for x in (u, k, d)])
    for name, got, cpu in zip("ukd", g_gpu, g_cpu):
        assert not np.isnan(np.array(got)).any(), name
        assert np.array_equal(np.array(got).view(np.uint32), np.array(cpu).view(np.uint32)), name


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_exact_small_integers(precision):
    rng = np.random.default_rng(1)
    u = rng.integers(-8, 9, (4, 256)).astype(np.float32)
    k = rng.integers(-8, 9, (4, 512)).astype(np.float32)
    y = mp.rfft_conv(mx.array(u), mx.array(k), n=512, precision=precision, stream=mx.gpu)
    assert np.array_equal(np.array(y), reference(u, k, 512, None).round())


def test_broadcast_and_strided_views_dd_bits():
    rng = np.random.default_rng(2)
    u = mx.array(rng.standard_normal((3, 5, 200)).astype(np.float32)).transpose(1, 0, 2)
    k = mx.array(rng.standard_normal((200,)).astype(np.float32))
    d = mx.array(rng.standard_normal((1, 3, 1)).astype(np.float32))
    y_gpu, y_cpu = gpu_and_cpu(
        lambda dev, u, k, d: mp.rfft_conv(u, k, n=400, bias=d, precision="dd", stream=dev), u, k, d
    )
    assert np.array_equal(np.array(y_gpu).view(np.uint32), np.array(y_cpu).view(np.uint32))


# Rows at n = 32768 in the certified precisions: CUDA computes them as split rows (a
# cyclic and a negacyclic half in shared memory, split_conv_rows) where u lies in the
# first half of the transform: causal L = 16384, a prime L, a kernel broadcast over the
# batch, M2-BERT's n = 2L with a 2L kernel (the benchmark's rows: the kernel folded);
# L = 20011 with a short kernel keeps the workspace rows. At n = 65536 the halves do not
# fit either: deep split rows (four pieces of n/8 complex values, deep_split_conv_rows):
# causal L = 32768, a prime L, a short kernel, M2-BERT's L = 32768 (the 32k retrieval
# model: n = 2L, kernel 2L); L = 40009 keeps the workspace rows.
SPLIT_SHAPES = [
    (2, 3, 16384, 16384, None),
    (1, 2, 16381, 16381, None),
    (3, 1, 16384, 1000, None),
    (2, 2, 16384, 32768, 32768),
    (1, 2, 20011, 31, None),
    (2, 2, 32768, 32768, None),
    (1, 2, 32749, 32749, None),
    (2, 1, 32768, 1000, None),
    (2, 2, 32768, 65536, 65536),
    (1, 2, 40009, 31, None),
]


@pytest.mark.parametrize("precision", BITWISE_PRECISIONS)
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"_n{s[4]}")
def test_split_rows_forward_and_grad_u_bits(shape, precision):
    B, H, L, Lk, n = shape
    u, k, d = random_inputs(B, H, L, Lk, seed=L + 3 * Lk, bias=True)
    cot = mx.array(np.random.default_rng(L).standard_normal((B, H, L)).astype(np.float32))

    def run(device, u, k, d):
        def f(u):
            return mp.rfft_conv(u, k, n=n, bias=d, precision=precision, stream=device)

        y, (gu,) = mx.vjp(f, [u], [cot])
        return y[0], gu

    (y_gpu, gu_gpu), (y_cpu, gu_cpu) = gpu_and_cpu(run, *[mx.array(x) for x in (u, k, d)])
    check_accuracy(y_gpu, reference(u, k, n, d), precision)
    for got, cpu in ((y_gpu, y_cpu), (gu_gpu, gu_cpu)):
        assert np.array_equal(np.array(got).view(np.uint32), np.array(cpu).view(np.uint32))


@pytest.mark.parametrize("precision", BITWISE_PRECISIONS)
@pytest.mark.parametrize("L", [16384, 32768])
def test_split_rows_integers_exact(precision, L):
    rng = np.random.default_rng(5)
    u = rng.integers(-8, 9, (2, L)).astype(np.float32)
    k = rng.integers(-8, 9, (2, L)).astype(np.float32)
    y = mp.rfft_conv(mx.array(u), mx.array(k), precision=precision, stream=mx.gpu)
    exact = [np.convolve(u[i].astype(np.int64), k[i].astype(np.int64))[:L] for i in range(2)]
    assert np.array_equal(np.array(y), np.array(exact, dtype=np.float32))


GRAD_SHAPES = [(3, 2, 100, 200, 200), (2, 2, 8192, 16384, 16384), (2, 3, 300, 50, None)]


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@pytest.mark.parametrize(
    "shape", GRAD_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"_n{s[4]}"
)
def test_gradients(shape, precision):
    B, H, L, Lk, n = shape
    u, k, d = random_inputs(B, H, L, Lk, seed=7 * L, bias=True)
    cot = np.random.default_rng(3).standard_normal((B, H, L)).astype(np.float32)
    cot_mx = mx.array(cot)

    def grads(device, u, k, d):
        def loss(u, k, d):
            y = mp.rfft_conv(u, k, n=n, bias=d, precision=precision, stream=device)
            return mx.sum(mx.multiply(y, cot_mx, stream=device), stream=device)

        return mx.grad(loss, argnums=(0, 1, 2))(u, k, d)

    g_gpu, g_cpu = gpu_and_cpu(grads, *[mx.array(x) for x in (u, k, d)])

    t = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (u, k, d)]
    (torch_conv(*t, n) * torch.tensor(cot, dtype=torch.float64)).sum().backward()
    refs = [x.grad.numpy() for x in t]
    if n is not None and B * H * L <= 1000:
        refs[:2] = exact_gradients(u, k, d, cot, n)
    for name, got, cpu, ref in zip("ukd", g_gpu, g_cpu, refs):
        rel = np.linalg.norm(np.array(got) - ref) / np.linalg.norm(ref)
        if precision == "float32":
            # The bias gradient sums B*L products of one channel in float32,
            # rounding at every addition, with cancellation.
            assert rel < (1e-3 if name == "d" else 2e-6), (name, rel)
        elif name == "d":
            assert rel <= 4e-8, (name, rel)
        else:
            check_accuracy(got, ref, precision)
        if precision in BITWISE_PRECISIONS:
            assert np.array_equal(np.array(got).view(np.uint32), np.array(cpu).view(np.uint32)), name


def test_kernel_gradient_reduces_over_broadcast_kernel():
    # k shared by every row: its gradient sums all rows (one target row).
    rng = np.random.default_rng(4)
    u = mx.array(rng.standard_normal((4, 3, 128)).astype(np.float32))
    k = mx.array(rng.standard_normal((64,)).astype(np.float32))

    def gk(device, u, k):
        return mx.grad(lambda k: mx.sum(mp.rfft_conv(u, k, precision="dd", stream=device)))(k)

    g_gpu, g_cpu = gpu_and_cpu(gk, u, k)
    assert np.array_equal(np.array(g_gpu).view(np.uint32), np.array(g_cpu).view(np.uint32))


# grad k sums the batch rows of each kernel row; CUDA recomputes its open outputs from
# the target's row pairs staged one after another in shared memory
# (recompute_open_reduce). Normal rows (u strided) leave ~10 outputs open a target at
# L = 4096; non-negative integer rows whose sums reach 2^24..2^25 leave every odd one on
# an exact tie (~1000 a target, about a batch of the marked list), which the running
# stage must hand on to the exact one. Alone (CorrelateKernel) and with grad u
# (RFFTConvGradients).
@pytest.mark.parametrize("precision", BITWISE_PRECISIONS)
@pytest.mark.parametrize("data", ["normal", "ties"])
@pytest.mark.parametrize("argnums", [(1,), (0, 1)], ids=["grad_k", "with_grad_u"])
def test_kernel_gradient_over_many_rows_bits(rng, precision, data, argnums):
    B, H, L = 64, 2, 4096
    if data == "normal":
        u = mx.array(rng.standard_normal((H, B, L)).astype(np.float32)).transpose(1, 0, 2)
        g = mx.array(rng.standard_normal((B, H, L)).astype(np.float32))
    else:
        u = mx.array(rng.integers(0, 24, (B, H, L)).astype(np.float32))
        g = mx.array(rng.integers(0, 24, (B, H, L)).astype(np.float32))
    k = mx.array((rng.standard_normal((H, L)) / np.sqrt(L)).astype(np.float32))

    def grads(device, u, k):
        def loss(u, k):
            y = mp.rfft_conv(u, k, n=2 * L, precision=precision, stream=device)
            return mx.sum(mx.multiply(y, g, stream=device), stream=device)

        out = mx.grad(loss, argnums=argnums)(u, k)
        return out if isinstance(out, tuple) else (out,)

    g_gpu, g_cpu = gpu_and_cpu(grads, u, k)
    grad_k = np.array(g_gpu[-1])
    assert grad_k.shape == (H, L)
    assert np.all(np.isfinite(grad_k)) and np.any(grad_k != 0)
    for got, cpu in zip(g_gpu, g_cpu):
        assert np.array_equal(np.array(got).view(np.uint32), np.array(cpu).view(np.uint32))


# grad u and grad k asked together: one RFFTConvGradients node, which CUDA runs as
# gradient_rows (each cotangent row transformed once for both). Shapes: k shared by
# the batch (grad k sums it), k with a row per output row (nothing to sum), the causal
# form with a short kernel, one kernel row for every row, a strided u, and rows whose
# two buffers take too much shared memory in double (n = 8192, 16384:
# stashed_gradient_rows, one row in shared memory and U in a slot) or do not fit at
# all (n = 32768: float32 stashed, double by split gradient rows).
FUSED_GRAD_SHAPES = [
    ((4, 3, 256), (3, 512), 512, False),
    ((2, 3, 300), (2, 3, 50), None, False),
    ((5, 1000), (1000,), None, False),
    ((3, 5, 200), (200,), 400, True),
    ((2, 2, 4096), (2, 8192), 8192, False),
    ((2, 2, 8192), (2, 16384), 16384, False),
    ((2, 2, 16384), (2, 32768), 32768, False),
]


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@pytest.mark.parametrize("shapes", FUSED_GRAD_SHAPES, ids=lambda s: "u" + "x".join(map(str, s[0])) + f"_n{s[2]}")
def test_gradients_together_equal_each_alone(rng, shapes, precision):
    u_shape, k_shape, n, strided = shapes
    u = mx.array(rng.standard_normal(u_shape).astype(np.float32))
    if strided:
        u = u.transpose(1, 0, 2)
    k = mx.array((rng.standard_normal(k_shape) / np.sqrt(k_shape[-1])).astype(np.float32))
    out_shape = np.broadcast_shapes(u.shape[:-1], k_shape[:-1]) + (u.shape[-1],)
    g = mx.array(rng.standard_normal(out_shape).astype(np.float32))

    def grads(device, argnums):
        def loss(u, k):
            y = mp.rfft_conv(u, k, n=n, precision=precision, stream=device)
            return mx.sum(mx.multiply(y, g, stream=device), stream=device)

        out = mx.grad(loss, argnums=argnums)(u, k)
        mx.eval(out)
        return [np.array(x) for x in (out if isinstance(out, tuple) else (out,))]

    both = grads(mx.gpu, (0, 1))
    alone = grads(mx.gpu, 0) + grads(mx.gpu, 1)
    for name, got, want in zip("uk", both, alone):
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    if precision in BITWISE_PRECISIONS:
        for name, got, want in zip("uk", both, grads(mx.cpu, (0, 1))):
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name


# The fused jvp (ConvolveSum: one rounding of conv(du, k) + conv(u, dk) + du*bias + u*dbias):
# every combination of tangents that needs it, on shared-memory rows, a folded period,
# the causal form and rows in the global workspace (double rows of n = 16384).
JVP_SHAPES = [(2, 3, 64, 128, 128), (2, 2, 300, 77, None), (1, 2, 1000, 2000, 2000), (1, 2, 8192, 16384, 16384)]


@pytest.mark.parametrize("precision", mp.PRECISIONS)
@pytest.mark.parametrize("argnums", [(0, 1), (0, 1, 2), (0, 2)], ids=lambda a: "d" + "".join("ukb"[i] for i in a))
@pytest.mark.parametrize("shape", JVP_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"_n{s[4]}")
def test_fused_jvp_matches_cpu(rng, shape, argnums, precision):
    B, H, L, Lk, n = shape
    u, k, d = random_inputs(B, H, L, Lk, seed=int(rng.integers(1 << 31)), bias=True)
    tangents = [rng.standard_normal(x.shape).astype(np.float32) for x in (u, k, d)]
    tangents[1] /= np.float32(np.sqrt(Lk))

    def jvp(device, *arrays):
        primals, ts = list(arrays[:3]), arrays[3:]

        def f(*args):
            full = list(primals)
            for i, a in zip(argnums, args):
                full[i] = a
            return mp.rfft_conv(full[0], full[1], n=n, bias=full[2], precision=precision, stream=device)

        return mx.jvp(f, [primals[i] for i in argnums], [ts[i] for i in argnums])[1][0]

    y_gpu, y_cpu = gpu_and_cpu(jvp, *[mx.array(x) for x in (u, k, d, *tangents)])
    zero = [np.zeros_like(x) for x in (u, k, d)]
    du, dk, dd = (tangents[i] if i in argnums else zero[i] for i in range(3))
    ref = reference(du, k, n, d) + reference(u, dk, n, dd)
    check_accuracy(y_gpu, ref, precision)
    if precision in BITWISE_PRECISIONS:
        assert np.array_equal(np.array(y_gpu).view(np.uint32), np.array(y_cpu).view(np.uint32))


@pytest.mark.parametrize("precision", mp.PRECISIONS)
def test_fused_jvp_is_adjoint_to_vjp(rng, precision):
    # <jvp(t), c> = <t, vjp(c)> for t = (du, dk, dbias), all on the GPU, in float64 sums.
    u, k, d = random_inputs(2, 3, 500, 1000, seed=int(rng.integers(1 << 31)), bias=True)
    tangents = [rng.standard_normal(x.shape).astype(np.float32) for x in (u, k, d)]
    cot = rng.standard_normal(u.shape).astype(np.float32)

    def f(u, k, d):
        return mp.rfft_conv(u, k, n=1000, bias=d, precision=precision, stream=mx.gpu)

    primals = [mx.array(x) for x in (u, k, d)]
    _, (jv,) = mx.jvp(f, primals, [mx.array(t) for t in tangents])
    _, vjps = mx.vjp(f, primals, [mx.array(cot)])
    lhs = float(np.sum(np.array(jv, np.float64) * cot))
    rhs = sum(float(np.sum(t.astype(np.float64) * np.array(v, np.float64))) for t, v in zip(tangents, vjps))
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + abs(rhs)), (lhs, rhs)


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_exact_ties_round_half_to_even(rng, precision):
    # Integer rows whose outputs pass 2^24: a quarter of those in [2^25, 2^26) lie
    # exactly halfway between two floats, which no error bound can decide, so they go
    # through every stage of the recompute to the exact sum (docs/certification.md).
    u = rng.integers(-(2**11), 2**11, (3, 4, 512))
    k = rng.integers(-(2**11), 2**11, (4, 1024))
    full = np.array([[np.convolve(u[b, h], k[h]) for h in range(4)] for b in range(3)])
    # y[t] = full[t] + full[t + n] (period n = 1024): full has 1535 entries.
    exact = full[..., :512] + np.pad(full[..., 1024:], [(0, 0), (0, 0), (0, 1)])
    expected = exact.astype(np.float64).astype(np.float32)
    ties = np.abs(exact - expected.astype(np.int64)) * 2 == np.spacing(np.abs(expected)).astype(np.int64)
    assert ties.sum() > 100
    args = [mx.array(x.astype(np.float32)) for x in (u, k)]
    y_gpu, y_cpu = gpu_and_cpu(lambda dev, u, k: mp.rfft_conv(u, k, n=1024, precision=precision, stream=dev), *args)
    np.testing.assert_array_equal(np.array(y_gpu).view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(np.array(y_cpu).view(np.uint32), expected.view(np.uint32))


CACHE_CHILD = """
import sys
import mlx.core as mx
import numpy as np
import mlx_precise as mp
rng = np.random.default_rng(int(sys.argv[1]))
u = mx.array(rng.standard_normal((2, 3, 300)).astype(np.float32))
k = mx.array(rng.standard_normal((3, 77)).astype(np.float32))
c = mx.array(rng.standard_normal((5, 4)).astype(np.float32))
a = mx.array(rng.standard_normal((5, 6)).astype(np.float32))
b = mx.array(rng.standard_normal((6, 4)).astype(np.float32))
y = mp.rfft_conv(u, k, precision="extended")
z = mp.addmm(c, a, b, precision="extended")
mx.eval(y, z)
sys.stdout.write(np.array(y).tobytes().hex() + " " + np.array(z).tobytes().hex())
"""


@pytest.mark.skipif(not mx.cuda.is_available(), reason="the kernel cache is CUDA's (NVRTC)")
def test_kernel_cache_is_written_reused_and_survives_damage(tmp_path):
    """NVRTC output is cached on disk (MLX_PRECISE_KERNEL_CACHE_DIR): a second process
    loads the cubins and gives the same bits; damaged files are compiled again, not
    loaded; an empty directory setting turns the cache off."""
    import os
    import subprocess
    import sys

    seed = int(np.random.default_rng().integers(1 << 30))
    print("seed", seed)

    def child(cache):
        env = dict(os.environ, MLX_PRECISE_KERNEL_CACHE_DIR=str(cache))
        result = subprocess.run([sys.executable, "-c", CACHE_CHILD, str(seed)], env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    cache = tmp_path / "kernels"
    first = child(cache)
    files = sorted(cache.glob("*.cubin"))
    assert len(files) == 2  # the extended rfft_conv module and the strict module
    stamps = [f.stat().st_mtime_ns for f in files]
    sizes = [f.stat().st_size for f in files]
    assert child(cache) == first
    assert [f.stat().st_mtime_ns for f in files] == stamps  # loaded, not rewritten
    files[0].write_bytes(files[0].read_bytes()[:-4096])  # a truncated cubin
    files[1].write_bytes(b"not a cubin")
    assert child(cache) == first
    assert [f.stat().st_size for f in files] == sizes  # compiled and written again
    assert child("") == first
    assert not list(cache.glob("*.tmp*"))


def test_error_messages_with_shapes_and_dtypes_raise():
    """The messages write shapes and dtypes without iostreams: on the H200 host the
    extension's statically linked libstdc++ crashed at the first number written into a
    std::ostringstream, so these errors were segfaults on CUDA builds."""
    from mlx_precise import pair

    with pytest.raises(ValueError, match=r"u has dtype float16"):
        mp.rfft_conv(mx.ones((2, 3), dtype=mx.float16), mx.ones((3,)))
    with pytest.raises(ValueError, match=r"c \(3,\) does not broadcast to the output shape \(2, 2\)"):
        mp.addmm(mx.ones((3,)), mx.ones((2, 2)), mx.ones((2, 2)), precision="extended")
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(4, 5\) do not broadcast"):
        pair.add(pair.as_pair(mx.ones((2, 3))), pair.as_pair(mx.ones((4, 5))))
