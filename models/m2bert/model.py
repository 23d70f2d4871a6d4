"""M2-BERT (Monarch Mixer BERT, HazyResearch/m2 ``bert/``) in MLX, inference only.

The module tree mirrors the published parameter names (``embeddings.word_embeddings.weight``,
``encoder.layer.{i}.attention.filter_fn.implicit_filter.{0,2,4,6}.weight``, ...), so a
checkpoint loads by name; the one difference is the Sin frequency, which the published
code shares between every Sin layer of a filter and its reverse filter and saves under
each of them: here it is one array per filter, ``filter_fn.sin_freq`` (see checkpoint.py).

Precision: ``precision="float32" | "extended" | "dd"`` routes every reduction (linears,
Monarch block-diagonal products, layer norms, long and short convolutions) through
``ops``; elementwise operations (gating products, residual and embedding sums, sin, exp,
erf-GELU, tanh) are float32 in every mode. See ops.py.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import ops
from .config import M2BertConfig

_SQRT_HALF = mx.array(math.sqrt(0.5), dtype=mx.float32)
_HALF = mx.array(0.5, dtype=mx.float32)
_ONE = mx.array(1.0, dtype=mx.float32)


def _gelu_exact(x: mx.array) -> mx.array:
    """torch ``nn.GELU(approximate='none')``: x/2 (1 + erf(x/sqrt 2)), float32."""
    return _HALF * x * (_ONE + mx.erf(x * _SQRT_HALF))


class Linear(nn.Module):
    """Parameter holder with torch's layout: weight ``(out, in)``, optional bias ``(out,)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = mx.zeros((out_features, in_features), dtype=mx.float32)
        if bias:
            self.bias = mx.zeros((out_features,), dtype=mx.float32)

    def __call__(self, x: mx.array, precision: str) -> mx.array:
        return ops.linear(x, self.weight, self.get("bias"), precision)


