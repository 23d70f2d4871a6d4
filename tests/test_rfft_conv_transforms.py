"""rfft_conv under MLX's transforms: grad/vjp/jvp, vmap, compile; dd reproducibility."""

import os

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_precise as mp
from reference import accuracy, assert_correctly_rounded, conv_grads_reference

PRECISIONS = ("float32", "extended", "dd")


def loss_fn(n, precision, with_bias):
    def loss(u, k, g, bias=None):
        y = mp.rfft_conv(u, k, n=n, bias=bias if with_bias else None, precision=precision)
        return mx.sum(y * g)

    return loss


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "u_shape,k_shape,n,bias_shape",
    [
        ((2, 3, 64), (3, 64), None, None),  # k shared over the batch: grad k sums over it
        ((2, 3, 100), (3, 37), None, (3, 1)),  # per-channel D
        ((2, 3, 50), (3, 100), 100, (3, 1)),  # M2's bidirectional form, n = 2L
        ((3, 40), (2, 3, 40), 70, (40,)),  # u broadcast against k: grad u sums too
        ((2, 1, 33), (1, 3, 20), 57, None),  # both broadcast, odd n (folded transform)
    ],
)
def test_gradients_match_exact_reference(rng, precision, u_shape, k_shape, n, bias_shape):
    u = rng.standard_normal(u_shape).astype(np.float32)
    k = rng.standard_normal(k_shape).astype(np.float32)
    out_shape = np.broadcast_shapes(u_shape[:-1], k_shape[:-1]) + (u_shape[-1],)
    g = rng.standard_normal(out_shape).astype(np.float32)
    with_bias = bias_shape is not None
    bias = rng.standard_normal(bias_shape).astype(np.float32) if with_bias else None
    argnums = (0, 1, 3) if with_bias else (0, 1)
    args = [mx.array(u), mx.array(k), mx.array(g)] + ([mx.array(bias)] if with_bias else [])
    grads = mx.grad(loss_fn(n, precision, with_bias), argnums=argnums)(*args)
    ref_u, ref_k, ref_b = conv_grads_reference(u, k, g, n=n, bias=bias)
    refs = [ref_u, ref_k] + ([ref_b] if with_bias else [])
    for got, ref in zip(grads, refs):
        got = np.array(got)
        assert got.shape == ref.shape
        if precision == "float32":
            assert accuracy(got, ref)[1] < 2e-6
        else:
            assert_correctly_rounded(got, ref)


