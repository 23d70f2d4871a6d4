"""Fine-tuning an M2-BERT encoder on text pairs with a retrieval loss (losses.py):
a small loop with ``mlx.optimizers.AdamW`` (torch's AdamW: bias-corrected moments,
decoupled weight decay) and a tqdm progress bar. ``python -m m2bert finetune`` runs it.

The pair file is UTF-8 text, one pair per line, tab-separated: ``anchor<TAB>positive``
for the multiple-negatives ranking loss, ``text<TAB>text<TAB>label`` (label 0 or 1) for
the contrastive loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from .losses import contrastive_loss, multiple_negatives_ranking_loss
from .model import M2BertModel, M2BertPreTrainedModel
from .text import token_batch

LOSSES = ("mnrl", "contrastive")


@dataclass
class Pairs:
    first: List[str]
    second: List[str]
    labels: Optional[List[int]]  # contrastive only


def read_pairs(path: Path, loss: str) -> Pairs:
    """The pairs of a tab-separated file; a malformed line is an error naming it."""
    fields = 2 if loss == "mnrl" else 3
    first, second, labels = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != fields or not all(part.strip() for part in parts[:2]):
                layout = "anchor<TAB>positive" if loss == "mnrl" else "text<TAB>text<TAB>0|1"
                raise ValueError(f"{path}: line {number} is not '{layout}' ({loss} loss)")
            if loss == "contrastive":
                if parts[2].strip() not in ("0", "1"):
                    raise ValueError(f"{path}: line {number}: the label must be 0 or 1")
                labels.append(int(parts[2]))
            first.append(parts[0])
            second.append(parts[1])
    if len(first) < 2:
        raise ValueError(f"{path} holds {len(first)} pairs; fine-tuning needs at least 2")
    return Pairs(first, second, labels if loss == "contrastive" else None)


def encoder_of(model: M2BertPreTrainedModel) -> M2BertModel:
    """The encoder (with its pooler) of a model loaded with any published architecture."""
    return model if isinstance(model, M2BertModel) else model.bert


def finetune(
    model: M2BertPreTrainedModel,
    tokenizer,
    pairs: Pairs,
    loss: str = "mnrl",
    epochs: int = 1,
    batch_size: int = 8,
    learning_rate: float = 2e-5,
    weight_decay: float = 0.01,
    padding: str = "max_length",
    truncation: str = "keep_sep",
    seed: int = 0,
    progress: bool = True,
) -> List[float]:
    """Train ``model`` in place (train mode, then back to eval) on ``pairs``, shuffled
    each epoch with ``seed``; returns the loss of every step."""
    from tqdm import tqdm

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    encoder = encoder_of(model)
    config = encoder.config

    def embed(texts: Sequence[str]) -> mx.array:
        ids, mask = token_batch(
            tokenizer, texts, config.max_length, config.pad_token_id, padding, truncation
        )
        return encoder.encode(mx.array(ids, dtype=mx.int32), mx.array(mask, dtype=mx.int32))

    def batch_loss(first: Sequence[str], second: Sequence[str], labels) -> mx.array:
        if loss == "mnrl":
            return multiple_negatives_ranking_loss(embed(first), embed(second))
        return contrastive_loss(embed(first), embed(second), labels)

    optimizer = optim.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, bias_correction=True
    )
    step = nn.value_and_grad(model, batch_loss)
    rng = np.random.default_rng(seed)
    losses: List[float] = []
    steps_per_epoch = -(-len(pairs.first) // batch_size)
    model.train()
    try:
        with tqdm(total=epochs * steps_per_epoch, unit="step", disable=not progress) as bar:
            for _ in range(epochs):
                order = rng.permutation(len(pairs.first))
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size].tolist()
                    labels = None if pairs.labels is None else mx.array(
                        [pairs.labels[row] for row in rows], dtype=mx.int32
                    )
                    value, grads = step(
                        [pairs.first[row] for row in rows],
                        [pairs.second[row] for row in rows],
                        labels,
                    )
                    optimizer.update(model, grads)
                    mx.eval(model.parameters(), optimizer.state, value)
                    losses.append(value.item())
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    bar.update(1)
    finally:
        model.eval()
    return losses