class BlockdiagLinear(nn.Module):
    """Monarch block-diagonal linear: weight ``(nblocks, out/nblocks, in/nblocks)``."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool):
        super().__init__()
        self.weight = mx.zeros(
            (nblocks, out_features // nblocks, in_features // nblocks), dtype=mx.float32
        )
        if bias:
            self.bias = mx.zeros((out_features,), dtype=mx.float32)

    def __call__(self, x: mx.array, precision: str) -> mx.array:
        return ops.blockdiag_linear(x, self.weight, self.get("bias"), precision)


class LayerNorm(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,), dtype=mx.float32)
        self.bias = mx.zeros((dims,), dtype=mx.float32)

    def __call__(self, x: mx.array, precision: str) -> mx.array:
        return ops.layer_norm(x, self.weight, self.bias, self.eps, precision)


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dims: int):
        super().__init__()
        self.weight = mx.zeros((num_embeddings, dims), dtype=mx.float32)

    def __call__(self, ids: mx.array) -> mx.array:
        return mx.take(self.weight, ids, axis=0)


class SinActivation(nn.Module):
    """Marks a Sin position in the implicit filter MLP; its frequency is the filter's
    shared ``sin_freq`` (the published Sin modules are one object)."""


class PositionalEmbedding(nn.Module):
    """Hyena filter input: ``z (1, l_max, emb_dim)`` = [t, Re, Im of exp(-i f w)] and
    ``t (1, l_max, 1)`` = linspace(0, 1, l_max). Both come from the checkpoint: z is
    trained, so recomputing it from the formula would not match."""

    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        self.z = mx.zeros((1, seq_len, emb_dim), dtype=mx.float32)
        self.t = mx.zeros((1, seq_len, 1), dtype=mx.float32)

    def __call__(self, seq_len: int) -> Tuple[mx.array, mx.array]:
        return self.z[:, :seq_len], self.t[:, :seq_len]


class ExponentialModulation(nn.Module):
    """Multiplies the filter by exp(-t |deltas|) (the published shift is 0)."""

    def __init__(self, dims: int):
        super().__init__()
        self.deltas = mx.zeros((1, 1, dims), dtype=mx.float32)

    def __call__(self, t: mx.array, filters: mx.array) -> mx.array:
        return filters * mx.exp(-t * mx.abs(self.deltas))


def _implicit_mlp(emb_dim: int, order: int, dims: int) -> list:
    """Linear(emb, order), Sin, [Linear(order, order), Sin] x 2, Linear(order, dims, no bias):
    the published ``nn.Sequential`` indices 0..6."""
    return [
        Linear(emb_dim, order), SinActivation(),
        Linear(order, order), SinActivation(),
        Linear(order, order), SinActivation(),
        Linear(order, dims, bias=False),
    ]


class HyenaFilter(nn.Module):
    """Implicit long filters (forward and, if bidirectional, reverse) and the skip weight
    ``bias`` (the "D" of ``y + u * D``)."""

    def __init__(self, config: M2BertConfig):
        super().__init__()
        dims, order = config.hidden_size, config.hyena_filter_order
        self.w_mod = config.hyena_w_mod
        self.bias = mx.zeros((dims,), dtype=mx.float32)
        self.sin_freq = mx.full((1, order), config.hyena_w, dtype=mx.float32)
        self.pos_emb = PositionalEmbedding(config.hyena_emb_dim, config.long_conv_l_max)
        self.implicit_filter = _implicit_mlp(config.hyena_emb_dim, order, dims)
        if config.bidirectional:
            self.implicit_filter_rev = _implicit_mlp(config.hyena_emb_dim, order, dims)
        self.modulation = ExponentialModulation(dims)

    def _run_mlp(self, layers: list, z: mx.array, precision: str) -> mx.array:
        scaled_freq = mx.array(self.w_mod, dtype=mx.float32) * self.sin_freq
        h = z
        for layer in layers:
            if isinstance(layer, SinActivation):
                h = mx.sin(scaled_freq * h)
            else:
                h = layer(h, precision)
        return h

    def filters(self, seq_len: int, precision: str) -> Tuple[mx.array, Optional[mx.array]]:
        """Forward and reverse filters, each ``(H, seq_len)``."""
        z, t = self.pos_emb(seq_len)

        def one_filter(layers):
            h = self.modulation(t, self._run_mlp(layers, z, precision))  # (1, L, H)
            return h[0].T

        reverse = one_filter(self.implicit_filter_rev) if "implicit_filter_rev" in self else None
        return one_filter(self.implicit_filter), reverse

    def kernel(self, seq_len: int, precision: str) -> mx.array:
        """The long-convolution kernel ``(H, 2 seq_len)``.

        It depends only on the parameters, the length and the precision, not on the input,
        so it is computed once and reused (the reference recomputes it every forward: a
        filter MLP over every position for each of the 24 filter banks). The cache holds
        one entry, keyed on (seq_len, precision) and on the identity of every parameter
        array: assigning parameters (``update``, ``load_weights``, an optimizer step, or
        the tracer arrays of ``mx.grad``) replaces those arrays and so recomputes it."""
        parameters = tuple(array for _, array in tree_flatten(self.parameters()))
        cached = self.__dict__.get("_kernel_cache")
        if (
            cached is not None
            and cached[0] == (seq_len, precision)
            and len(cached[1]) == len(parameters)
            and all(old is new for old, new in zip(cached[1], parameters))
        ):
            return cached[2]
        kernel = ops.bidirectional_kernel(*self.filters(seq_len, precision))
        # Kept in the instance __dict__, outside the module tree, so it is no parameter.
        self.__dict__["_kernel_cache"] = ((seq_len, precision), parameters, kernel)
        return kernel

    def __call__(self, u: mx.array, precision: str) -> mx.array:
        """``u (B, H, L)`` -> long convolution of u plus ``u * bias``."""
        return ops.long_conv(u, self.kernel(u.shape[-1], precision), self.bias, precision)


class DepthwiseConv1d(nn.Module):
    """Parameters of torch ``Conv1d(C, C, kernel_size, groups=C)``: weight ``(C, 1, K)``,
    bias ``(C,)``; the computation is ``ops.short_causal_conv``."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.weight = mx.zeros((channels, 1, kernel_size), dtype=mx.float32)
        self.bias = mx.zeros((channels,), dtype=mx.float32)


class MonarchMixerSequenceMixing(nn.Module):
    """in_linear -> short causal conv -> v*x1 -> long conv (+v*D) -> *x2 (+ residual long
    conv of the block input) -> out_linear. No residual connection or norm around it."""

    def __init__(self, config: M2BertConfig):
        super().__init__()
        dims = config.hidden_size
        self.in_linear = Linear(dims, 3 * dims)
        self.out_linear = Linear(dims, dims)
        # torch Conv1d(3d, 3d, kernel_size=3, groups=3d, padding=2) layout
        self.short_filter = DepthwiseConv1d(3 * dims, kernel_size=3)
        self.filter_fn = HyenaFilter(config)
        if config.residual_long_conv:
            self.filter_fn2 = HyenaFilter(config)

    def __call__(self, hidden: mx.array, precision: str) -> mx.array:
        dims = hidden.shape[-1]
        projected = self.in_linear(hidden, precision).transpose(0, 2, 1)  # (B, 3H, L)
        mixed = ops.short_causal_conv(
            projected, self.short_filter.weight, self.short_filter.bias, precision
        )
        x1, x2, v = mixed[:, :dims], mixed[:, dims : 2 * dims], mixed[:, 2 * dims :]
        y = self.filter_fn(v * x1, precision) * x2
        if "filter_fn2" in self:
            y = y + self.filter_fn2(hidden.transpose(0, 2, 1), precision)
        return self.out_linear(y.transpose(0, 2, 1), precision)


