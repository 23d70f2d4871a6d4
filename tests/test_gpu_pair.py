"""Pair ops (mlx_precise.pair) on the GPU: the elementwise functions, addmm / linear,
layer_norm, rfft_conv and take_rows, which have CUDA and Metal kernels, and the gradients'
pair primitives (sum_to, the take_rows scatter-add, layer_norm's and rfft_conv's vjps,
cross_entropy), which have CUDA kernels running the CPU's double arithmetic in the CPU's
order and Metal kernels running it in float pairs.

Skipped, visibly, where MLX has no GPU (CI).
Each GPU result's carried value hi + lo must agree with the CPU's within 2^-46
relatively on CUDA (both compute in double, with different math libraries) and 2^-42 on
Metal (double-word arithmetic: its exp, sin, tanh and GELU are held to 2^-44 against
mpmath in tests/test_dd_functions.py), and every pair must be normalised. take_rows
copies pairs: the CPU's bits everywhere; CUDA's rfft_conv runs the CPU engine's double
operations in its order: the CPU's bits too. M2-BERT's precision="exact" on the GPU must
round once like torch float64 and match the CPU's exact output. On CUDA the gradients of
sum_to, take_rows, layer_norm and rfft_conv must give the CPU's bits (only correctly
rounded operations, in the same order); cross_entropy's, with CUDA's exp and log, the
CPU's within 2^-46; and M2-BERT's exact masked-LM gradients the CPU's and float32(torch
float64's). On Metal the gradients must agree with the CPU's within 2^-40 of each
row's largest magnitude (rfft_conv's: 2^-36, as its forward) and M2-BERT's exact
gradients round once like torch float64's. Fresh random inputs each run (the seed is
printed).
"""

import os

import mlx.core as mx
import numpy as np
import pytest

from mlx_precise import pair

ON_CUDA = mx.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not (ON_CUDA or mx.metal.is_available()), reason="MLX has no GPU backend here"
)
# Relative agreement of a GPU pair with the CPU's (see the module docstring).
TOLERANCE = 2.0**-46 if ON_CUDA else 2.0**-42

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_gpu_pair seed: {SEED}")


def on(device, fn, *args, **kwargs):
    with mx.stream(device):
        out = fn(*args, **kwargs)
        mx.eval(out.hi, out.lo)
    return out


def value(p):
    return np.asarray(p.hi).astype(np.longdouble) + np.asarray(p.lo).astype(np.longdouble)


def check_same(gpu, cpu, scale=None, what="", tolerance=TOLERANCE):
    hi, lo = np.asarray(gpu.hi), np.asarray(gpu.lo)
    assert np.all(np.isfinite(hi)) and np.all(np.isfinite(lo)), what
    np.testing.assert_array_equal((hi.astype(np.float64) + lo).astype(np.float32), hi)
    reference = value(cpu)
    denominator = np.maximum(np.abs(reference) if scale is None else scale, 2.0**-100)
    error = float(np.max(np.abs(value(gpu) - reference) / denominator))
    equal = np.mean(hi == np.asarray(cpu.hi))
    print(f"{what}: GPU vs CPU worst {error:.2e}, hi bitwise equal {equal:.4%}")
    assert error <= tolerance, what


def random_pair(rng, shape, scale=1.0):
    a = mx.array((scale * rng.standard_normal(shape)).astype(np.float32))
    b = mx.array(rng.uniform(0.5, 2.0, shape).astype(np.float32))
    return on(mx.cpu, pair.multiply, a, b)  # the exact product as a pair


@pytest.mark.parametrize("op", ["sin", "exp", "tanh", "gelu"])
def test_unary_matches_cpu(op):
    rng = np.random.default_rng([SEED, len(op)])
    x = random_pair(rng, (64, 300), scale=3.0)
    strided = x.transpose(1, 0)
    check_same(
        on(mx.gpu, getattr(pair, op), strided), on(mx.cpu, getattr(pair, op), strided), what=op
    )


def test_binary_broadcast_matches_cpu():
    rng = np.random.default_rng([SEED, 2])
    x = random_pair(rng, (4, 1, 96))
    y = random_pair(rng, (7, 96))
    for name in ("add", "multiply"):
        fn = getattr(pair, name)
        scale = None
        if name == "add":
            scale = np.abs(value(x)) + np.abs(value(y))
        check_same(on(mx.gpu, fn, x, y), on(mx.cpu, fn, x, y), scale, what=name)
    scalar = mx.array(np.float32(3.0))
    check_same(on(mx.gpu, pair.multiply, x, scalar), on(mx.cpu, pair.multiply, x, scalar),
               what="pair * 0-d float32")