def graph_nodes(tmp_path, *outputs):
    path = tmp_path / "graph.dot"
    mx.export_to_dot(str(path), *outputs)
    return path.read_text()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "u_shape,k_shape,n,fused",
    [
        ((2, 3, 64), (3, 128), 128, True),  # k shared over the batch
        ((2, 3, 100), (3, 37), None, True),  # causal, short kernel
        ((3, 40), (2, 3, 40), 70, False),  # u broadcast: grad u sums over rows
        ((3, 100), (3, 200), 200, False),  # folded period: the two transforms differ in size
    ],
)
def test_gradients_together_are_one_node_with_the_same_bits(tmp_path, rng, precision, u_shape, k_shape, n, fused):
    # grad u and grad k together: one RFFTConvGradients node (each row of g transformed
    # once on CUDA) where grad u is one row per row of g and both transforms have one
    # size; its outputs equal each gradient asked for alone, bit for bit.
    u, k = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in (u_shape, k_shape))
    out_shape = np.broadcast_shapes(u_shape[:-1], k_shape[:-1]) + (u_shape[-1],)
    g = mx.array(rng.standard_normal(out_shape).astype(np.float32))
    loss = loss_fn(n, precision, False)
    both = mx.grad(loss, argnums=(0, 1))(u, k, g)
    assert ("RFFTConvGradients" in graph_nodes(tmp_path, *both)) == fused
    alone = (mx.grad(loss, argnums=0)(u, k, g), mx.grad(loss, argnums=1)(u, k, g))
    for got, want in zip(both, alone):
        assert got.shape == want.shape
        np.testing.assert_array_equal(np.array(got).view(np.uint32), np.array(want).view(np.uint32))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_jvp_and_vjp_are_adjoint(rng, precision):
    u, k = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(2, 3, 48), (3, 48)])
    bias = mx.array(rng.standard_normal((3, 1)).astype(np.float32))
    du, dk, db = (mx.array(rng.standard_normal(x.shape).astype(np.float32)) for x in (u, k, bias))
    c = mx.array(rng.standard_normal((2, 3, 48)).astype(np.float32))

    def f(u, k, b):
        return mp.rfft_conv(u, k, n=96, bias=b, precision=precision)

    _, (jv,) = mx.jvp(f, [u, k, bias], [du, dk, db])
    _, vjps = mx.vjp(f, [u, k, bias], [c])
    lhs = float(np.sum(np.array(jv, np.float64) * np.array(c, np.float64)))
    rhs = sum(float(np.sum(np.array(t, np.float64) * np.array(v, np.float64))) for t, v in zip((du, dk, db), vjps))
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + abs(rhs)) + 1e-4


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "in_axes,u_shape,k_shape",
    [((0, None), (5, 3, 40), (3, 40)), ((None, 0), (3, 40), (4, 3, 20)), ((1, 0), (3, 6, 40), (6, 3, 40)),
     ((2, None), (3, 40, 4), (3, 40)), ((0, 0), (4, 40), (4, 30))],
)
def test_vmap_equals_a_python_loop(rng, precision, in_axes, u_shape, k_shape):
    u = mx.array(rng.standard_normal(u_shape).astype(np.float32))
    k = mx.array(rng.standard_normal(k_shape).astype(np.float32))
    f = lambda u, k: mp.rfft_conv(u, k, precision=precision)
    got = np.array(mx.vmap(f, in_axes=in_axes)(u, k))
    size = u_shape[in_axes[0]] if in_axes[0] is not None else k_shape[in_axes[1]]
    take = lambda x, ax, i: x if ax is None else mx.take(x, i, axis=ax)
    loop = np.stack([np.array(f(take(u, in_axes[0], i), take(k, in_axes[1], i))) for i in range(size)])
    np.testing.assert_array_equal(got, loop)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_compiled_equals_uncompiled_bitwise(rng, precision):
    u, k = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(2, 4, 64), (4, 128)])
    bias = mx.array(rng.standard_normal((4, 1)).astype(np.float32))

    def step(u, k, b):
        y = mp.rfft_conv(u, k, n=128, bias=b, precision=precision)
        return mx.sum(y * y)

    value_and_grad = mx.value_and_grad(step, argnums=(0, 1, 2))
    eager = value_and_grad(u, k, bias)
    compiled = mx.compile(value_and_grad)(u, k, bias)
    for a, b in zip(tree_flatten(eager), tree_flatten(compiled)):
        np.testing.assert_array_equal(np.array(a[1]), np.array(b[1]))


def set_env(name, value):
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.mark.parametrize("n", [None, 512])
def test_dd_bits_do_not_depend_on_batch_threads_isa_or_run(rng, n):
    L, H = 256, 3
    rows = rng.standard_normal((8, H, L)).astype(np.float32)
    k = rng.standard_normal((H, 2 * L if n else L)).astype(np.float32)
    D = rng.standard_normal((H, 1)).astype(np.float32)

    def conv(u):
        return np.array(mp.rfft_conv(mx.array(u), mx.array(k), n=n, bias=mx.array(D), precision="dd"))

    alone = np.stack([conv(rows[i : i + 1])[0] for i in range(8)])
    saved = {name: os.environ.get(name) for name in ("MLX_PRECISE_NUM_THREADS", "MLX_PRECISE_CPU_ISA")}
    try:
        for threads in ("1", "2", "5"):
            for isa in (None, "base"):
                set_env("MLX_PRECISE_NUM_THREADS", threads)
                set_env("MLX_PRECISE_CPU_ISA", isa)
                for batch in (8, 3):
                    for start in range(0, 8 - batch + 1, 5):
                        got = conv(rows[start : start + batch])
                        np.testing.assert_array_equal(got.view(np.uint32), alone[start : start + batch].view(np.uint32))
        # Embedded in a larger batch, at a different position, padded with other data.
        mixed = np.concatenate([rng.standard_normal((3, H, L)).astype(np.float32) * 1e6, rows[2:5]])
        np.testing.assert_array_equal(conv(mixed)[3:].view(np.uint32), alone[2:5].view(np.uint32))
    finally:
        for name, value in saved.items():
            set_env(name, value)