class GatedLinearUnitMLP(nn.Module):
    """LayerNorm(wo(GELU(a) * b) + residual) with [a, b] = gated_layers(x)."""

    def __init__(self, config: M2BertConfig):
        super().__init__()
        dims, inner = config.hidden_size, config.intermediate_size
        self.intermediate_size = inner
        if config.use_monarch_mlp:
            nblocks = config.monarch_mlp_nblocks
            self.gated_layers = BlockdiagLinear(dims, 2 * inner, nblocks, bias=False)
            self.wo = BlockdiagLinear(inner, dims, nblocks, bias=True)
        else:
            self.gated_layers = Linear(dims, 2 * inner, bias=False)
            self.wo = Linear(inner, dims)
        self.layernorm = LayerNorm(dims, config.layer_norm_eps)

    def __call__(self, hidden: mx.array, precision: str) -> mx.array:
        gate_and_value = self.gated_layers(hidden, precision)
        gated = gate_and_value[..., : self.intermediate_size]
        value = gate_and_value[..., self.intermediate_size :]
        out = self.wo(_gelu_exact(gated) * value, precision)
        return self.layernorm(out + hidden, precision)


class BertLayer(nn.Module):
    def __init__(self, config: M2BertConfig):
        super().__init__()
        self.attention = MonarchMixerSequenceMixing(config)
        self.mlp = GatedLinearUnitMLP(config)

    def __call__(self, hidden: mx.array, precision: str) -> mx.array:
        return self.mlp(self.attention(hidden, precision), precision)


class BertEmbeddings(nn.Module):
    def __init__(self, config: M2BertConfig):
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        if config.use_positional_encodings:
            self.position_embeddings = Embedding(
                config.max_position_embeddings, config.hidden_size
            )
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def __call__(self, token_ids: mx.array, token_type_ids: mx.array, precision: str) -> mx.array:
        summed = self.word_embeddings(token_ids) + self.token_type_embeddings(token_type_ids)
        if "position_embeddings" in self:
            positions = mx.arange(token_ids.shape[1], dtype=mx.int32)
            summed = summed + self.position_embeddings(positions)[None]
        return self.LayerNorm(summed, precision)


class BertEncoder(nn.Module):
    def __init__(self, config: M2BertConfig):
        super().__init__()
        self.layer = [BertLayer(config) for _ in range(config.num_hidden_layers)]


class BertPooler(nn.Module):
    def __init__(self, config: M2BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def __call__(self, hidden: mx.array, precision: str) -> mx.array:
        return mx.tanh(self.dense(hidden[:, 0], precision))


TokenIds = Union[mx.array, Sequence[Sequence[int]]]


class M2BertModel(nn.Module):
    """M2-BERT encoder with pooler. Weights start at zero: load a checkpoint
    (``checkpoint.load_model``) or assign a state dict (``checkpoint.load_state_dict``)."""

    def __init__(self, config: M2BertConfig, precision: str = "float32"):
        super().__init__()
        self.config = config
        self.precision = ops.check_precision(precision)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def _token_array(self, token_ids: TokenIds, name: str) -> mx.array:
        ids = token_ids if isinstance(token_ids, mx.array) else mx.array(token_ids)
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D (batch, length), got shape {ids.shape}")
        if not mx.issubdtype(ids.dtype, mx.integer):
            raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
        if ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"{name} has length {ids.shape[1]}; this model takes at most "
                f"{self.config.max_length} tokens: truncate the input"
            )
        return ids.astype(mx.int32)

    def __call__(
        self,
        token_ids: TokenIds,
        token_type_ids: Optional[TokenIds] = None,
        precision: Optional[str] = None,
    ) -> Tuple[mx.array, mx.array]:
        """Returns (last hidden state ``(B, L, H)``, pooled ``(B, H)``).

        Like the reference, there is no attention mask: pad tokens take part in the
        long convolutions, so pad inputs to ``config.max_length`` to match it."""
        precision = ops.check_precision(precision or self.precision)
        ids = self._token_array(token_ids, "token_ids")
        if token_type_ids is None:
            types = mx.zeros(ids.shape, dtype=mx.int32)
        else:
            types = self._token_array(token_type_ids, "token_type_ids")
            if types.shape != ids.shape:
                raise ValueError(
                    f"token_type_ids shape {types.shape} differs from token_ids {ids.shape}"
                )
        hidden = self.embeddings(ids, types, precision)
        for layer in self.encoder.layer:
            hidden = layer(hidden, precision)
        return hidden, self.pooler(hidden, precision)

    def encode(self, token_ids: TokenIds, precision: Optional[str] = None) -> mx.array:
        """Sentence embeddings ``(B, H)``: the pooled first-token output."""
        return self(token_ids, precision=precision)[1]
