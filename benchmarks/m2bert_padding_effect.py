"""How much an M2-BERT sentence embedding depends on the padding (HazyResearch/m2#43):
the pooled embedding of one text padded to the model's max length (the published
inference) against the same text unpadded (``padding="longest"`` with a batch of one).
Random models with the published initialisation (tests/m2bert_reference.py), float32.

    PYTHONPATH=.:models:tests python benchmarks/m2bert_padding_effect.py
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import torch

from m2bert import M2BertConfig, M2BertModel, load_state_dict
from m2bert_reference import ReferenceM2Bert, as_mx, initialize_

CLS, SEP, PAD, VOCAB = 2, 3, 0, 1000
SETTINGS = [(128, 2, 512), (256, 4, 2048)]  # hidden size, layers, max length
TEXT_TOKENS = (8, 32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    print("| hidden | layers | max length | text tokens | cosine(max_length, longest) |")
    print("|---|---|---|---|---|")
    for hidden, layers, max_length in SETTINGS:
        config = M2BertConfig(
            vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
            intermediate_size=4 * hidden, max_position_embeddings=max_length,
            long_conv_l_max=max_length,
        )
        torch.manual_seed(0)
        model = M2BertModel(config)
        load_state_dict(model, as_mx(initialize_(ReferenceM2Bert(config), 0).state_dict()))
        rng = np.random.default_rng(0)
        for tokens in TEXT_TOKENS:
            ids = [CLS, *rng.integers(5, VOCAB, tokens).tolist(), SEP]
            padded = ids + [PAD] * (max_length - len(ids))
            full = np.asarray(model.encode(mx.array([padded])))[0]
            unpadded = np.asarray(model.encode(mx.array([ids])))[0]
            print(f"| {hidden} | {layers} | {max_length} | {len(ids)} | "
                  f"{cosine(full, unpadded):.2f} |", flush=True)


if __name__ == "__main__":
    main()
