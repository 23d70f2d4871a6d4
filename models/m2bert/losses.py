"""Retrieval losses for fine-tuning sentence embeddings, with sentence-transformers'
definitions (``MultipleNegativesRankingLoss``, ``ContrastiveLoss``), float32.

- ``multiple_negatives_ranking_loss``: in-batch softmax. Row i of the anchors should be
  most similar to row i of the positives; every other positive in the batch (and every
  extra hard negative) is a negative. Cross-entropy of the scaled cosine similarities.
- ``contrastive_loss``: pairs with a 0/1 label; cosine distance pulled to 0 for similar
  pairs and pushed beyond ``margin`` for dissimilar ones.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

_HALF = mx.array(0.5, dtype=mx.float32)
_ONE = mx.array(1.0, dtype=mx.float32)
_ZERO = mx.array(0.0, dtype=mx.float32)
# torch.nn.functional.normalize's eps, which sentence-transformers' cos_sim uses
_NORM_EPS = mx.array(1e-12, dtype=mx.float32)


def _unit_rows(x: mx.array) -> mx.array:
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)


def cosine_similarity_matrix(a: mx.array, b: mx.array) -> mx.array:
    """``(len(a), len(b))`` cosine similarities of the rows."""
    return _unit_rows(a) @ _unit_rows(b).T


def multiple_negatives_ranking_loss(
    anchors: mx.array,
    positives: mx.array,
    negatives: Optional[mx.array] = None,
    scale: float = 20.0,
) -> mx.array:
    """Mean over anchors of ``-log softmax(scale * cos(anchor_i, candidates))[i]`` with
    candidates = positives, then negatives (rows ``(N, H)`` each)."""
    if anchors.shape != positives.shape:
        raise ValueError(
            f"anchors {anchors.shape} and positives {positives.shape} must pair row by row"
        )
    candidates = positives if negatives is None else mx.concatenate([positives, negatives])
    scores = cosine_similarity_matrix(anchors, candidates) * mx.array(scale, dtype=mx.float32)
    targets = mx.arange(anchors.shape[0], dtype=mx.int32)
    return nn.losses.cross_entropy(scores, targets, reduction="mean")


def contrastive_loss(
    a: mx.array, b: mx.array, labels: mx.array, margin: float = 0.5
) -> mx.array:
    """Mean over pairs of ``0.5 (y d^2 + (1 - y) max(margin - d, 0)^2)`` with the cosine
    distance ``d = 1 - cos(a_i, b_i)`` and labels ``y`` in {0, 1}."""
    if a.shape != b.shape or labels.shape != a.shape[:1]:
        raise ValueError(
            f"a {a.shape}, b {b.shape} and labels {labels.shape} must hold one pair per row"
        )
    distance = _ONE - mx.sum(_unit_rows(a) * _unit_rows(b), axis=-1)
    similar = labels.astype(mx.float32)
    apart = mx.maximum(mx.array(margin, dtype=mx.float32) - distance, _ZERO)
    per_pair = _HALF * (similar * distance * distance + (_ONE - similar) * apart * apart)
    return mx.mean(per_pair)