def test_layer_norm_matches_cpu():
    rng = np.random.default_rng([SEED, 3])
    x = on(mx.cpu, pair.add, random_pair(rng, (33, 768)), mx.array(np.float32(4.0)))
    w = mx.array(rng.uniform(0.5, 1.5, 768).astype(np.float32))
    b = mx.array(rng.standard_normal(768).astype(np.float32))
    gpu = on(mx.gpu, pair.layer_norm, x, w, b, 1e-5)
    cpu = on(mx.cpu, pair.layer_norm, x, w, b, 1e-5)
    scale = np.max(np.abs(value(cpu)), axis=-1, keepdims=True)
    check_same(gpu, cpu, scale, what="layer_norm")
    strided = x.transpose(1, 0)  # 768 rows of 33, element stride 768
    cpu = on(mx.cpu, pair.layer_norm, strided, None, None, 1e-5)
    scale = np.max(np.abs(value(cpu)), axis=-1, keepdims=True)
    check_same(on(mx.gpu, pair.layer_norm, strided, None, None, 1e-5), cpu, scale,
               what="layer_norm, strided, no affine")


def test_linear_and_addmm_match_cpu():
    rng = np.random.default_rng([SEED, 4])
    x = random_pair(rng, (3, 50, 96))
    w = mx.array(rng.standard_normal((40, 96)).astype(np.float32))
    b = mx.array(rng.standard_normal(40).astype(np.float32))
    # Both sum in float64 in their own orders: within K 2^-53 of |x| |w| + |b|.
    scale = np.abs(value(x)) @ np.abs(np.asarray(w).T).astype(np.longdouble) + np.abs(np.asarray(b))
    check_same(on(mx.gpu, pair.linear, x, w, b), on(mx.cpu, pair.linear, x, w, b), scale,
               what="linear")
    # Batched with a broadcast bias row (M2's block-diagonal Monarch products), strided a.
    a = random_pair(rng, (4, 96, 24)).transpose(0, 2, 1)
    bm = mx.array(rng.standard_normal((4, 96, 16)).astype(np.float32))
    c = mx.array(rng.standard_normal((4, 1, 16)).astype(np.float32))
    scale = np.abs(value(a)) @ np.abs(np.asarray(bm)).astype(np.longdouble) + np.abs(np.asarray(c))
    check_same(on(mx.gpu, pair.addmm, c, a, bm), on(mx.cpu, pair.addmm, c, a, bm), scale,
               what="addmm")
    check_same(on(mx.gpu, pair.addmm, None, a, bm), on(mx.cpu, pair.addmm, None, a, bm),
               scale, what="addmm without c")


def bits(a):
    return np.asarray(a).view(np.uint32)


def test_take_rows_bits_equal_cpu():
    """M2-BERT's exact embeddings: rows of a pair table, NaN rows for an id out of range."""
    rng = np.random.default_rng([SEED, 7])
    table = random_pair(rng, (40, 24)).transpose(1, 0)[:, :20]  # (24, 20), strided
    ids = mx.array(rng.integers(-1, 25, (3, 17)).astype(np.int32)).transpose(1, 0)
    gpu = on(mx.gpu, pair.take_rows, table, ids)
    cpu = on(mx.cpu, pair.take_rows, table, ids)
    assert np.isnan(np.asarray(gpu.hi)).any(), "an id of -1 or 24 gives NaN rows"
    np.testing.assert_array_equal(bits(gpu.hi), bits(cpu.hi))
    np.testing.assert_array_equal(bits(gpu.lo), bits(cpu.lo))


# (batch, channels, L, kernel length, n): M2-BERT's bidirectional long convolution
# (n = 2L, kernel 2L), a non-power-of-two period, and rows too long for shared memory
# in double (the workspace kernels).
CONV_SHAPES = [(2, 3, 256, 512, 512), (2, 3, 1000, 2000, 2000), (1, 2, 16384, 32768, 32768)]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: f"L{s[2]}_n{s[4]}")
def test_rfft_conv_matches_cpu(shape):
    B, H, L, Lk, n = shape
    rng = np.random.default_rng([SEED, 5, L])
    u = random_pair(rng, (H, B, L)).transpose(1, 0, 2)  # a strided view
    # lo at other strides than hi: each part is read through its own layout.
    u = pair.Pair(u.hi, mx.contiguous(u.lo))
    k = random_pair(rng, (H, Lk), scale=1.0 / np.sqrt(Lk))
    d = mx.array(rng.standard_normal((H, 1)).astype(np.float32))
    gpu = on(mx.gpu, pair.rfft_conv, u, k, n=n, bias=d)
    cpu = on(mx.cpu, pair.rfft_conv, u, k, n=n, bias=d)
    check_conv(gpu, cpu, f"rfft_conv L={L} n={n}")


