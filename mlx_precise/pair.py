"""Values carried between ops unrounded: a chain of these ops rounds to float32 once.

A :class:`Pair` holds a value as two float32 arrays, ``hi = float32(x)`` and
``lo = float32(x - hi)``: about 48 significant bits, twice float32's, in arrays that every
MLX backend can hold (the GPU backends have no float64). Each op below reads its pair
operands, computes in double (CPU, CUDA) or double-word arithmetic (Metal) and returns a
pair, never rounding to float32 in between; a float32 array enters a chain as the exact
pair ``(x, 0)``. The chain's result is :meth:`Pair.to_float32`, its ``hi``: the float32
nearest to the carried value, so the chain rounds once, at the end.

Layout operations (indexing, ``transpose``, ``reshape``, ``concatenate``, negation) are
exact on pairs and apply to both parts. The ops::

    add, multiply          two pairs (or float32 arrays), broadcast (also ``pair + x``,
                           ``pair * x``; an mx.array on the left raises instead)
    gelu, sin, exp, tanh   one pair; gelu is torch's exact-erf GELU
    addmm, linear          pair input and weight, float32 bias
    layer_norm             pair input, float32 weight and bias
    rfft_conv              pair signal and kernel, float32 bias (mlx_precise.rfft_conv)
    take_rows              rows of a pair table by integer ids (an embedding lookup)
    cross_entropy          weighted mean cross-entropy of pair logits: a scalar pair
    broadcast_to, sum_to   a pair broadcast, and summed back in double
    fork                   n uses of one pair (see below)

Gradients (``mx.grad``, ``mx.vjp``) flow through every op in pair form: the cotangent of
a pair is a pair, each vjp computes in double, and a float32 array that entered a chain
receives the float32 nearest to its gradient, rounded once. One rule keeps them so: a
pair used by two ops is split with :func:`fork` first. MLX's autograd adds the
cotangents of an array used twice in float32, part by part, which would round the
gradient; ``fork``'s copies have theirs added in double. (Slices of one pair that do not
overlap need no fork: their cotangents never meet.) See docs/m2bert.md.

M2-BERT's ``precision="exact"`` is built from these (models/m2bert).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import mlx.core as mx

from . import _ext

_ZERO = mx.array(0.0, dtype=mx.float32)


class Pair:
    """A float32 array carried unrounded as ``hi + lo`` (``hi = float32(hi + lo)``)."""

    __slots__ = ("hi", "lo")

    def __init__(self, hi: mx.array, lo: Optional[mx.array] = None):
        """``Pair(x)`` is the exact pair ``(x, 0)`` of a float32 array; ``Pair(hi, lo)``
        takes the two parts as they are (they must satisfy ``hi = float32(hi + lo)``, as
        every op here returns them)."""
        if lo is None:
            lo = mx.broadcast_to(_ZERO, hi.shape) if isinstance(hi, mx.array) else None
        for name, part in (("hi", hi), ("lo", lo)):
            if not isinstance(part, mx.array):
                raise TypeError(
                    f"Pair: {name} must be an mlx.core.array of dtype float32, got "
                    f"{type(part).__name__}"
                )
            if part.dtype != mx.float32:
                raise ValueError(
                    f"Pair: {name} has dtype {part.dtype}; pairs hold float32 parts and "
                    f"nothing is cast silently: pass {name}.astype(mx.float32) if that "
                    f"rounding is what you want"
                )
        if lo.shape != hi.shape:
            raise ValueError(f"Pair: hi {hi.shape} and lo {lo.shape} differ in shape")
        self.hi = hi
        self.lo = lo

    @property
    def shape(self):
        return self.hi.shape

    @property
    def ndim(self) -> int:
        return self.hi.ndim

    def to_float32(self) -> mx.array:
        """The float32 nearest to the carried value: ``hi``."""
        return self.hi

    def astuple(self):
        return self.hi, self.lo

    def __repr__(self) -> str:
        return f"Pair(shape={self.shape})"

    # Exact layout operations, applied to both parts.
    def __getitem__(self, index) -> "Pair":
        return Pair(self.hi[index], self.lo[index])

    def transpose(self, *axes) -> "Pair":
        return Pair(self.hi.transpose(*axes), self.lo.transpose(*axes))

    @property
    def T(self) -> "Pair":
        return self.transpose()

    def reshape(self, *shape) -> "Pair":
        return Pair(self.hi.reshape(*shape), self.lo.reshape(*shape))

    def __neg__(self) -> "Pair":
        return Pair(-self.hi, -self.lo)

    def __add__(self, other) -> "Pair":
        return add(self, other)

    def __mul__(self, other) -> "Pair":
        return multiply(self, other)


PairLike = Union[Pair, mx.array]


def as_pair(x: PairLike) -> Pair:
    """``x`` itself if a :class:`Pair`, else the exact pair ``(x, 0)`` of a float32 array."""
    return x if isinstance(x, Pair) else Pair(x)


def _pair(parts) -> Pair:
    hi, lo = parts
    return Pair(hi, lo)


def contiguous(x: Pair) -> Pair:
    return Pair(mx.contiguous(x.hi), mx.contiguous(x.lo))


def concatenate(parts: Sequence[PairLike], axis: int = 0) -> Pair:
    pairs = [as_pair(p) for p in parts]
    return Pair(
        mx.concatenate([p.hi for p in pairs], axis=axis),
        mx.concatenate([p.lo for p in pairs], axis=axis),
    )


def add(x: PairLike, y: PairLike, *, stream=None) -> Pair:
    return _pair(
        _ext.pair_binary(
            "add", as_pair(x).astuple(), as_pair(y).astuple(), stream=stream
        )
    )


def multiply(x: PairLike, y: PairLike, *, stream=None) -> Pair:
    return _pair(
        _ext.pair_binary(
            "multiply",
            as_pair(x).astuple(),
            as_pair(y).astuple(),
            stream=stream,
        )
    )


def _unary(op: str, x: PairLike, stream) -> Pair:
    return _pair(_ext.pair_unary(op, as_pair(x).astuple(), stream=stream))


def gelu(x: PairLike, *, stream=None) -> Pair:
    """torch ``F.gelu(x, approximate="none")``: x/2 (1 + erf(x / sqrt 2))."""
    return _unary("gelu", x, stream)


def sin(x: PairLike, *, stream=None) -> Pair:
    return _unary("sin", x, stream)


def exp(x: PairLike, *, stream=None) -> Pair:
    return _unary("exp", x, stream)


def tanh(x: PairLike, *, stream=None) -> Pair:
    return _unary("tanh", x, stream)


def addmm(c: Optional[mx.array], a: PairLike, b: PairLike, *, stream=None) -> Pair:
    """``a @ b + c``: pairs (or float32 arrays) ``a (..., M, K)`` and ``b (..., K, N)``,
    optional float32 ``c`` broadcastable to the output (batch dims broadcast as in
    ``mx.addmm``)."""
    return _pair(
        _ext.pair_addmm(c, as_pair(a).astuple(), as_pair(b).astuple(), stream=stream)
    )


def linear(
    x: PairLike, weight: PairLike, bias: Optional[mx.array] = None, *, stream=None
) -> Pair:
    """``x @ weight.T + bias`` (torch ``F.linear``) of a pair ``x``; ``weight`` a float32
    array or a pair (a weight shared with another op, forked)."""
    return _pair(
        _ext.pair_linear(as_pair(x).astuple(), as_pair(weight).astuple(), bias, stream=stream)
    )


def layer_norm(
    x: PairLike,
    weight: Optional[mx.array] = None,
    bias: Optional[mx.array] = None,
    eps: float = 1e-5,
    *,
    stream=None,
) -> Pair:
    """torch ``F.layer_norm`` over the last axis of a pair ``x``."""
    return _pair(_ext.pair_layer_norm(as_pair(x).astuple(), weight, bias, eps, stream=stream))


def rfft_conv(
    u: PairLike,
    k: PairLike,
    *,
    n: Optional[int] = None,
    bias: Optional[mx.array] = None,
    stream=None,
) -> Pair:
    """:func:`mlx_precise.rfft_conv` of a pair signal ``u`` and pair kernel ``k``, plus
    ``u * bias`` for a float32 ``bias``."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"rfft_conv: n must be an int or None, got {type(n).__name__}")
    return _pair(
        _ext.pair_rfft_conv(
            as_pair(u).astuple(),
            as_pair(k).astuple(),
            n=n,
            bias=bias,
            stream=stream,
        )
    )


