"""Python front-ends of the strict addmm / linear / layer_norm: the documented
signatures over the C++ ops, which validate every argument
(mlx_precise_ext/strict_ops.cpp) before any node is built."""

from typing import Optional

import mlx.core as mx

from . import _ext


def addmm(
    c: mx.array,
    a: mx.array,
    b: mx.array,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    precision: str = "float32",
    stream=None,
) -> mx.array:
    """``beta * c + alpha * (a @ b)`` with ``mx.addmm``'s semantics.

    Args:
        c: float32, broadcastable to the output ``(..., M, N)``.
        a: ``(..., M, K)`` float32; b: ``(..., K, N)`` float32; batch dims broadcast.
        alpha, beta: scalars, rounded to float32 as ``mx.addmm`` does; the exact value
            uses the rounded scalars.
        precision: ``"float32"`` calls ``mx.addmm``; ``"extended"`` and ``"dd"`` return
            the float32 nearest to the exact value: a float64 GEMM with a certified
            rounding and an exact recomputation where it cannot certify (``"dd"`` is
            the same computation; on Metal, which has no float64, both run float-pair
            dot products, k = 0..K-1 in order).
        stream: stream or device (CPU only in this build).
    """
    return _ext.addmm(c, a, b, alpha=alpha, beta=beta, precision=precision, stream=stream)


def linear(
    x: mx.array,
    weight: mx.array,
    bias: Optional[mx.array] = None,
    *,
    precision: str = "float32",
    stream=None,
) -> mx.array:
    """``torch.nn.functional.linear``: ``x @ weight.T + bias``.

    Args:
        x: ``(..., in_features)`` float32.
        weight: ``(out_features, in_features)`` float32.
        bias: optional ``(out_features,)`` float32, added before the single rounding.
        precision: ``"float32"`` (``mx.addmm(bias, x, weight.T)`` / ``x @ weight.T``),
            ``"extended"`` or ``"dd"`` (correctly rounded, see :func:`addmm`).
    """
    return _ext.linear(x, weight, bias, precision=precision, stream=stream)


def layer_norm(
    x: mx.array,
    weight: Optional[mx.array] = None,
    bias: Optional[mx.array] = None,
    eps: float = 1e-5,
    *,
    precision: str = "float32",
    stream=None,
) -> mx.array:
    """``torch.nn.functional.layer_norm(x, (D,), weight, bias, eps)`` over the last axis.

    Biased variance, ``eps`` inside the square root, then ``* weight + bias``.

    Args:
        x: ``(..., D)`` float32.
        weight, bias: optional ``(D,)`` float32.
        eps: ``>= 0``; used as the double it is (``"float32"`` rounds it to float32,
            as ``mx.fast.layer_norm`` does).
        precision: ``"float32"`` (``mx.fast.layer_norm``), ``"extended"`` or ``"dd"``
            (both float64, certified; float pairs on Metal); they round once, after
            the affine map.
    """
    return _ext.layer_norm(x, weight, bias, eps, precision=precision, stream=stream)