def check_conv(gpu, cpu, what):
    """CUDA: the CPU's bits. Metal (float-pair transforms): within 2^-36 of each row's
    largest output."""
    assert np.all(np.isfinite(np.asarray(gpu.hi))) and np.all(np.isfinite(np.asarray(gpu.lo)))
    if ON_CUDA:
        np.testing.assert_array_equal(bits(gpu.hi), bits(cpu.hi))
        np.testing.assert_array_equal(bits(gpu.lo), bits(cpu.lo))
    else:
        scale = np.max(np.abs(value(cpu)), axis=-1, keepdims=True)
        check_same(gpu, cpu, scale, what, tolerance=2.0**-36)


def test_rfft_conv_short_float32_kernel_matches_cpu():
    """M2's short convolution: a float32 kernel (the pair (k, 0), lo broadcast), causal."""
    rng = np.random.default_rng([SEED, 6])
    u = random_pair(rng, (2, 48, 300))
    taps = mx.array(rng.standard_normal((48, 3)).astype(np.float32))
    gpu = on(mx.gpu, pair.rfft_conv, u, taps)
    cpu = on(mx.cpu, pair.rfft_conv, u, taps)
    check_conv(gpu, cpu, "short rfft_conv")


@pytest.mark.parametrize("hidden, seq_len", [(64, 256), (768, 64)], ids=["h64-L256", "h768-L64"])
def test_m2bert_exact_on_gpu_rounds_once(hidden, seq_len):
    """precision="exact" on the GPU: float32(torch float64) for >= 99.99 % of the outputs
    (relative L2 <= 3e-8), and the CPU's exact output wherever the two math libraries'
    last bits do not move a rounding (>= 99.99 % bitwise)."""
    pytest.importorskip("torch")
    from test_m2bert import Case

    case = Case(hidden, seq_len)
    with mx.stream(mx.gpu):
        gpu = case.mlx("exact")
    with mx.stream(mx.cpu):
        cpu = case.mlx("exact")
    for name, mine, on_cpu, ref64 in zip(("hidden", "pooled"), gpu, cpu, case.torch64):
        mine, reference = np.asarray(mine), ref64.numpy()
        assert np.all(np.isfinite(mine)), name
        equal = np.mean(mine == reference.astype(np.float32))
        same_as_cpu = np.mean(bits(mine) == bits(on_cpu))
        error = float(np.linalg.norm(mine - reference) / np.linalg.norm(reference))
        print(f"{name}: GPU exact equals float32(float64 torch) for {equal:.4%}, relative "
              f"L2 {error:.2e}; bitwise equal to the CPU's exact for {same_as_cpu:.4%}")
        assert equal >= 0.9999 and error <= 3e-8, name
        assert same_as_cpu >= 0.9999, name


# --- gradients -------------------------------------------------------------------------

# The gradients of the float-pair Metal kernels against the CPU's double ones: relative to
# each row's largest magnitude (gradients cancel), 2^-40, or 2^-36 for rfft_conv's
# float-pair transforms (as check_conv).
METAL_GRADIENT_TOLERANCE = 2.0**-40


def vjp_on(device, fn, primals, cotangent):
    """The vjp of fn (pairs or float32 arrays -> a pair) with a pair cotangent, run on
    `device`: the gradient parts in input order (hi, lo per pair primal)."""
    parts, is_pair = [], []
    for p in primals:
        parts += list(p.astuple()) if isinstance(p, pair.Pair) else [p]
        is_pair.append(isinstance(p, pair.Pair))

    def flat(*arrays):
        it = iter(arrays)
        args = [pair.Pair(next(it), next(it)) if k else next(it) for k in is_pair]
        return list(fn(*args).astuple())

    with mx.stream(device):
        _, grads = mx.vjp(flat, parts, list(cotangent.astuple()))
        mx.eval(grads)
    return grads