def test_dd_gradients_reproducible_across_threads(rng):
    u, k, g = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(6, 2, 64), (2, 128), (6, 2, 64)])
    f = lambda u, k: mx.sum(mp.rfft_conv(u, k, n=128, precision="dd") * g)
    saved = os.environ.get("MLX_PRECISE_NUM_THREADS")
    try:
        results = []
        for threads in ("1", "2"):
            os.environ["MLX_PRECISE_NUM_THREADS"] = threads
            results.append([np.array(x) for x in mx.grad(f, argnums=(0, 1))(u, k)])
        for a, b in zip(*results):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    finally:
        set_env("MLX_PRECISE_NUM_THREADS", saved)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("in_axes", [(0, None, 0, None), (None, 0, 0, 0), (1, None, 1, None)])
def test_vmap_of_grad_equals_a_python_loop(rng, precision, in_axes):
    # Per-example gradients: vmap over the gradient primitives themselves (grad u and
    # grad k together: RFFTConvGradients' vmap).
    V, H, L = 3, 2, 40
    u = rng.standard_normal((V, H, L) if in_axes[0] == 0 else (H, V, L) if in_axes[0] == 1 else (H, L))
    k = rng.standard_normal((V, H, 2 * L) if in_axes[1] == 0 else (H, 2 * L))
    g = rng.standard_normal((V, H, L) if in_axes[2] == 0 else (H, V, L))
    D = rng.standard_normal((V, H, 1) if in_axes[3] == 0 else (H, 1))
    u, k, g, D = (mx.array(x.astype(np.float32)) for x in (u, k, g, D))

    def loss(u, k, g, D):
        return mx.sum(mp.rfft_conv(u, k, n=2 * L, bias=D, precision=precision) * g)

    grad = mx.grad(loss, argnums=(0, 1, 3))
    batched = mx.vmap(grad, in_axes=in_axes)(u, k, g, D)
    take = lambda x, ax, i: x if ax is None else mx.take(x, i, axis=ax)
    for i in range(V):
        single = grad(*(take(x, ax, i) for x, ax in zip((u, k, g, D), in_axes)))
        for got, want in zip(batched, single):
            # Bits, so that -0 against +0 and NaN in both fail.
            np.testing.assert_array_equal(np.array(got[i]).view(np.uint32), np.array(want).view(np.uint32))


@pytest.mark.parametrize("precision", ("extended", "dd"))
@pytest.mark.parametrize("argnums", [(0, 1), (0, 1, 2), (0, 2), (1, 2), (0,), (2,)])
def test_jvp_is_rounded_once(rng, precision, argnums):
    # dy = conv(du, k) + conv(u, dk) + du*D + u*dD, with a single rounding.
    from reference import conv_reference

    u, k, D = (rng.standard_normal(s).astype(np.float32) for s in [(2, 3, 64), (3, 128), (3, 1)])
    tangents = {i: rng.standard_normal(x.shape).astype(np.float32) for i, x in enumerate((u, k, D)) if i in argnums}
    primals = [mx.array(u), mx.array(k), mx.array(D)]

    def f(*args):
        full = list(primals)
        for i, a in zip(argnums, args):
            full[i] = a
        return mp.rfft_conv(full[0], full[1], n=128, bias=full[2], precision=precision)

    _, (dy,) = mx.jvp(f, [primals[i] for i in argnums], [mx.array(tangents[i]) for i in argnums])
    zero = {i: np.zeros_like(x) for i, x in enumerate((u, k, D))}
    du, dk, dD = (tangents.get(i, zero[i]) for i in range(3))
    exact = (conv_reference(du, k, n=128, bias=D) + conv_reference(u, dk, n=128, bias=dD))
    assert_correctly_rounded(np.array(dy), exact)
