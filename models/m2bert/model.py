"""M2-BERT (Monarch Mixer BERT, HazyResearch/m2 ``bert/``) in MLX: the encoder and pooler
(the published ``BertModel``); the task heads are in heads.py.

The module tree mirrors the published parameter names (``embeddings.word_embeddings.weight``,
``encoder.layer.{i}.attention.filter_fn.implicit_filter.{0,2,4,6}.weight``, ...), so a
checkpoint loads by name; the one difference is the Sin frequency, which the published
code shares between every Sin layer of a filter and its reverse filter and saves under
each of them: here it is one array per filter, ``filter_fn.sin_freq`` (see checkpoint.py).

Precision: ``precision="float32" | "extended" | "dd" | "exact"`` is picked once, when the
model is built (``M2BertModel(config, precision=...)``) or switched for the whole model with
``set_precision``; every layer that reduces (``mlx_precise.nn.Linear`` / ``LayerNorm``, the
Monarch block-diagonal products, the long and short convolutions) holds it as an attribute.
In the first three, elementwise operations (gating products, residual and embedding sums,
sin, exp, erf-GELU, tanh) are float32. ``"exact"`` carries every activation unrounded, as
an ``mlx_precise.pair.Pair``, from the embedding sum to the outputs, which are rounded to
float32 once, at the very end. See ops.py.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
import mlx_precise
from mlx_precise.nn import LayerNorm, Linear

from mlx_precise import pair

from . import ops
from .config import M2BertConfig
from .text import token_batch

class BlockdiagLinear(nn.Module):
    """Monarch block-diagonal linear: weight ``(nblocks, out/nblocks, in/nblocks)``."""

    def __init__(
        self, in_features: int, out_features: int, nblocks: int, bias: bool, precision: str
    ):
        super().__init__()
        self.precision = ops.check_precision(precision)
        self.weight = mx.zeros(
            (nblocks, out_features // nblocks, in_features // nblocks), dtype=mx.float32
        )
        if bias:
            self.bias = mx.zeros((out_features,), dtype=mx.float32)

    def __call__(self, x: mx.array) -> mx.array:
        return ops.blockdiag_linear(x, self.weight, self.get("bias"), self.precision)


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

    def decay(self, t: mx.array, precision: str) -> ops.Activation:
        return ops.exp(-ops.multiply(t, mx.abs(self.deltas), precision))

    def __call__(
        self, t: mx.array, filters: ops.Activation, decay: Optional[ops.Activation] = None
    ) -> ops.Activation:
        """``filters * decay``; the decay is computed from ``t`` unless given (the
        forward and reverse filter share one, forked in ``"exact"``)."""
        if decay is None:
            decay = self.decay(t, "exact" if isinstance(filters, ops.Pair) else "float32")
        return filters * decay


def _implicit_mlp(emb_dim: int, order: int, dims: int, precision: str) -> list:
    """Linear(emb, order), Sin, [Linear(order, order), Sin] x 2, Linear(order, dims, no bias):
    the published ``nn.Sequential`` indices 0..6."""
    return [
        Linear(emb_dim, order, precision=precision), SinActivation(),
        Linear(order, order, precision=precision), SinActivation(),
        Linear(order, order, precision=precision), SinActivation(),
        Linear(order, dims, bias=False, precision=precision),
    ]


class HyenaFilter(nn.Module):
    """Implicit long filters (forward and, if bidirectional, reverse) and the skip weight
    ``bias`` (the "D" of ``y + u * D``)."""

    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        dims, order = config.hidden_size, config.hyena_filter_order
        self.precision = ops.check_precision(precision)
        self.w_mod = config.hyena_w_mod
        self.bias = mx.zeros((dims,), dtype=mx.float32)
        self.sin_freq = mx.full((1, order), config.hyena_w, dtype=mx.float32)
        self.pos_emb = PositionalEmbedding(config.hyena_emb_dim, config.long_conv_l_max)
        self.implicit_filter = _implicit_mlp(config.hyena_emb_dim, order, dims, precision)
        if config.bidirectional:
            self.implicit_filter_rev = _implicit_mlp(config.hyena_emb_dim, order, dims, precision)
        self.modulation = ExponentialModulation(dims)

    def _run_mlp(self, layers: list, z: ops.Activation, freqs) -> ops.Activation:
        """The implicit MLP; ``freqs`` holds the scaled Sin frequency, one use per Sin."""
        freqs = iter(freqs)
        h = z
        for layer in layers:
            h = ops.sin(next(freqs) * h) if isinstance(layer, SinActivation) else layer(h)
        return h

    def filters(self, seq_len: int) -> Tuple[ops.Activation, Optional[ops.Activation]]:
        """Forward and reverse filters, each ``(H, seq_len)``.

        The shared Sin frequency, z and the decay each feed both filters (and the
        frequency every Sin layer): they are computed once and forked, so that in
        ``"exact"`` their gradients add in double (``ops.fork``)."""
        z, t = self.pos_emb(seq_len)
        mlps = [self.implicit_filter]
        if "implicit_filter_rev" in self:
            mlps.append(self.implicit_filter_rev)
        exact = self.precision == "exact"
        sin_count = sum(isinstance(layer, SinActivation) for layer in self.implicit_filter)
        scaled_freq = ops.multiply(
            mx.array(self.w_mod, dtype=mx.float32), self.sin_freq, self.precision
        )
        freqs = ops.fork(scaled_freq, sin_count * len(mlps))
        inputs = ops.fork(pair.Pair(z) if exact else z, len(mlps))
        decays = ops.fork(self.modulation.decay(t, self.precision), len(mlps))
        filters = []
        # Forward first, as the published code computes them (the tracer matches calls in order).
        for i, layers in enumerate(mlps):
            h = self._run_mlp(layers, inputs[i], freqs[i * sin_count : (i + 1) * sin_count])
            filters.append(self.modulation(t, h, decay=decays[i])[0].T)  # (H, L)
        return filters[0], filters[1] if len(filters) > 1 else None

    def kernel(self, seq_len: int) -> ops.Activation:
        """The long-convolution kernel ``(H, 2 seq_len)``.

        It depends only on the parameters, the length and the precision, not on the input,
        so it is computed once and reused (the reference recomputes it every forward: a
        filter MLP over every position for each of the 24 filter banks). The cache holds
        one entry, keyed on (seq_len, precision) and on the identity of every parameter
        array: assigning parameters (``update``, ``load_weights``, an optimizer step, or
        the tracer arrays of ``mx.grad``) replaces those arrays and so recomputes it."""
        key = (seq_len, self.precision)
        parameters = tuple(array for _, array in tree_flatten(self.parameters()))
        cached = self.__dict__.get("_kernel_cache")
        if (
            cached is not None
            and cached[0] == key
            and len(cached[1]) == len(parameters)
            and all(old is new for old, new in zip(cached[1], parameters))
        ):
            return cached[2]
        kernel = ops.bidirectional_kernel(*self.filters(seq_len))
        # Kept in the instance __dict__, outside the module tree, so it is no parameter.
        self.__dict__["_kernel_cache"] = (key, parameters, kernel)
        return kernel

    def __call__(self, u: ops.Activation) -> ops.Activation:
        """``u (B, H, L)`` -> long convolution of u plus ``u * bias``."""
        return ops.long_conv(u, self.kernel(u.shape[-1]), self.bias, self.precision)


class DepthwiseConv1d(nn.Module):
    """torch ``Conv1d(C, C, kernel_size, groups=C, padding=kernel_size-1)`` sliced to the
    first L outputs (a causal depthwise convolution): weight ``(C, 1, K)``, bias ``(C,)``."""

    def __init__(self, channels: int, kernel_size: int, precision: str):
        super().__init__()
        self.precision = ops.check_precision(precision)
        self.weight = mx.zeros((channels, 1, kernel_size), dtype=mx.float32)
        self.bias = mx.zeros((channels,), dtype=mx.float32)

    def __call__(self, u: ops.Activation) -> ops.Activation:
        """``u (B, C, L)`` -> ``(B, C, L)``."""
        return ops.short_causal_conv(u, self.weight, self.bias, self.precision)


class MonarchMixerSequenceMixing(nn.Module):
    """in_linear -> short causal conv -> v*x1 -> long conv (+v*D) -> *x2 (+ residual long
    conv of the block input) -> out_linear. No residual connection or norm around it."""

    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        dims = config.hidden_size
        if config.hyena_training_additions:
            # published nn.LayerNorm(d_model): torch's default eps. Its dropout (on v*x1 and
            # before out_linear) is built with rate 0 there, so it is left out here.
            self.layernorm = LayerNorm(dims, eps=1e-5, precision=precision)
        self.in_linear = Linear(dims, 3 * dims, precision=precision)
        self.out_linear = Linear(dims, dims, precision=precision)
        self.short_filter = DepthwiseConv1d(3 * dims, kernel_size=3, precision=precision)
        self.filter_fn = HyenaFilter(config, precision)
        if config.residual_long_conv:
            self.filter_fn2 = HyenaFilter(config, precision)

    def __call__(self, hidden: ops.Activation) -> ops.Activation:
        dims = hidden.shape[-1]
        if "layernorm" in self:
            hidden = self.layernorm(hidden)
        hidden, residual = ops.fork(hidden, 2) if "filter_fn2" in self else (hidden, None)
        mixed = self.short_filter(self.in_linear(hidden).transpose(0, 2, 1))  # (B, 3H, L)
        x1, x2, v = mixed[:, :dims], mixed[:, dims : 2 * dims], mixed[:, 2 * dims :]
        y = self.filter_fn(v * x1) * x2
        if residual is not None:
            y = y + self.filter_fn2(residual.transpose(0, 2, 1))
        return self.out_linear(y.transpose(0, 2, 1))


class GatedLinearUnitMLP(nn.Module):
    """LayerNorm(wo(GELU(a) * b) + residual) with [a, b] = gated_layers(x)."""

    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        dims, inner = config.hidden_size, config.intermediate_size
        self.intermediate_size = inner
        if config.use_monarch_mlp:
            nblocks = config.monarch_mlp_nblocks
            self.gated_layers = BlockdiagLinear(dims, 2 * inner, nblocks, False, precision)
            self.wo = BlockdiagLinear(inner, dims, nblocks, True, precision)
        else:
            self.gated_layers = Linear(dims, 2 * inner, bias=False, precision=precision)
            self.wo = Linear(inner, dims, precision=precision)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = LayerNorm(dims, eps=config.layer_norm_eps, precision=precision)
        # The Monarch MLP's activations block-major (``_blocked_output``, the same bits);
        # m2bert.trace turns it off to see gated_layers and wo as module calls.
        self.block_major = True

    def __call__(self, hidden: ops.Activation) -> ops.Activation:
        hidden, residual = ops.fork(hidden, 2)
        if self._blocked(hidden):
            return self.layernorm(self._blocked_output(hidden, residual))
        gate_and_value = self.gated_layers(hidden)
        gated = gate_and_value[..., : self.intermediate_size]
        value = gate_and_value[..., self.intermediate_size :]
        out = self.wo(self.dropout(ops.gelu_product(gated, value)))
        return self.layernorm(out + residual)

    def _blocked(self, hidden: ops.Activation) -> bool:
        """Whether the Monarch MLP runs block-major (``_blocked_output``): float32,
        extended and dd with an even block count, where the gate is the first half of
        the gated_layers blocks and the value the second, and wo's blocks split evenly
        over those halves' blocks."""
        if not (
            self.block_major
            and isinstance(self.gated_layers, BlockdiagLinear)
            and not isinstance(hidden, ops.Pair)
        ):
            return False
        nblocks = self.gated_layers.weight.shape[0]
        return nblocks % 2 == 0 and self.wo.weight.shape[0] % (nblocks // 2) == 0

    def _blocked_output(self, hidden: mx.array, residual: mx.array) -> mx.array:
        """``wo(GELU(a) * b) + residual`` with the activations kept block-major
        (``ops.blockdiag_blocks``): the gate and value are contiguous halves of the
        gated_layers output, not strided column slices of it re-copied to feature order;
        wo reads its input blocks in place, as column slices of those halves, and its
        output meets the residual in the addition instead of a copy first. The same
        products, sums and elementwise operations as feature-major: the same bits."""
        precision = self.gated_layers.precision
        nblocks = self.gated_layers.weight.shape[0]
        gate_and_value = ops.blockdiag_blocks(
            ops.block_rows(hidden, nblocks), self.gated_layers.weight, None, precision
        )  # (nblocks, R, 2 inner / nblocks)
        half = nblocks // 2
        gated_value = self.dropout(
            ops.gelu_product(gate_and_value[:half], gate_and_value[half:])
        )  # (half, R, 2 inner / nblocks)
        # Block j of gated_value holds wo's input blocks j * per + s, s = 0 .. per - 1,
        # side by side: one product per s over the blocks j, reading column slices.
        wo_blocks, wo_out_block, wo_in_block = self.wo.weight.shape
        per = wo_blocks // half
        bias = self.wo.get("bias")
        bias_blocks = None if bias is None else bias.reshape(wo_blocks, wo_out_block)
        products = [
            ops.blockdiag_blocks(
                gated_value[..., s * wo_in_block : (s + 1) * wo_in_block],
                self.wo.weight[s::per],
                None if bias is None else bias_blocks[s::per].reshape(-1),
                self.wo.precision,
            )
            for s in range(per)
        ]  # product s: (half, R, out_block), wo's output blocks j * per + s
        out = mx.stack(products, axis=1).reshape(wo_blocks, -1, wo_out_block)
        feature_major = out.transpose(1, 0, 2)  # (R, nblocks, out_block), a view
        return (feature_major + residual.reshape(feature_major.shape)).reshape(residual.shape)


class BertLayer(nn.Module):
    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.attention = MonarchMixerSequenceMixing(config, precision)
        self.mlp = GatedLinearUnitMLP(config, precision)

    def __call__(self, hidden: ops.Activation) -> ops.Activation:
        return self.mlp(self.attention(hidden))


class BertEmbeddings(nn.Module):
    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.use_positional_encodings:
            self.position_embeddings = nn.Embedding(
                config.max_position_embeddings, config.hidden_size
            )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.precision = ops.check_precision(precision)
        self.LayerNorm = LayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, precision=precision
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def __call__(
        self,
        token_ids: mx.array,
        token_type_ids: mx.array,
        word_table: Optional[ops.Activation] = None,
    ) -> ops.Activation:
        """``word_table``: the word-embedding matrix as a pair forked by a head that ties
        it (``"exact"``); by default this module's own."""
        if self.precision == "exact":
            # Pair lookups: each table's gradient sums the rows of an id in double.
            if word_table is None:
                word_table = self.word_embeddings.weight
            summed = pair.add(
                pair.take_rows(word_table, token_ids),
                pair.take_rows(self.token_type_embeddings.weight, token_type_ids),
            )
        else:
            summed = self.word_embeddings(token_ids) + self._token_types(token_type_ids)
        if "position_embeddings" in self:
            positions = mx.arange(token_ids.shape[1], dtype=mx.int32)
            summed = summed + self.position_embeddings(positions)[None]
        return self.dropout(self.LayerNorm(summed))

    def _token_types(self, token_type_ids: mx.array) -> mx.array:
        """The token-type rows. In "extended" and "dd" as one-hot rows times the table,
        which selects the same values exactly, so that the table's gradient (a sum over
        every position of the batch into type_vocab_size rows) is the correctly rounded
        product's, not a float32 scatter-add."""
        table = self.token_type_embeddings.weight
        if self.precision not in ("extended", "dd"):
            return self.token_type_embeddings(token_type_ids)
        types = mx.arange(table.shape[0], dtype=mx.int32)
        one_hot = (token_type_ids[..., None] == types).astype(mx.float32)
        return mlx_precise.linear(one_hot, table.T, precision=self.precision)


class BertEncoder(nn.Module):
    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.layer = [BertLayer(config, precision) for _ in range(config.num_hidden_layers)]

    def __call__(self, hidden: ops.Activation) -> ops.Activation:
        for layer in self.layer:
            hidden = layer(hidden)
        return hidden


class BertPooler(nn.Module):
    """tanh(dense(first hidden state)), or with ``pool_all`` tanh(dense(mean of the hidden
    states where attention_mask is 1))."""

    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.pool_all = config.pool_all
        self.dense = Linear(config.hidden_size, config.hidden_size, precision=precision)

    def __call__(self, hidden: ops.Activation, attention_mask: mx.array) -> ops.Activation:
        if not self.pool_all:
            return ops.tanh(self.dense(hidden[:, 0]))
        if isinstance(hidden, ops.Pair):
            raise ValueError(
                "pool_all is not implemented for precision='exact': use 'extended' or 'dd'"
            )
        mask = attention_mask.astype(mx.float32)
        mean = mx.sum(hidden * mask[..., None], axis=1) / mx.sum(mask, axis=1, keepdims=True)
        return mx.tanh(self.dense(mean))


TokenIds = Union[mx.array, Sequence[Sequence[int]]]

# Buffers of the published model (registered with lr=0.0): loaded, never trained.
FROZEN_BUFFERS = ("t", "deltas")


class M2BertPreTrainedModel(nn.Module):
    """What every M2-BERT model class shares: one precision for all layers, eval mode after
    construction (as HF's from_pretrained; ``model.train()`` turns dropout on), and the
    published buffers frozen."""

    def _finish_construction(self) -> None:
        self.eval()
        for _, module in self.named_modules():
            for name in FROZEN_BUFFERS:
                if name in module and isinstance(module[name], mx.array):
                    module.freeze(keys=[name], recurse=False)

    def train(self, mode: bool = True) -> "M2BertPreTrainedModel":
        if mode and self.precision == "exact":
            raise ValueError(
                "precision 'exact' has no dropout on pairs, so no train mode: take its "
                "gradients in eval mode (mx.grad works), or train in 'float32', 'extended' "
                "or 'dd'"
            )
        return super().train(mode)

    def set_precision(self, precision: str) -> "M2BertPreTrainedModel":
        """Switch every layer of the model to ``precision``; returns the model."""
        ops.check_precision(precision)
        if precision == "exact" and self.training:
            raise ValueError(
                "precision 'exact' has no dropout on pairs, so no train mode: call "
                "model.eval() first"
            )
        for _, module in self.named_modules():
            if "precision" in module.__dict__:
                module.precision = precision
        return self


class M2BertModel(M2BertPreTrainedModel):
    """M2-BERT encoder with pooler (the published ``BertModel``). Load a checkpoint
    (``checkpoint.load_model``) or assign a state dict (``checkpoint.load_state_dict``):
    the initial weights are placeholders, not the published initialisation."""

    def __init__(
        self, config: M2BertConfig, precision: str = "float32", add_pooling_layer: bool = True
    ):
        super().__init__()
        self.config = config
        self.precision = ops.check_precision(precision)
        self.embeddings = BertEmbeddings(config, precision)
        self.encoder = BertEncoder(config, precision)
        if add_pooling_layer:
            self.pooler = BertPooler(config, precision)
        self._finish_construction()

    def _token_array(self, token_ids: TokenIds, name: str) -> mx.array:
        ids = token_ids if isinstance(token_ids, mx.array) else mx.array(token_ids)
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D (batch, length), got shape {ids.shape}")
        if not mx.issubdtype(ids.dtype, mx.integer) and ids.dtype != mx.bool_:
            raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
        if ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"{name} has length {ids.shape[1]}; this model takes at most "
                f"{self.config.max_length} tokens: truncate the input"
            )
        return ids.astype(mx.int32)

    def _optional_array(self, values: Optional[TokenIds], name: str, like: mx.array, fill: int):
        if values is None:
            return mx.full(like.shape, fill, dtype=mx.int32)
        array = self._token_array(values, name)
        if array.shape != like.shape:
            raise ValueError(f"{name} shape {array.shape} differs from token_ids {like.shape}")
        return array

    def __call__(
        self,
        token_ids: TokenIds,
        token_type_ids: Optional[TokenIds] = None,
        attention_mask: Optional[TokenIds] = None,
    ) -> Tuple[mx.array, Optional[mx.array]]:
        """Returns (last hidden state ``(B, L, H)``, pooled ``(B, H)`` or None without a
        pooler).

        Like the reference, the encoder takes no attention mask: pad tokens take part in the
        long convolutions, so pad inputs to ``config.max_length`` to match it. The mask
        (default all ones) only selects the positions that ``pool_all`` averages."""
        hidden, pooled = self.unrounded(token_ids, token_type_ids, attention_mask)
        return ops.to_float32(hidden), None if pooled is None else ops.to_float32(pooled)

    def unrounded(
        self,
        token_ids: TokenIds,
        token_type_ids: Optional[TokenIds] = None,
        attention_mask: Optional[TokenIds] = None,
        word_table: Optional[ops.Activation] = None,
    ) -> Tuple[ops.Activation, Optional[ops.Activation]]:
        """``__call__`` without the final rounding: pairs in ``"exact"`` (for a head to
        round once, after itself), float32 arrays otherwise. ``word_table``: see
        ``BertEmbeddings``."""
        ids = self._token_array(token_ids, "token_ids")
        types = self._optional_array(token_type_ids, "token_type_ids", ids, 0)
        mask = self._optional_array(attention_mask, "attention_mask", ids, 1)
        hidden = self.encoder(self.embeddings(ids, types, word_table))
        pooled = self.pooler(hidden, mask) if "pooler" in self else None
        return hidden, pooled

    def embed(
        self,
        texts: Union[str, Sequence[str]],
        tokenizer,
        padding: str = "max_length",
        truncation: str = "keep_sep",
        batch_size: int = 8,
    ) -> mx.array:
        """Sentence embeddings of strings: ``(len(texts), H)``, or ``(H,)`` for one string.

        ``tokenizer``: a ``tokenizers.Tokenizer`` (bert-base-uncased for the published
        checkpoints). ``padding="max_length"`` pads every text to ``config.max_length``
        as the published inference does, which the embeddings depend on (the long
        convolutions see the padding); ``"longest"`` pads to the batch's longest text,
        which is faster and gives other embeddings (docs/m2bert.md). ``truncation``:
        ``"keep_sep"`` (Hugging Face's, [SEP] kept) or ``"published"``
        (embeddings_inference.py: the first max_length tokens, no final [SEP])."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch or not all(isinstance(text, str) for text in batch):
            raise TypeError("texts must be a string or a non-empty sequence of strings")
        rows = []
        for start in range(0, len(batch), batch_size):
            ids, mask = token_batch(
                tokenizer, batch[start : start + batch_size], self.config.max_length,
                self.config.pad_token_id, padding, truncation,
            )
            rows.append(self.encode(mx.array(ids, dtype=mx.int32), mx.array(mask, dtype=mx.int32)))
        embeddings = mx.concatenate(rows, axis=0)
        return embeddings[0] if isinstance(texts, str) else embeddings

    def encode(self, token_ids: TokenIds, attention_mask: Optional[TokenIds] = None) -> mx.array:
        """Sentence embeddings ``(B, H)``: the pooler output."""
        if "pooler" not in self:
            raise ValueError("this model has no pooler (built with add_pooling_layer=False)")
        return self(token_ids, attention_mask=attention_mask)[1]
