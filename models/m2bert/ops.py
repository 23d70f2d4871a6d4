"""The model's reductions that no ``mlx_precise.nn`` layer covers, and the elementwise
operations in the mode that carries pairs.

``precision`` is ``"float32"``, ``"extended"``, ``"dd"`` (see mlx_precise) or ``"exact"``.
The linears, the Hyena filter MLPs and the layer norms are ``mlx_precise.nn.Linear`` /
``LayerNorm`` layers; here:
- the Monarch block-diagonal products: ``mlx_precise.addmm``;
- the long convolutions, and in the extended modes the 3-tap short convolution:
  ``mlx_precise.rfft_conv``.
In ``"float32"``, ``"extended"`` and ``"dd"``, elementwise operations (gating products,
residual and embedding sums, sin, exp, erf-GELU, tanh, the short convolution's bias) are
float32: each op's output is rounded to float32 before the next op reads it.
``precision="float32"`` is MLX's own path for the linears and layer norms (``mx.addmm``,
``mx.fast.layer_norm``), except that on CUDA the products run mlx_precise's plain float32
GEMM (MLX's CUDA matmuls default to TF32).

``"exact"`` carries every activation as an ``mlx_precise.pair.Pair`` (about 48 bits, hi
and lo float32 arrays) from the embedding sum to the encoder output and the pooler,
elementwise operations included, and rounds once at the very end: its outputs are the
float32 roundings of the whole computation carried in double. The functions below take
and return pairs in that mode (``isinstance(x, Pair)``) and float32 arrays otherwise.
Its gradients are pairs too (``mlx_precise.pair``): every activation or parameter that
feeds two ops is split with ``fork`` first, so that its two cotangents add in double.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import mlx.core as mx
import mlx_precise
from mlx_precise import pair
from mlx_precise.pair import Pair

PRECISIONS = mlx_precise.PRECISIONS + ("exact",)

Activation = Union[mx.array, Pair]

_SQRT_HALF = mx.array(math.sqrt(0.5), dtype=mx.float32)
_HALF = mx.array(0.5, dtype=mx.float32)
_ONE = mx.array(1.0, dtype=mx.float32)
_ZERO = mx.array(0.0, dtype=mx.float32)


def gelu(x: Activation) -> Activation:
    """torch ``nn.GELU(approximate='none')``: x/2 (1 + erf(x/sqrt 2)); float32 unless a pair."""
    if isinstance(x, Pair):
        return pair.gelu(x)
    return _float32_gelu(x)


def _float32_gelu(x: mx.array) -> mx.array:
    return _HALF * x * (_ONE + mx.erf(x * _SQRT_HALF))


# One kernel instead of six passes over the MLP's widest activations. The fused kernel
# runs the same float32 operations in the same order, each rounded to float32: no
# product feeds an addition (erf's result does, and it ends in an fma or a copysign),
# so no contraction into an fma can change a rounding; the CPU bits are checked equal
# to the unfused ones in tests/test_m2bert.py.
_fused_gelu_product = mx.compile(lambda x, y: _float32_gelu(x) * y)


def gelu_product(x: Activation, y: Activation) -> Activation:
    """``gelu(x) * y``, the gated MLP's activation; float32 unless pairs."""
    if isinstance(x, Pair):
        return pair.gelu(x) * y
    return _fused_gelu_product(x, y)


def sin(x: Activation) -> Activation:
    return pair.sin(x) if isinstance(x, Pair) else mx.sin(x)


def exp(x: Activation) -> Activation:
    return pair.exp(x) if isinstance(x, Pair) else mx.exp(x)


def tanh(x: Activation) -> Activation:
    return pair.tanh(x) if isinstance(x, Pair) else mx.tanh(x)


def multiply(x: Activation, y: Activation, precision: str) -> Activation:
    return pair.multiply(x, y) if precision == "exact" else x * y


def fork(x: Activation, n: int) -> Tuple[Activation, ...]:
    """``n`` uses of ``x``: in ``"exact"`` (a pair) copies whose gradients add in double
    (``mlx_precise.pair.fork``); otherwise ``x`` itself ``n`` times."""
    return tuple(pair.fork(x, n)) if isinstance(x, Pair) else (x,) * n


def to_float32(x: Activation) -> mx.array:
    """The one rounding of ``"exact"``; float32 arrays pass through."""
    return x.to_float32() if isinstance(x, Pair) else x


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def blockdiag_linear(
    x: mx.array, weight: mx.array, bias: Optional[mx.array], precision: str
) -> mx.array:
    """Monarch block-diagonal linear: weight ``(nblocks, out/nblocks, in/nblocks)``.

    Block k maps input features ``[k*p, (k+1)*p)`` to outputs ``[k*q, (k+1)*q)``; each
    block is one linear, so its bias slice joins the product before the single rounding.
    """
    nblocks, out_block, in_block = weight.shape
    _check_block_features(x, nblocks * in_block)
    if precision == "exact":
        weight_t = weight.transpose(0, 2, 1)
        block_bias = None if bias is None else bias.reshape(nblocks, 1, out_block)
        rows = x.reshape(-1, nblocks, in_block).transpose(1, 0, 2)
        y = pair.addmm(block_bias, rows, weight_t)
        return y.transpose(1, 0, 2).reshape(*x.shape[:-1], nblocks * out_block)
    y = blockdiag_blocks(block_rows(x, nblocks), weight, bias, precision)
    return y.transpose(1, 0, 2).reshape(*x.shape[:-1], nblocks * out_block)


