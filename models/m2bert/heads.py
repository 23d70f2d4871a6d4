"""Task heads of the published ``bert_layers.py``, with its module and parameter names.

- ``M2BertForMaskedLM`` (``BertForMaskedLM``): ``bert`` (no pooler) and
  ``cls.predictions.{transform.dense, transform.LayerNorm, decoder}``; the decoder's weight
  is the word-embedding matrix (tied), so only ``cls.predictions.decoder.bias`` is its own.
- ``M2BertForSequenceClassification`` (``BertForSequenceClassification``): ``bert`` (with
  pooler), ``dropout``, ``classifier``; regression (``num_labels == 1``), single- and
  multi-label classification; or, with ``gather_sentence_embeddings``, the sentence
  embedding the retrieval checkpoints return.

``ARCHITECTURES`` maps the class names that ``config.json``'s ``architectures`` holds to
these classes, as Hugging Face's auto classes do.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import mlx_precise
from mlx_precise import pair
from mlx_precise.nn import LayerNorm, Linear

from . import ops
from .config import M2BertConfig
from .model import M2BertModel, M2BertPreTrainedModel, TokenIds

# torch.nn.functional.normalize's default eps
_NORMALIZE_EPS = mx.array(1e-12, dtype=mx.float32)


class BertPredictionHeadTransform(nn.Module):
    """dense -> GELU -> LayerNorm(eps=1e-12, fixed in the published code)."""

    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, precision=precision)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=1e-12, precision=precision)

    def __call__(self, hidden: mx.array) -> mx.array:
        return self.LayerNorm(ops.gelu(self.dense(hidden)))


class TiedDecoder(nn.Module):
    """``nn.Linear(hidden, vocab)`` whose weight is the word-embedding matrix: holds only
    the output bias, and takes the weight at call time."""

    def __init__(self, vocab_size: int, precision: str):
        super().__init__()
        self.precision = ops.check_precision(precision)
        self.bias = mx.zeros((vocab_size,), dtype=mx.float32)

    def __call__(self, hidden: ops.Activation, weight: ops.Activation) -> ops.Activation:
        if self.precision == "exact":
            return pair.linear(hidden, weight, self.bias)  # weight: the forked pair
        return mlx_precise.linear(hidden, weight, self.bias, precision=self.precision)


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config, precision)
        self.decoder = TiedDecoder(config.vocab_size, precision)

    def __call__(self, hidden: mx.array, embedding_weight: mx.array) -> mx.array:
        return self.decoder(self.transform(hidden), embedding_weight)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: M2BertConfig, precision: str):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, precision)


def masked_token_cross_entropy(logits: ops.Activation, labels: mx.array) -> mx.array:
    """Mean cross-entropy over the positions whose label is > 0: the published masked-LM
    loss selects ``labels > 0`` (so label 0, [PAD], is never a target). Pair logits
    (``"exact"``): computed in double and rounded once (``mlx_precise.pair``)."""
    mask = (labels > 0).astype(mx.float32)
    targets = mx.maximum(labels, 0)
    if isinstance(logits, ops.Pair):
        classes = logits.shape[-1]
        return pair.cross_entropy(
            logits.reshape(-1, classes), targets.reshape(-1), mask.reshape(-1)
        ).to_float32()
    per_token = nn.losses.cross_entropy(logits, targets, reduction="none")
    return mx.sum(per_token * mask) / mx.sum(mask)


class M2BertForMaskedLM(M2BertPreTrainedModel):
    """The published ``BertForMaskedLM``: encoder without pooler and the prediction head
    with the word embeddings as decoder weight."""

    def __init__(self, config: M2BertConfig, precision: str = "float32"):
        super().__init__()
        self.config = config
        self.precision = ops.check_precision(precision)
        self.bert = M2BertModel(config, precision, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, precision)
        self._finish_construction()

    def __call__(
        self, token_ids: TokenIds, token_type_ids: Optional[TokenIds] = None
    ) -> mx.array:
        """Prediction scores ``(B, L, vocab)`` for every position."""
        return ops.to_float32(self.unrounded(token_ids, token_type_ids))

    def unrounded(
        self, token_ids: TokenIds, token_type_ids: Optional[TokenIds] = None
    ) -> ops.Activation:
        """The scores without the final rounding (pairs in ``"exact"``). The word-embedding
        matrix is both the lookup table and the decoder weight: in ``"exact"`` it enters
        as one pair forked between the two, so that its gradient adds both uses in
        double and rounds once."""
        weight = self.bert.embeddings.word_embeddings.weight
        lookup_table = None
        if self.precision == "exact":
            lookup_table, weight = pair.fork(weight, 2)
        hidden, _ = self.bert.unrounded(token_ids, token_type_ids, word_table=lookup_table)
        return self.cls.predictions(hidden, weight)

    def loss(
        self, token_ids: TokenIds, labels: TokenIds, token_type_ids: Optional[TokenIds] = None
    ) -> mx.array:
        """Masked-LM loss: cross-entropy at the positions with ``labels > 0`` (the masked
        tokens' ids there, 0 or -100 elsewhere), averaged over them."""
        labels = self.bert._token_array(labels, "labels")
        logits = self.unrounded(token_ids, token_type_ids)
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels shape {labels.shape} differs from token_ids {logits.shape[:2]}")
        return masked_token_cross_entropy(logits, labels)


def l2_normalize(x: mx.array) -> mx.array:
    """torch ``F.normalize(x, p=2, dim=-1)``: x / max(||x||, 1e-12)."""
    norm = mx.sqrt(mx.sum(x * x, axis=-1, keepdims=True))
    return x / mx.maximum(norm, _NORMALIZE_EPS)


class M2BertForSequenceClassification(M2BertPreTrainedModel):
    """The published ``BertForSequenceClassification``: classifier(dropout(pooled))."""

    def __init__(self, config: M2BertConfig, precision: str = "float32"):
        super().__init__()
        self.config = config
        self.precision = ops.check_precision(precision)
        self.bert = M2BertModel(config, precision)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = Linear(config.hidden_size, config.num_labels, precision=precision)
        self._finish_construction()

    def sentence_embedding(
        self, token_ids: TokenIds, attention_mask: Optional[TokenIds] = None
    ) -> mx.array:
        """The pooled output, L2-normalised with ``use_normalized_embeddings``."""
        pooled = self.bert.encode(token_ids, attention_mask)
        return l2_normalize(pooled) if self.config.use_normalized_embeddings else pooled

    def __call__(
        self,
        token_ids: TokenIds,
        token_type_ids: Optional[TokenIds] = None,
        attention_mask: Optional[TokenIds] = None,
    ) -> mx.array:
        """Logits ``(B, num_labels)``; with ``gather_sentence_embeddings`` the sentence
        embedding ``(B, hidden)`` instead, as published."""
        if self.config.gather_sentence_embeddings:
            return self.sentence_embedding(token_ids, attention_mask)
        _, pooled = self.bert.unrounded(token_ids, token_type_ids, attention_mask)
        return ops.to_float32(self.classifier(self.dropout(pooled)))

    def problem_type(self, labels: mx.array) -> str:
        """config.problem_type, or HF's inference: one label -> regression, integer labels ->
        single-label classification, else multi-label."""
        if self.config.problem_type:
            return self.config.problem_type
        if self.config.num_labels == 1:
            return "regression"
        if mx.issubdtype(labels.dtype, mx.integer):
            return "single_label_classification"
        return "multi_label_classification"

    def loss(
        self,
        token_ids: TokenIds,
        labels: mx.array,
        token_type_ids: Optional[TokenIds] = None,
        attention_mask: Optional[TokenIds] = None,
    ) -> mx.array:
        """MSE (regression), cross-entropy (single label) or BCE-with-logits (multi-label),
        each averaged as torch's default reduction does."""
        if self.config.gather_sentence_embeddings:
            raise ValueError(
                "gather_sentence_embeddings is set: this model returns embeddings, not logits; "
                "train it with a retrieval loss (m2bert.losses)"
            )
        logits = self(token_ids, token_type_ids, attention_mask)
        kind = self.problem_type(labels)
        if kind == "regression":
            target = labels.astype(mx.float32).reshape(logits.shape)
            return nn.losses.mse_loss(logits, target, reduction="mean")
        if kind == "single_label_classification":
            return nn.losses.cross_entropy(logits, labels.reshape(-1), reduction="mean")
        return nn.losses.binary_cross_entropy(
            logits, labels.astype(mx.float32), with_logits=True, reduction="mean"
        )


# config.json "architectures" -> class (the published class names, as HF's auto classes
# resolve them); the first entry of the list is used.
ARCHITECTURES = {
    "BertModel": M2BertModel,
    "BertForMaskedLM": M2BertForMaskedLM,
    "BertForSequenceClassification": M2BertForSequenceClassification,
}


def architecture_class(name: str):
    if name not in ARCHITECTURES:
        raise ValueError(
            f"architecture {name!r} is not implemented; pass one of {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name]


def architecture_name(model: M2BertPreTrainedModel) -> str:
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"{type(model).__name__} is no published M2-BERT architecture")
