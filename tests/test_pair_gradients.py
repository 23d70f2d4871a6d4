"""Gradients through pairs (mlx_precise.pair): every op's vjp in pair form against torch
float64 autograd, on fresh random inputs (the seed is printed).

Each test takes the vjp of an op with a pair cotangent and checks the pair it returns
(hi + lo) against float64 within 2^-44 of the sum of the magnitudes of the terms (float64
itself is good to ~2^-50 of that here; a float32 rounding anywhere would be 2^-24), and
that a float32 operand (a bias, a layer norm's weight) receives float32(its gradient).
"""

import os
import zlib

import mlx.core as mx
import numpy as np
import pytest

from mlx_precise import pair
from mlx_precise.pair import Pair

torch = pytest.importorskip("torch")
F = torch.nn.functional

SEED = int(os.environ.get("MLX_PRECISE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
print(f"test_pair_gradients seed: {SEED}")

BOUND = 2.0**-44


@pytest.fixture
def rng(request):
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def random_pair(rng, shape, scale=1.0):
    """A pair with a nonzero lo part (an exact product of two float32), and its value."""
    a = (scale * rng.standard_normal(shape)).astype(np.float32)
    b = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return pair.multiply(mx.array(a), mx.array(b)), a.astype(np.float64) * b


def leaf(values):
    return torch.tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


def value(p: Pair) -> np.ndarray:
    return np.asarray(p.hi).astype(np.float64) + np.asarray(p.lo)


def check(got, reference, scale, what):
    """got (a pair, or a float32 array rounded once) against the float64 reference."""
    reference = reference.detach().numpy() if isinstance(reference, torch.Tensor) else reference
    scale = scale.detach().numpy() if isinstance(scale, torch.Tensor) else scale
    if isinstance(got, Pair):
        hi = np.asarray(got.hi)
        np.testing.assert_array_equal((hi.astype(np.float64) + np.asarray(got.lo)).astype(np.float32), hi)
        error = np.abs(value(got) - reference)
    else:
        hi = np.asarray(got)
        error = np.abs(hi - reference) - np.abs(reference.astype(np.float32) - reference)
    assert np.all(np.isfinite(hi)), what
    worst = float(np.max(error / np.maximum(scale, 1e-300)))
    print(f"{what}: worst error {worst:.2e} of the term magnitudes (bound {BOUND:.1e}), "
          f"hi == float32(float64) for {np.mean(hi == reference.astype(np.float32)):.4%}")
    assert worst <= BOUND, what


def pair_vjp(fn, primals, cotangent: Pair):
    """vjp of fn (pairs or float32 arrays -> a pair) with a pair cotangent: the pair
    gradient of each pair primal, the float32 gradient of each float32 primal."""
    parts, shapes = [], []
    for p in primals:
        parts += list(p.astuple()) if isinstance(p, Pair) else [p]
        shapes.append(isinstance(p, Pair))

    def flat(*arrays):
        it = iter(arrays)
        args = [Pair(next(it), next(it)) if is_pair else next(it) for is_pair in shapes]
        return list(fn(*args).astuple())

    _, grads = mx.vjp(flat, parts, list(cotangent.astuple()))
    it = iter(grads)
    return [Pair(next(it), next(it)) if is_pair else next(it) for is_pair in shapes]


@pytest.mark.parametrize("op", ["gelu", "sin", "exp", "tanh"])
def test_unary_vjp(rng, op):
    x, xv = random_pair(rng, (4, 33))
    c, cv = random_pair(rng, (4, 33))
    (grad,) = pair_vjp(getattr(pair, op), [x], c)
    if op == "tanh":
        # torch's tanh backward, 1 - tanh^2, cancels where |tanh| is near 1; 1 / cosh^2
        # does not
        reference = cv / np.cosh(xv) ** 2
    else:
        xt = leaf(xv)
        torch_fn = {"gelu": F.gelu, "sin": torch.sin, "exp": torch.exp}[op]
        (torch_fn(xt) * torch.from_numpy(cv)).sum().backward()
        reference = xt.grad.numpy()
    # gelu' = Phi + x phi changes sign near x = -0.75: measure against its two terms
    scale = np.abs(cv) * (np.abs(xv) + 1) if op == "gelu" else np.abs(reference)
    check(grad, reference, scale, f"{op} vjp")


def test_binary_vjps_sum_broadcast_operands_in_double(rng):
    x, xv = random_pair(rng, (3, 1, 40))
    y, yv = random_pair(rng, (5, 40))
    w = rng.standard_normal((40,)).astype(np.float32)  # a float32 operand
    c, cv = random_pair(rng, (3, 5, 40))
    gx, gy, gw = pair_vjp(lambda a, b, v: (a * b) + v, [x, y, mx.array(w)], c)
    xt, yt, wt = leaf(xv), leaf(yv), leaf(w)
    ((xt * yt + wt) * torch.from_numpy(cv)).sum().backward()
    check(gx, xt.grad, np.sum(np.abs(cv * yv), axis=1, keepdims=True), "multiply vjp (x)")
    check(gy, yt.grad, np.sum(np.abs(cv * xv), axis=0), "multiply vjp (y)")
    check(gw, wt.grad, np.sum(np.abs(cv), axis=(0, 1)), "add vjp, float32 operand")


def test_fork_adds_the_uses_in_double(rng):
    x, xv = random_pair(rng, (6, 20))
    c, cv = random_pair(rng, (6, 20))

    def uses(a):
        first, second = pair.fork(a, 2)
        return pair.sin(first) * pair.exp(second)

    (grad,) = pair_vjp(uses, [x], c)
    xt = leaf(xv)
    (torch.sin(xt) * torch.exp(xt) * torch.from_numpy(cv)).sum().backward()
    check(grad, xt.grad, np.abs(cv) * np.exp(xv) * 2, "fork vjp")
    with pytest.raises(ValueError, match="at least 1"):
        pair.fork(x, 0)


def test_addmm_and_linear_vjps(rng):
    a, av = random_pair(rng, (3, 7, 16))
    b, bv = random_pair(rng, (16, 9))  # broadcast over a's batch
    bias = rng.standard_normal((9,)).astype(np.float32)
    c, cv = random_pair(rng, (3, 7, 9))
    ga, gb, gbias = pair_vjp(lambda x, y, z: pair.addmm(z, x, y), [a, b, mx.array(bias)], c)
    at, bt, biast = leaf(av), leaf(bv), leaf(bias)
    ((at @ bt + biast) * torch.from_numpy(cv)).sum().backward()
    check(ga, at.grad, np.abs(cv) @ np.abs(bv).T, "addmm vjp (a)")
    check(gb, bt.grad, np.einsum("bmk,bmn->kn", np.abs(av), np.abs(cv)), "addmm vjp (b, summed)")
    check(gbias, biast.grad, np.sum(np.abs(cv), axis=(0, 1)), "addmm vjp (c)")

    weight = rng.standard_normal((9, 16)).astype(np.float32)
    (gw,) = pair_vjp(lambda w: pair.linear(a, w), [mx.array(weight)], c)
    wt = leaf(weight)
    (F.linear(torch.from_numpy(av), wt) * torch.from_numpy(cv)).sum().backward()
    check(gw, wt.grad, np.einsum("bmk,bmn->nk", np.abs(av), np.abs(cv)), "linear vjp (weight)")


def test_layer_norm_vjp(rng):
    x, xv = random_pair(rng, (5, 24), scale=3.0)
    weight = rng.standard_normal((24,)).astype(np.float32)
    bias = rng.standard_normal((24,)).astype(np.float32)
    c, cv = random_pair(rng, (5, 24))
    gx, gw, gb = pair_vjp(
        lambda v, w, b: pair.layer_norm(v, w, b, 1e-5), [x, mx.array(weight), mx.array(bias)], c
    )
    xt, wt, bt = leaf(xv), leaf(weight), leaf(bias)
    (F.layer_norm(xt, (24,), wt, bt, 1e-5) * torch.from_numpy(cv)).sum().backward()
    rstd = 1 / np.std(xv, axis=-1, keepdims=True)
    terms = np.sum(np.abs(cv * weight), axis=-1, keepdims=True)
    check(gx, xt.grad, rstd * terms, "layer_norm vjp (x)")
    check(gw, wt.grad, np.sum(np.abs(cv), axis=0) * np.max(np.abs(xv) * rstd), "layer_norm vjp (w)")
    check(gb, bt.grad, np.sum(np.abs(cv), axis=0), "layer_norm vjp (b)")


def torch_circular(u, k, n, length):
    """The first `length` outputs of the size-n circular convolution, in float64."""
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :length]


@pytest.mark.parametrize("circular", [True, False])
def test_rfft_conv_vjp(rng, circular):
    B, H, L = 2, 3, 24
    u, uv = random_pair(rng, (B, H, L))
    k, kv = random_pair(rng, (H, L) if circular else (H, 3))
    skip = rng.standard_normal((H, 1)).astype(np.float32)
    c, cv = random_pair(rng, (B, H, L))
    n = 2 * L if circular else None
    gu, gk, gskip = pair_vjp(
        lambda a, b, d: pair.rfft_conv(a, b, n=n, bias=d), [u, k, mx.array(skip)], c
    )
    ut, kt, st = leaf(uv), leaf(kv), leaf(skip)
    y = torch_circular(ut, kt, 2 * L, L) + ut * st  # the causal form: no wrap-around
    (y * torch.from_numpy(cv)).sum().backward()
    magnitude = np.abs(cv).sum() * max(np.abs(kv).max(), np.abs(skip).max(), np.abs(uv).max())
    check(gu, ut.grad, magnitude, "rfft_conv vjp (u)")
    check(gk, kt.grad, magnitude * B, "rfft_conv vjp (k, summed over the batch)")
    check(gskip, st.grad, np.sum(np.abs(cv * uv), axis=(0, 2))[:, None], "rfft_conv vjp (bias)")


def test_take_rows_vjp_sums_repeated_ids(rng):
    table, tv = random_pair(rng, (7, 5))
    ids = rng.integers(0, 7, (4, 6))
    ids[0, :3] = 2  # repeats
    c, cv = random_pair(rng, (4, 6, 5))
    rows = pair.take_rows(table, mx.array(ids))
    np.testing.assert_array_equal(value(rows), tv[ids])
    (grad,) = pair_vjp(lambda t: pair.take_rows(t, mx.array(ids)), [table], c)
    tt = leaf(tv)
    (tt[torch.from_numpy(ids)] * torch.from_numpy(cv)).sum().backward()
    scale = np.zeros_like(tv)
    np.add.at(scale, ids, np.abs(cv))
    check(grad, tt.grad, np.maximum(scale, 1e-30), "take_rows vjp")
    with pytest.raises(ValueError, match="integers"):
        pair.take_rows(table, mx.array(ids).astype(mx.float32))


def test_cross_entropy_and_vjp(rng):
    logits, lv = random_pair(rng, (9, 11), scale=2.0)
    targets = rng.integers(0, 11, (9,))
    weights = (rng.random(9) < 0.6).astype(np.float32)
    weights[0] = 1.0
    loss = pair.cross_entropy(logits, mx.array(targets), mx.array(weights))
    lt = leaf(lv)
    per_row = F.cross_entropy(lt, torch.from_numpy(targets), reduction="none")
    expected = (per_row * torch.from_numpy(weights).double()).sum() / weights.sum()
    check(loss, expected.detach().numpy(), float(per_row.detach().abs().max()), "cross_entropy")
    c, cv = random_pair(rng, ())
    (grad,) = pair_vjp(
        lambda z: pair.cross_entropy(z, mx.array(targets), mx.array(weights)), [logits], c
    )
    (expected * float(cv)).backward()
    check(grad, lt.grad, abs(float(cv)) / weights.sum(), "cross_entropy vjp")
    with pytest.raises(ValueError, match="float32"):
        pair.cross_entropy(logits, mx.array(targets), mx.array(weights).astype(mx.float16))
    with pytest.raises(ValueError, match=r"logits \(N, V\)"):
        pair.cross_entropy(logits, mx.array(targets[:3]), mx.array(weights[:3]))


def test_sum_to_and_broadcast_to(rng):
    x, xv = random_pair(rng, (4, 3, 5))
    np.testing.assert_allclose(value(pair.sum_to(x, (3, 1))), xv.sum(axis=(0, 2))[:, None], rtol=2**-46)
    b = pair.broadcast_to(pair.sum_to(x, (5,)), (2, 5))
    np.testing.assert_allclose(value(b), np.broadcast_to(xv.sum(axis=(0, 1)), (2, 5)), rtol=2**-46)
    with pytest.raises(ValueError, match="does not broadcast"):
        pair.sum_to(x, (2,))
    with pytest.raises(ValueError, match="does not broadcast"):
        pair.broadcast_to(x, (4, 3, 6))


def test_second_order_and_forward_mode_raise(rng):
    x, _ = random_pair(rng, (3,))

    def grad_of_sin(hi):
        _, (g_hi,) = mx.vjp(
            lambda a: list(pair.sin(Pair(a, x.lo)).astuple()), [hi], [mx.ones((3,)), mx.zeros((3,))]
        )
        return g_hi.sum()

    with pytest.raises(ValueError, match="second order"):
        mx.grad(grad_of_sin)(x.hi)
    with pytest.raises(ValueError, match="forward-mode"):
        mx.jvp(lambda a: pair.exp(a).to_float32(), [x.hi], [x.hi])