def check_gradient_bits(fn, primals, cotangent, what, metal_tolerance=METAL_GRADIENT_TOLERANCE):
    """CUDA: the CPU's bits. Metal: each gradient (a pair primal's hi + lo, or a float32
    primal's) within metal_tolerance of the largest magnitude in its row (last axis)."""
    gpu = vjp_on(mx.gpu, fn, primals, cotangent)
    cpu = vjp_on(mx.cpu, fn, primals, cotangent)
    assert len(gpu) == len(cpu) == sum(2 if isinstance(p, pair.Pair) else 1 for p in primals)
    for i, (g, c) in enumerate(zip(gpu, cpu)):
        assert np.all(np.isfinite(np.asarray(g))), f"{what}, gradient part {i}"
        if ON_CUDA:
            np.testing.assert_array_equal(bits(g), bits(c), err_msg=f"{what}, gradient part {i}")
    if ON_CUDA:
        print(f"{what}: GPU gradient bits == CPU's ({len(gpu)} parts)")
        return
    i = 0
    for n, p in enumerate(primals):
        if isinstance(p, pair.Pair):
            got, ref = (pair.Pair(*parts[i:i + 2]) for parts in (gpu, cpu))
            i += 2
            tolerance = metal_tolerance
        else:
            # A float32 gradient is its carried value rounded once: Metal's may round the
            # other way where that value lies within metal_tolerance of a rounding boundary.
            got, ref = (pair.Pair(parts[i], mx.zeros_like(parts[i])) for parts in (gpu, cpu))
            i += 1
            tolerance = 2.0**-23
        scale = np.max(np.abs(value(ref)), axis=-1, keepdims=True) if ref.hi.ndim else None
        check_same(got, ref, scale, f"{what}, gradient of primal {n}", tolerance=tolerance)


def test_sum_to_bits_equal_cpu():
    rng = np.random.default_rng([SEED, 10])
    x = random_pair(rng, (6, 3, 70)).transpose(2, 1, 0)  # (70, 3, 6), strided
    for shape in [(3, 1), (6,), (1, 3, 6), ()]:
        gpu = on(mx.gpu, pair.sum_to, x, shape)
        cpu = on(mx.cpu, pair.sum_to, x, shape)
        if ON_CUDA:
            np.testing.assert_array_equal(bits(gpu.hi), bits(cpu.hi), err_msg=str(shape))
            np.testing.assert_array_equal(bits(gpu.lo), bits(cpu.lo), err_msg=str(shape))
        else:
            # relative to the sum of the terms' magnitudes (the sums cancel)
            scale = on(mx.cpu, pair.sum_to, pair.Pair(mx.abs(x.hi), mx.abs(x.lo)), shape)
            check_same(gpu, cpu, np.asarray(value(scale)), f"sum_to {shape}",
                       tolerance=METAL_GRADIENT_TOLERANCE)


def test_take_rows_vjp_bits_equal_cpu():
    """The scatter-add of the embeddings' gradient: repeated ids summed in position
    order, ids outside [0, V) skipped."""
    rng = np.random.default_rng([SEED, 11])
    table = random_pair(rng, (30, 16))
    ids = rng.integers(-1, 31, (5, 40)).astype(np.int32)
    ids[0, :10] = 3  # many repeats
    c = random_pair(rng, (16, 40, 5)).transpose(2, 1, 0)  # (5, 40, 16), strided
    check_gradient_bits(lambda t: pair.take_rows(t, mx.array(ids)), [table], c, "take_rows vjp")


def test_layer_norm_vjp_bits_equal_cpu():
    rng = np.random.default_rng([SEED, 12])
    x = on(mx.cpu, pair.add, random_pair(rng, (33, 768)), mx.array(np.float32(4.0)))
    w = mx.array(rng.uniform(0.5, 1.5, 768).astype(np.float32))
    b = mx.array(rng.standard_normal(768).astype(np.float32))
    c = random_pair(rng, (33, 768))
    check_gradient_bits(lambda v, ww, bb: pair.layer_norm(v, ww, bb, 1e-5), [x, w, b], c,
                        "layer_norm vjp (x, weight, bias)")
    strided = x.transpose(1, 0)  # 768 rows of 33
    c = random_pair(rng, (33, 768)).transpose(1, 0)
    check_gradient_bits(lambda v: pair.layer_norm(v, None, None, 1e-5), [strided], c,
                        "layer_norm vjp, strided, no affine")


# (batch, channels, L, kernel length, n): M2-BERT's long convolution (n = 2L), a period
# that is no power of two, and the short causal convolution (n None, 3 taps).
GRAD_CONV_SHAPES = [(2, 3, 256, 512, 512), (2, 3, 300, 600, 600), (2, 8, 100, 3, None)]


