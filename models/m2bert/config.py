"""M2-BERT configuration: the keys of the published ``config.json``.

Values come from HazyResearch/m2 ``bert/yamls/embeddings/m2-bert-80M-*-retrieval.yaml``
and ``bert/src/configuration_bert.py``. Values not stated there are marked GUESSED below;
a checkpoint's ``config.json`` overrides every one of them, and the checkpoint loader
checks every tensor shape against the config, so a wrong guess fails loudly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict

# Options of the published code that select a different architecture than the retrieval
# checkpoints use. The value each must have here, and why the others are refused.
_REQUIRED_SETTINGS = {
    # attention layers (monarch_mixer_sequence_mixing=False) are a different model
    "monarch_mixer_sequence_mixing": True,
    # the non-GLU MLP has other parameter shapes and no released M2 retrieval checkpoint
    "use_glu_mlp": True,
    # adds a LayerNorm and dropout inside the mixer; the retrieval checkpoints set it False
    "hyena_training_additions": False,
    # mean pooling; the retrieval checkpoints pool the first token
    "pool_all": False,
}


@dataclasses.dataclass(frozen=True)
class M2BertConfig:
    """Architecture hyper-parameters (defaults: m2-bert-80M-2k-retrieval)."""

    # GUESSED from the issue text (BERT's 30522 rounded up to a multiple of 64); the
    # checkpoint's word_embeddings shape is checked against it.
    vocab_size: int = 30528
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    # max_position_embeddings == long_conv_l_max in every published config (2048/8192/32768)
    max_position_embeddings: int = 2048
    long_conv_l_max: int = 2048
    # GUESSED: transformers.BertConfig defaults, which the published config inherits.
    type_vocab_size: int = 2
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    # Hyena filter
    hyena_filter_order: int = 128
    hyena_emb_dim: int = 5
    hyena_w: float = 10.0
    hyena_w_mod: float = 1.0
    bidirectional: bool = True
    residual_long_conv: bool = True
    # Monarch MLP
    use_monarch_mlp: bool = True
    monarch_mlp_nblocks: int = 4
    use_positional_encodings: bool = True

    def __post_init__(self):
        if self.hidden_size % self.monarch_mlp_nblocks or (
            self.intermediate_size % self.monarch_mlp_nblocks
        ):
            raise ValueError(
                f"hidden_size ({self.hidden_size}) and intermediate_size "
                f"({self.intermediate_size}) must be multiples of monarch_mlp_nblocks "
                f"({self.monarch_mlp_nblocks})"
            )
        if self.hyena_emb_dim < 3 or self.hyena_emb_dim % 2 == 0:
            raise ValueError(
                f"hyena_emb_dim must be odd and >= 3 (time, cosine and sine bands), got "
                f"{self.hyena_emb_dim}"
            )
        if self.use_positional_encodings and (
            self.max_position_embeddings < self.long_conv_l_max
        ):
            raise ValueError(
                f"max_position_embeddings ({self.max_position_embeddings}) must be at least "
                f"long_conv_l_max ({self.long_conv_l_max})"
            )

    @property
    def max_length(self) -> int:
        """Longest input the model accepts; the reference pads every input to it."""
        if self.use_positional_encodings:
            return min(self.max_position_embeddings, self.long_conv_l_max)
        return self.long_conv_l_max

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "M2BertConfig":
        """Build from a published config.json dict: known keys are used, architecture
        switches this port does not implement are refused, the rest (dropout rates,
        learning rates, HF bookkeeping) do not affect inference and are ignored."""
        for key, required in _REQUIRED_SETTINGS.items():
            if key in values and bool(values[key]) != required:
                raise ValueError(
                    f"config sets {key}={values[key]!r}; this M2-BERT port implements only "
                    f"{key}={required!r} (the published retrieval architecture)"
                )
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "M2BertConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def to_dict(self) -> Dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(_REQUIRED_SETTINGS)
        return values
