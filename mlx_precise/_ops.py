"""Python front-end of rfft_conv: the documented signature over the C++ op, which
validates every argument (mlx_precise_ext/ops.cpp) before any node is built."""

from typing import Optional

import mlx.core as mx

from . import _ext

# The precision vocabulary of every op (mlx_precise_ext/precision.h).
PRECISIONS = ("float32", "extended", "dd")


def rfft_conv(
    u: mx.array,
    k: mx.array,
    *,
    n: Optional[int] = None,
    bias: Optional[mx.array] = None,
    precision: str = "float32",
    stream=None,
) -> mx.array:
    """FFT convolution along the last axis, rounded once in the extended modes.

    Args:
        u: signal, shape ``(..., L)``, float32.
        k: kernel, shape ``(..., Lk)``, float32; leading dims broadcast with u's.
        n: ``None`` for the causal linear convolution
            ``y[t] = sum_{j <= min(t, Lk-1)} u[t-j] k[j]``; an int ``n >= max(L, Lk)``
            for exactly ``irfft(rfft(u, n) * rfft(k, n), n)[..., :L]`` (M2-BERT's
            bidirectional filter is ``n = 2L`` with a ``2L``-long kernel).
        bias: optional ``D`` broadcastable to the output; adds ``u * D`` before the
            rounding (pass a per-channel ``(H,)`` vector as ``D[:, None]``).
        precision: ``"float32"`` (float32 arithmetic), ``"extended"`` (>= 48-bit
            intermediates, one rounding) or ``"dd"`` (double-word float pairs, the same
            bits on every backend, batch size, position and thread count).
        stream: stream or device (CPU only in this build).

    Returns:
        ``(..., L)`` float32 array.
    """
    return _ext.rfft_conv(u, k, n=n, bias=bias, precision=precision, stream=stream)