@pytest.mark.parametrize("shape", GRAD_CONV_SHAPES, ids=lambda s: f"L{s[2]}_k{s[3]}_n{s[4]}")
def test_rfft_conv_vjp_bits_equal_cpu(shape):
    """Both correlations (grad u with the bias term, grad k) and the sums over the batch."""
    B, H, L, Lk, n = shape
    rng = np.random.default_rng([SEED, 13, L])
    u = random_pair(rng, (H, B, L)).transpose(1, 0, 2)
    k = random_pair(rng, (H, Lk), scale=1.0 / np.sqrt(Lk))
    d = mx.array(rng.standard_normal((H, 1)).astype(np.float32))
    c = random_pair(rng, (B, H, L))
    check_gradient_bits(lambda a, kk, dd: pair.rfft_conv(a, kk, n=n, bias=dd), [u, k, d], c,
                        f"rfft_conv vjp {shape}", metal_tolerance=2.0**-36)


def test_cross_entropy_and_vjp_match_cpu():
    """CUDA's exp and log against the CPU's: within 2^-46, rows and their order the CPU's
    (Metal's dd_exp and dd_log: 2^-42)."""
    rng = np.random.default_rng([SEED, 14])
    for rows, classes in [(9, 11), (200, 1000)]:
        logits = random_pair(rng, (classes, rows), scale=3.0).transpose(1, 0)
        targets = mx.array(rng.integers(0, classes, rows).astype(np.int32))
        weights = (rng.random(rows) < 0.6).astype(np.float32)
        weights[0] = 1.0
        weights = mx.array(weights)
        loss = [on(d, pair.cross_entropy, logits, targets, weights) for d in (mx.gpu, mx.cpu)]
        check_same(loss[0], loss[1], what=f"cross_entropy ({rows}, {classes})")
        c = random_pair(rng, ())
        fn = lambda z: pair.cross_entropy(z, targets, weights)  # noqa: E731
        gpu, cpu = (pair.Pair(*vjp_on(d, fn, [logits], c)) for d in (mx.gpu, mx.cpu))
        scale = abs(float(value(c))) / float(np.sum(np.asarray(weights)))
        check_same(gpu, cpu, scale, what=f"cross_entropy vjp ({rows}, {classes})")


def test_m2bert_exact_gradients_on_gpu_match_cpu_and_round_once():
    """mx.grad of the masked-LM loss in precision="exact" on the GPU: every trainable
    parameter's gradient float32(torch float64's) for >= 99.99 % of the elements above
    float64's noise floor, and the CPU's exact gradients bit for bit above that floor
    wherever the two math libraries' last bits (Metal: its float pairs' last bits) do not
    move a rounding (>= 99.9 %); below it, within twice the floor of the CPU's."""
    pytest.importorskip("torch")
    import torch
    from test_m2bert_training import GradientCase, noise_floor, relative_error, rounded_once_counts

    case = GradientCase(hidden=32, length=128, intermediate=64, filter_order=16, seed=SEED)
    reference, _ = case.torch_run(torch.float64)
    with mx.stream(mx.gpu):
        gpu, _ = case.mlx_run("exact")
    with mx.stream(mx.cpu):
        cpu, _ = case.mlx_run("exact")
    names = sorted(reference)
    assert sorted(gpu) == names
    equal, total, resolved_equal, resolved_total = rounded_once_counts(gpu, reference)
    # Below the noise floor (pos_emb.z's late taps, see rounded_once_counts) both
    # backends return their own FFT's noise, so bits are compared above it only.
    same = resolved_same = 0
    for n in names:
        floor, resolved = noise_floor(reference[n])
        equal_bits = gpu[n] == cpu[n]
        same += int(np.sum(equal_bits))
        resolved_same += int(np.sum(equal_bits & resolved))
        assert np.all(np.abs(gpu[n] - cpu[n])[~resolved] <= 2 * floor), n
    difference = relative_error(gpu, cpu, names)
    print(f"GPU exact gradients == float32(torch float64): {equal / total:.4%} of {total}; "
          f"{resolved_equal / resolved_total:.4%} above the noise floor; == the CPU's for "
          f"{same / total:.4%}, {resolved_same / resolved_total:.4%} above the floor "
          f"(relative L2 {difference:.2e})")
    assert all(np.all(np.isfinite(gpu[n])) for n in names)
    assert resolved_equal >= 0.9999 * resolved_total
    assert resolved_same >= 0.999 * resolved_total
