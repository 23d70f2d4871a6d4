"""Pair ops (mlx_precise.pair) on the GPU: the elementwise functions, addmm / linear and
layer_norm, which have CUDA kernels (the pair rfft_conv does not yet: it raises).

Skipped, visibly, where MLX has no CUDA GPU (CI, Metal: the Metal pair kernels are not
written). Each GPU result's carried value hi + lo must agree with the CPU's (both
compute in double, with different math libraries) within 2^-46 relatively, and every
pair must be normalised. Fresh random inputs each run (the seed is printed).
"""

import os

import mlx.core as mx
import numpy as np
import pytest

from mlx_precise import pair

pytestmark = pytest.mark.skipif(not mx.cuda.is_available(), reason="MLX has no CUDA backend here")

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_gpu_pair seed: {SEED}")


def on(device, fn, *args, **kwargs):
    with mx.stream(device):
        out = fn(*args, **kwargs)
        mx.eval(out.hi, out.lo)
    return out


def value(p):
    return np.asarray(p.hi).astype(np.longdouble) + np.asarray(p.lo).astype(np.longdouble)


def check_same(gpu, cpu, scale=None, what=""):
    hi, lo = np.asarray(gpu.hi), np.asarray(gpu.lo)
    assert np.all(np.isfinite(hi)) and np.all(np.isfinite(lo)), what
    np.testing.assert_array_equal((hi.astype(np.float64) + lo).astype(np.float32), hi)
    reference = value(cpu)
    denominator = np.maximum(np.abs(reference) if scale is None else scale, 2.0**-100)
    error = float(np.max(np.abs(value(gpu) - reference) / denominator))
    equal = np.mean(hi == np.asarray(cpu.hi))
    print(f"{what}: GPU vs CPU worst {error:.2e}, hi bitwise equal {equal:.4%}")
    assert error <= 2.0**-46, what


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


def test_rfft_conv_raises_on_cuda():
    x = pair.Pair(mx.ones((2, 4), dtype=mx.float32))
    with pytest.raises(RuntimeError, match="no CUDA kernel yet"):
        on(mx.gpu, pair.rfft_conv, x, x)