def broadcast_to(x: PairLike, shape: Sequence[int], *, stream=None) -> Pair:
    """``x`` broadcast to ``shape``; its gradient is summed back in double."""
    return _pair(_ext.pair_broadcast_to(as_pair(x).astuple(), list(shape), stream=stream))


def sum_to(x: PairLike, shape: Sequence[int], *, stream=None) -> Pair:
    """``x`` summed in double to ``shape``, a shape that broadcasts to ``x.shape``."""
    return _pair(_ext.pair_sum_to(as_pair(x).astuple(), list(shape), stream=stream))


def fork(x: PairLike, n: int, *, stream=None) -> list:
    """``n`` copies of ``x`` for ``n`` uses, whose gradients are added in double."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"fork: n must be an int, got {type(n).__name__}")
    return [_pair(p) for p in _ext.pair_fork(as_pair(x).astuple(), n, stream=stream)]


def take_rows(table: PairLike, ids: mx.array, *, stream=None) -> Pair:
    """``table[ids]`` for a pair (or float32) table ``(V, D)`` and integer ``ids`` of any
    shape: ``ids.shape + (D,)``. The table's gradient sums the rows of each id in double
    (MLX's ``take`` would add them in float32)."""
    return _pair(_ext.pair_take_rows(as_pair(table).astuple(), ids, stream=stream))


def cross_entropy(
    logits: PairLike, targets: mx.array, weights: mx.array, *, stream=None
) -> Pair:
    """``sum_i w_i CE(logits_i, targets_i) / sum_i w_i`` for pair logits ``(N, V)``,
    integer targets ``(N,)`` and float32 weights ``(N,)`` (a 0/1 mask gives torch's mean
    over the selected rows): a scalar pair, computed in double."""
    return _pair(
        _ext.pair_cross_entropy(as_pair(logits).astuple(), targets, weights, stream=stream)
    )