def _check_block_features(x: mx.array, features: int) -> None:
    if x.shape[-1] != features:
        raise ValueError(
            f"block-diagonal linear expects {features} input features, got {x.shape[-1]}"
        )


def block_rows(x: mx.array, nblocks: int) -> mx.array:
    """The rows of ``x (..., F)`` split into ``nblocks`` feature blocks, block-major:
    ``(nblocks, R, F / nblocks)``, a view (batch stride F / nblocks, row stride F):
    mlx_precise's CUDA GEMM reads it in place, and MLX's matmuls and mlx_precise's
    other products copy or pack what they do not read in place."""
    return x.reshape(-1, nblocks, x.shape[-1] // nblocks).transpose(1, 0, 2)


def blockdiag_blocks(
    rows: mx.array, weight: mx.array, bias: Optional[mx.array], precision: str
) -> mx.array:
    """The block-diagonal linear on block-major rows ``(nblocks, R, in_block)`` (see
    ``block_rows``), output block-major ``(nblocks, R, out_block)``: feature
    ``k*out_block + j`` of row r is ``[k, r, j]``. float32, extended and dd.

    One batched product over the blocks instead of nblocks launches plus a concatenate;
    each output is still the same dot product of one block, so the extended and dd
    results (correctly rounded) are the same bits as block by block.
    """
    nblocks, out_block, in_block = weight.shape
    _check_block_features(rows, in_block)
    weight_t = weight.transpose(0, 2, 1)
    # mlx_precise.addmm in every precision: its float32 stays float32 on CUDA (never TF32).
    if bias is not None:
        return mlx_precise.addmm(
            bias.reshape(nblocks, 1, out_block), rows, weight_t, precision=precision
        )
    # No bias. float32: beta = 0, so c is neither written into the output nor read (on
    # CUDA a pass over the whole output less): a +0 would add nothing, as a float32 GEMM
    # accumulates from +0 and so never ends at -0. extended and dd: c = +0, which turns
    # the -0 of an exactly zero sum of negative zeros into +0.
    beta = 0.0 if precision == "float32" else 1.0
    return mlx_precise.addmm(_ZERO, rows, weight_t, beta=beta, precision=precision)


def bidirectional_kernel(
    forward_filter: Activation, reverse_filter: Optional[Activation]
) -> Activation:
    """M2's long-convolution kernel of length 2L from filters ``(H, L)``.

    Bidirectional: ``[forward filter, 0 ... 0] + [0 ... 0, reversed reverse filter]``, so
    in a circular convolution of size 2L output t sees u[t - j] through forward[j] and
    u[t + 1 + j] through reverse[j]. Causal (forward filter, zero padded) when
    ``reverse_filter`` is None. The two parts do not overlap: the sum is exact.
    """
    if isinstance(forward_filter, Pair) or reverse_filter is None:
        concatenate = pair.concatenate if isinstance(forward_filter, Pair) else mx.concatenate
        padding = mx.zeros(forward_filter.shape, dtype=mx.float32)
        kernel = concatenate([forward_filter, padding], axis=-1)
        if reverse_filter is None:
            return kernel
        return kernel + concatenate([padding, reverse_filter[:, ::-1]], axis=-1)
    # The sum of the two zero-padded halves adds +0 to every element (a -0 becomes +0):
    # one concatenate plus that addition gives the same bits in two passes instead of four.
    return mx.concatenate([forward_filter, reverse_filter[:, ::-1]], axis=-1) + _ZERO


def long_conv(
    u: Activation, kernel: Activation, skip_weight: mx.array, precision: str
) -> Activation:
    """Circular convolution of ``u (B, H, L)`` with ``kernel (H, 2L)`` (see
    ``bidirectional_kernel``), size 2L, first L outputs, plus ``u * skip_weight``."""
    if precision == "exact":
        return pair.rfft_conv(u, kernel, n=2 * u.shape[-1], bias=skip_weight[:, None])
    return mlx_precise.rfft_conv(
        u, kernel, n=2 * u.shape[-1], bias=skip_weight[:, None], precision=precision
    )


def short_causal_conv(
    u: Activation, weight: mx.array, bias: mx.array, precision: str
) -> Activation:
    """Depthwise ``Conv1d(kernel_size=K, padding=K-1)`` sliced to the first L outputs.

    ``u (B, C, L)``, ``weight (C, 1, K)``, ``bias (C,)``:
    ``y[t] = bias + sum_j weight[K-1-j] * u[t-j]`` (torch's conv1d is a correlation).
    float32: the K shifted products summed directly (as cheap as an elementwise op);
    extended modes: the K-tap sum through rfft_conv, rounded once, then the bias;
    exact: the same, carried as pairs. In the extended modes a row longer than
    ``SHORT_CONV_CHUNK`` is convolved in chunks (``chunked_causal_conv``): the same
    correctly rounded sums, the same bits.
    """
    taps = weight[:, 0, ::-1]  # (C, K): taps[j] multiplies u[t - j]
    if precision == "exact":
        return pair.rfft_conv(u, taps) + bias[:, None]
    if precision == "float32":
        num_taps = taps.shape[-1]
        seq_len = u.shape[-1]
        # One write of the padded input (mx.pad fills it with zeros first).
        zeros = mx.zeros((*u.shape[:-1], num_taps - 1), dtype=mx.float32)
        padded = mx.concatenate([zeros, u], axis=-1)
        terms = [
            padded[..., num_taps - 1 - lag : num_taps - 1 - lag + seq_len] * taps[:, lag : lag + 1]
            for lag in range(num_taps)
        ]
        return _fused_sum_in_order(terms, bias[:, None])
    if u.shape[-1] <= SHORT_CONV_CHUNK:
        return mlx_precise.rfft_conv(u, taps, precision=precision) + bias[:, None]
    return _CHUNKED_CAUSAL_CONV[precision](u, taps, bias)


# Outputs per chunk of the extended short convolution. A K-tap causal convolution
# of a whole row of length L is a transform of size 2L per channel (rfft_conv
# pads to the linear convolution's length): at L = 32768 that is 3H rows of size
# 65536, with a (3H, 32768) complex double kernel-spectrum workspace (1.1 GiB at
# H = 768), and on CUDA rows of that size run from global memory. Chunks of 2048
# outputs are transforms of size 4096, and their kernel spectra are 16 times
# smaller.
SHORT_CONV_CHUNK = 2048


def chunk_windows(u: mx.array, num_taps: int, chunk: int) -> mx.array:
    """``u (..., L)`` as windows ``(..., ceil(L / chunk), num_taps - 1 + chunk)``:
    window c is u[c chunk - (num_taps - 1) : (c + 1) chunk], zeros before the
    start and after the end."""
    *batch, length = u.shape
    count = -(-length // chunk)
    body = u
    if count * chunk > length:
        tail = mx.zeros((*batch, count * chunk - length), dtype=mx.float32)
        body = mx.concatenate([u, tail], axis=-1)
    body = body.reshape(*batch, count, chunk)
    history = mx.concatenate(
        [
            mx.zeros((*batch, 1, num_taps - 1), dtype=mx.float32),
            body[..., :-1, chunk - (num_taps - 1) :],
        ],
        axis=-2,
    )
    return mx.concatenate([history, body], axis=-1)


def chunked_causal_conv(
    u: mx.array, taps: mx.array, bias: mx.array, precision: str, chunk: int
) -> mx.array:
    """``rfft_conv(u, taps, precision) + bias[:, None]`` for ``u (..., C, L)``,
    ``taps (C, K)`` and ``bias (C,)``, with the convolution run on
    chunks of ``chunk`` outputs: each window (``chunk_windows``) holds its chunk's
    inputs and the K - 1 before them, so its outputs from K - 1 on are the
    convolution's outputs of the chunk, each the correctly rounded sum of the same
    K exact products as over the whole row. The bias addition, a float32 addition
    as before, also writes the kept outputs contiguously. (A non-finite input
    makes only its own and the next window's outputs NaN, where a whole-row
    transform makes the whole row's.)"""
    num_taps = taps.shape[-1]
    length = u.shape[-1]
    windows = chunk_windows(u, num_taps, chunk)
    y = mlx_precise.rfft_conv(windows, taps[:, None, :], precision=precision)
    kept = y[..., num_taps - 1 :] + bias[:, None, None]
    return kept.reshape(*u.shape[:-1], -1)[..., :length]


def chunked_causal_conv_function(precision: str, chunk: int):
    """``chunked_causal_conv(u, taps, bias, precision, chunk)`` as a function of
    ``(u, taps, bias)`` whose gradient is the whole-row rfft_conv's: autodiff through the windows would add the two gradient parts of
    each of the K - 1 inputs that two windows share in float32, two roundings
    instead of the one of the whole-row gradient."""

    @mx.custom_function
    def conv(u, taps, bias):
        return chunked_causal_conv(u, taps, bias, precision, chunk)

    @conv.vjp
    def conv_vjp(primals, cotangent, output):
        def whole_row(u, taps, bias):
            return mlx_precise.rfft_conv(u, taps, precision=precision) + bias[:, None]

        _, gradients = mx.vjp(whole_row, list(primals), [cotangent])
        return tuple(gradients)

    return conv


_CHUNKED_CAUSAL_CONV = {
    p: chunked_causal_conv_function(p, SHORT_CONV_CHUNK) for p in ("extended", "dd")
}


def _sum_in_order(terms: list, last: mx.array) -> mx.array:
    """``((terms[0] + terms[1]) + ...) + last``, each sum rounded to float32."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total + last


# The short convolution's sums as one kernel instead of one pass per addition over its
# 3 hidden-wide activations. Additions only (the products are separate kernels before
# it), so nothing can contract into an fma: the same roundings in the same order.
_fused_sum_in_order = mx.compile(_sum_in_order)
