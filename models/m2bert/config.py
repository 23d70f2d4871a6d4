"""M2-BERT configuration: the keys of the published ``config.json``.

Values come from HazyResearch/m2 ``bert/yamls/embeddings/m2-bert-80M-*-retrieval.yaml``
and ``bert/src/configuration_bert.py``. Values not stated there are marked GUESSED below;
a checkpoint's ``config.json`` overrides every one of them, and the checkpoint loader
checks every tensor shape against the config, so a wrong guess fails loudly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Tuple

# Options of the published code that select a different architecture than the retrieval
# checkpoints use. The value each must have here, and why the others are refused.
_REQUIRED_SETTINGS = {
    # attention layers (monarch_mixer_sequence_mixing=False) are a different model
    "monarch_mixer_sequence_mixing": True,
    # the non-GLU MLP has other parameter shapes and no released M2 retrieval checkpoint
    "use_glu_mlp": True,
    # the classifier / sentence embedding from the raw first hidden state, bypassing the pooler
    "use_cls_token": False,
    # sums the hidden states of [CLS] tokens planted every 128 positions
    "sequence_token_planting": False,
    # the published AttentionPooler: another pooler with other parameters
    "attention_pooling": False,
}
# config.json keys whose JSON null stands for a value derived from other keys (HF BertConfig)
_NULL_MEANS_DERIVED = ("classifier_dropout", "problem_type")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


# Inclusive bounds of the integer fields: far beyond every published model (80M-341M
# parameters, 128-32768 tokens) and small enough that a typo or a hostile config.json
# fails here instead of building a model of billions of layers. Integer fields not listed
# get _DEFAULT_INT_BOUNDS.
_INT_BOUNDS: Dict[str, Tuple[int, int]] = {
    "vocab_size": (1, 1 << 21),
    "hidden_size": (1, 1 << 14),
    "num_hidden_layers": (1, 256),
    "intermediate_size": (1, 1 << 16),
    "max_position_embeddings": (1, 1 << 20),
    "long_conv_l_max": (1, 1 << 20),
    "type_vocab_size": (1, 1024),
    "pad_token_id": (0, (1 << 21) - 1),
    "hyena_filter_order": (1, 1 << 13),
    "hyena_emb_dim": (3, 1025),
    "monarch_mlp_nblocks": (1, 1 << 12),
    # classifier rows: a sequence classification head has a few to a few thousand classes
    "num_labels": (1, 1 << 16),
}
_DEFAULT_INT_BOUNDS = (0, (1 << 31) - 1)
# Float fields: (lowest, highest, whether the lowest is excluded); every value must be finite.
_FLOAT_BOUNDS: Dict[str, Tuple[float, float, bool]] = {
    # the layer norm divides by sqrt(variance + eps): eps must be positive
    "layer_norm_eps": (0.0, 1.0, True),
    "hyena_w": (-1e6, 1e6, False),
    "hyena_w_mod": (-1e6, 1e6, False),
}
_DEFAULT_FLOAT_BOUNDS = (-math.inf, math.inf, False)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the field."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _checked_value(name: str, annotation: str, value: Any) -> Any:
    """``value`` as the field's type (an integer for a float field becomes a float), or a
    ConfigError naming the field, the expected type and the bounds."""
    if annotation == "bool":
        # bool("false") is True: only JSON true/false are accepted
        if not isinstance(value, bool):
            raise ConfigError(
                f"config field {name} must be a boolean (JSON true or false), got "
                f"{value!r} ({_type_name(value)})"
            )
        return value
    if annotation == "int":
        # JSON 64.0 is a float and True is an int in Python: both are refused
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"config field {name} must be an integer, got {value!r} ({_type_name(value)})"
            )
        low, high = _INT_BOUNDS.get(name, _DEFAULT_INT_BOUNDS)
        if not low <= value <= high:
            raise ConfigError(f"config field {name} must be in [{low}, {high}], got {value}")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"config field {name} must be a number, got {value!r} ({_type_name(value)})"
            )
        value = float(value)
        low, high, low_excluded = _FLOAT_BOUNDS.get(name, _DEFAULT_FLOAT_BOUNDS)
        if not math.isfinite(value) or value > high or value < low or (
            low_excluded and value == low
        ):
            interval = f"{'(' if low_excluded else '['}{low:g}, {high:g}]"
            raise ConfigError(
                f"config field {name} must be a finite number in {interval}, got {value!r}"
            )
        return value
    if annotation == "str":
        if not isinstance(value, str):
            raise ConfigError(
                f"config field {name} must be a string, got {value!r} ({_type_name(value)})"
            )
        return value
    raise TypeError(f"M2BertConfig field {name}: no validation for type {annotation!r}")


_MAX_CONFIG_BYTES = 1 << 20


def unique_keys(pairs):
    """json object_pairs_hook: a key given twice is a ValueError (json keeps the last)."""
    values = {}
    for key, value in pairs:
        if key in values:
            raise ValueError(f"key {key!r} appears twice in one JSON object")
        values[key] = value
    return values


def read_config_json(path: str | os.PathLike) -> Dict[str, Any]:
    """The JSON object in a config.json: at most _MAX_CONFIG_BYTES, UTF-8, no key twice."""
    size = os.path.getsize(path)
    if size > _MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} has {size} bytes; a config.json has a few kB (at most "
            f"{_MAX_CONFIG_BYTES}): pass the model's config.json"
        )
    with open(path, "rb") as handle:
        text = handle.read()
    try:
        values = json.loads(text.decode("utf-8"), object_pairs_hook=unique_keys)
    except ValueError as error:  # not UTF-8, not JSON, or a key given twice
        raise ConfigError(f"{path} is not a valid UTF-8 JSON object: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: a config is a JSON object of field: value pairs, got {_type_name(values)}"
        )
    return values


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
    # A LayerNorm (eps 1e-5) on the mixer's input; its dropout has rate 0 as published
    # (BertLayer passes none to MonarchMixerSequenceMixing).
    hyena_training_additions: bool = False
    # Pooler input: mean of the hidden states where attention_mask is 1 (else the first token).
    pool_all: bool = False
    # Training (model.train()): HF BertConfig defaults.
    hidden_dropout_prob: float = 0.1
    # The published HyenaFilter builds a Dropout with this rate and never applies it
    # (fftconv_ref gets dropout_mask=None), so it changes nothing, here as there.
    hyena_filter_dropout: float = 0.2
    # Heads. classifier_dropout null in config.json means hidden_dropout_prob.
    classifier_dropout: float = 0.1
    num_labels: int = 2
    # "" (config.json null): inferred as HF does, from num_labels and the labels' dtype
    problem_type: str = ""
    # BertPredictionHeadTransform's activation; "gelu" is the exact erf GELU
    hidden_act: str = "gelu"
    # BertForSequenceClassification returns the (optionally L2-normalised) pooled output as
    # the sentence embedding instead of classifier logits (the retrieval checkpoints).
    gather_sentence_embeddings: bool = False
    use_normalized_embeddings: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = _checked_value(field.name, str(field.type), getattr(self, field.name))
            # frozen dataclass: store the checked value (a float field given as 10 becomes 10.0)
            object.__setattr__(self, field.name, value)
        if self.pad_token_id >= self.vocab_size:
            raise ConfigError(
                f"config field pad_token_id ({self.pad_token_id}) must be below vocab_size "
                f"({self.vocab_size})"
            )
        if self.hidden_size % self.monarch_mlp_nblocks or (
            self.intermediate_size % self.monarch_mlp_nblocks
        ):
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) and intermediate_size "
                f"({self.intermediate_size}) must be multiples of monarch_mlp_nblocks "
                f"({self.monarch_mlp_nblocks})"
            )
        if self.hyena_emb_dim % 2 == 0:
            raise ConfigError(
                f"config field hyena_emb_dim must be odd (time, cosine and sine bands), "
                f"got {self.hyena_emb_dim}"
            )
        if self.problem_type not in ("",) + PROBLEM_TYPES:
            raise ValueError(
                f"problem_type must be one of {PROBLEM_TYPES} (or null), got {self.problem_type!r}"
            )
        if self.hidden_act != "gelu":
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not implemented: the published M2-BERT "
                f"uses 'gelu' (exact erf GELU)"
            )
        for name in ("hidden_dropout_prob", "hyena_filter_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.use_positional_encodings and (
            self.max_position_embeddings < self.long_conv_l_max
        ):
            raise ConfigError(
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
        if not isinstance(values, dict):
            raise ConfigError(
                f"a config is a JSON object of field: value pairs, got {_type_name(values)}"
            )
        for key, required in _REQUIRED_SETTINGS.items():
            if key in values and _checked_value(key, "bool", values[key]) != required:
                raise ConfigError(
                    f"config sets {key}={values[key]!r}; this M2-BERT port implements only "
                    f"{key}={required!r} (the published retrieval architecture)"
                )
        values = _derived_values(values)
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "M2BertConfig":
        values = read_config_json(path)
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_dict(self) -> Dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(_REQUIRED_SETTINGS)
        return values


def _derived_values(values: Dict[str, Any]) -> Dict[str, Any]:
    """HF BertConfig conventions: null classifier_dropout is hidden_dropout_prob, null
    problem_type is inferred later, and num_labels is len(id2label) when only that is saved."""
    values = {
        key: value for key, value in values.items()
        if not (key in _NULL_MEANS_DERIVED and value is None)
    }
    if "classifier_dropout" not in values and "hidden_dropout_prob" in values:
        values["classifier_dropout"] = values["hidden_dropout_prob"]
    if "num_labels" not in values and isinstance(values.get("id2label"), dict):
        values["num_labels"] = len(values["id2label"])
    return values
