"""Checkpoint I/O with the published M2-BERT parameter names.

Reads ``pytorch_model.bin`` and Composer ``.pt`` files (``state.model``) without torch and
without running pickled code, ``.safetensors`` (published names, or this package's
converted copy), directories holding ``config.json`` plus one of those, and Hugging Face
Hub repositories (``download_from_hub``). Every file is validated before any tensor is
materialised (tensor_files.py). float16 and bfloat16 tensors are widened to float32 once,
at read time; float64 ones only when float32 holds them exactly.

Name mapping (published -> this model):
- prefixes ``model.bert.``, ``bert.`` and ``model.`` are dropped;
- ``embeddings.position_ids`` (and ``embeddings.token_type_ids`` if present) are buffers
  the model recomputes: they are checked to hold arange / zeros and dropped;
- ``...filter_fn{,2}.implicit_filter{,_rev}.{1,3,5}.freq`` are one shared parameter in
  the published model (one ``Sin`` object), saved under every alias: they must agree
  and become ``...filter_fn{,2}.sin_freq``.
Everything else keeps its published name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Union

import mlx.core as mx
from mlx.utils import tree_flatten

from .config import M2BertConfig, read_config_json
from .heads import architecture_class, architecture_name
from .model import M2BertModel, M2BertPreTrainedModel
from .tensor_files import CheckpointError, read_tensors_file

PathLike = Union[str, os.PathLike]

_PREFIXES = ("model.bert.", "bert.", "model.")
_SIN_FREQ_ALIAS = re.compile(r"^(.*\.filter_fn2?)\.implicit_filter(?:_rev)?\.\d+\.freq$")
_RECOMPUTED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def read_tensors(path: PathLike) -> Dict[str, mx.array]:
    """Name -> array from a ``.safetensors`` file, a torch ``.bin``/``.pt``/``.pth`` state
    dict or a Composer checkpoint (its ``state.model``); floats as float32."""
    path = Path(path)
    if path.suffix == ".safetensors" or path.suffix in _TORCH_SUFFIXES:
        return read_tensors_file(path)
    raise CheckpointError(
        f"unknown checkpoint format {path.name!r}: pass a .safetensors or .bin file, or a "
        f"directory with {CONFIG_FILE} and one of {WEIGHT_FILES}"
    )


def _strip_prefix(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _check_recomputed_buffer(name: str, value: mx.array) -> None:
    flat = value.reshape(-1)
    expected = (
        mx.arange(flat.size, dtype=flat.dtype) if name.endswith("position_ids")
        else mx.zeros(flat.shape, dtype=flat.dtype)
    )
    if not mx.array_equal(flat, expected).item():
        raise CheckpointError(
            f"{name} does not hold the values the model recomputes "
            f"({'arange' if name.endswith('position_ids') else 'zeros'}); this port does "
            f"not support custom position or token-type ids"
        )


def to_model_names(tensors: Dict[str, mx.array]) -> Dict[str, mx.array]:
    """Apply the published -> model name mapping of the module docstring."""
    renamed: Dict[str, mx.array] = {}
    freq_sources: Dict[str, str] = {}
    for original, value in tensors.items():
        name = _strip_prefix(original)
        if name in _RECOMPUTED_BUFFERS:
            _check_recomputed_buffer(original, value)
            continue
        alias = _SIN_FREQ_ALIAS.match(name)
        if alias:
            name = f"{alias.group(1)}.sin_freq"
            if name in renamed:
                if not mx.array_equal(renamed[name], value).item():
                    raise CheckpointError(
                        f"{original} differs from {freq_sources[name]}: the published model "
                        f"shares one Sin frequency per filter, so they must be equal"
                    )
                continue
            freq_sources[name] = original
        elif name in renamed:
            raise CheckpointError(f"{original} appears twice (with and without a prefix)")
        renamed[name] = value
    return renamed


_HEAD_PREFIXES = ("cls.", "classifier.")
_TIED_DECODER = "cls.predictions.decoder.weight"
_WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def to_head_model_names(tensors: Dict[str, mx.array]) -> Dict[str, mx.array]:
    """Names of a model with a task head (``bert.`` + encoder, ``cls.`` / ``classifier.``):
    the encoder's tensors, with or without the ``model.`` / ``bert.`` prefixes, are mapped
    as ``to_model_names`` does; the tied decoder weight, saved by torch beside the word
    embeddings it shares, must equal them and is dropped."""
    encoder: Dict[str, mx.array] = {}
    state: Dict[str, mx.array] = {}
    for name, value in tensors.items():
        bare = name[len("model.") :] if name.startswith("model.") else name
        (state if bare.startswith(_HEAD_PREFIXES) else encoder)[bare] = value
    state.update({f"bert.{name}": value for name, value in to_model_names(encoder).items()})
    tied = state.pop(_TIED_DECODER, None)
    if tied is not None and _WORD_EMBEDDINGS in state and not (
        tied.shape == state[_WORD_EMBEDDINGS].shape
        and mx.array_equal(tied, state[_WORD_EMBEDDINGS]).item()
    ):
        raise CheckpointError(
            f"{_TIED_DECODER} differs from {_WORD_EMBEDDINGS}: the published masked-LM head "
            f"ties them, so they must be equal"
        )
    return state


def load_state_dict(model: M2BertPreTrainedModel, tensors: Dict[str, mx.array]) -> None:
    """Assign published-name (or model-name) tensors to ``model``; every parameter must
    be present with its shape and nothing may be left over."""
    if isinstance(model, M2BertModel):
        state = to_model_names(tensors)
    else:
        state = to_head_model_names(tensors)
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shapes = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    not_float = [
        f"{name}: {state[name].dtype}"
        for name in sorted(set(state) & set(expected))
        if state[name].dtype != mx.float32
    ]
    problems: List[str] = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if wrong_shapes:
        problems.append("shape mismatches: " + "; ".join(wrong_shapes))
    if not_float:
        problems.append("non-floating parameters: " + "; ".join(not_float))
    if problems:
        raise CheckpointError(
            "checkpoint does not match the M2-BERT config:\n  " + "\n  ".join(problems)
        )
    model.load_weights(list(state.items()), strict=True)
    mx.eval(model.parameters())


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    for candidate in WEIGHT_FILES:
        if (path / candidate).is_file():
            return path / candidate
    raise CheckpointError(f"{path} holds none of {WEIGHT_FILES}")


def download_from_hub(name: str, revision: Optional[str] = None) -> Path:
    """The local directory of Hugging Face Hub repository ``name`` (``org/model``) holding
    its config.json and weights, through ``huggingface_hub.snapshot_download`` with only
    those files allowed: downloaded into the Hub cache unless there already, read from the
    cache alone with HF_HUB_OFFLINE=1."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(
            "--from-hub needs huggingface_hub: pip install huggingface_hub"
        ) from None
    try:
        directory = Path(snapshot_download(
            repo_id=name, revision=revision, allow_patterns=[CONFIG_FILE, *WEIGHT_FILES]
        ))
    except HFValidationError as error:
        raise CheckpointError(
            f"{name!r} is not a Hub repository name (org/model): {error}"
        ) from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{name} is not in the Hugging Face cache and could not be downloaded (offline, "
            f"or HF_HUB_OFFLINE=1): connect, or download it once with network access"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise CheckpointError(f"Hub repository {name}: {error}") from None
    if not (directory / CONFIG_FILE).is_file() or not any(
        (directory / weights).is_file() for weights in WEIGHT_FILES
    ):
        raise CheckpointError(
            f"Hub repository {name} ({directory}) lacks {CONFIG_FILE} or all of "
            f"{WEIGHT_FILES}: it is not an M2-BERT checkpoint in a format this port reads"
        )
    return directory


def _architecture_in(config_file: Path) -> str:
    """The first of config.json's ``architectures`` (HF's choice), else ``BertModel``."""
    names = read_config_json(config_file).get("architectures") or ["BertModel"]
    if not isinstance(names, list) or not isinstance(names[0], str):
        raise CheckpointError(f"{config_file}: architectures must be a list of class names")
    return names[0]


def load_model(
    path: PathLike,
    precision: str = "float32",
    config: Optional[M2BertConfig] = None,
    architecture: Optional[str] = None,
) -> M2BertPreTrainedModel:
    """Build a model from a checkpoint directory (config.json plus model.safetensors or
    pytorch_model.bin) or a weights file; the config comes from ``config`` or else the
    config.json beside the weights. The class is ``architecture`` if given (``BertModel``,
    ``BertForMaskedLM``, ``BertForSequenceClassification``), else the first of
    config.json's ``architectures``, else ``BertModel``."""
    weights = _weights_file(Path(path))
    config_file = weights.parent / CONFIG_FILE
    if config is None:
        if not config_file.is_file():
            raise CheckpointError(
                f"no {CONFIG_FILE} beside {weights}: put the model's config.json there or "
                f"pass config=M2BertConfig(...)"
            )
        config = M2BertConfig.from_json(config_file)
    if architecture is None:
        architecture = _architecture_in(config_file) if config_file.is_file() else "BertModel"
    model = architecture_class(architecture)(config, precision=precision)
    load_state_dict(model, read_tensors(weights))
    return model


def save_model(model: M2BertModel, directory: PathLike) -> Path:
    """Write ``model.safetensors`` (float32, model names) and ``config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHT_FILES[0]
    mx.save_safetensors(str(weights), dict(tree_flatten(model.parameters())))
    with open(directory / CONFIG_FILE, "w", encoding="utf-8") as handle:
        values = model.config.to_dict()
        values["architectures"] = [architecture_name(model)]
        json.dump(values, handle, indent=2, sort_keys=True)
    return weights
