"""M2-BERT against the published PyTorch model, site by site (``mlx_precise.trace``).

    report = m2bert.trace(torch_model, mlx_model, token_ids, precision="extended")
    print(report.first_divergence(1e-4))

The name map: MLX module names are the published ones (``embeddings.LayerNorm``,
``encoder.layer.3.attention.filter_fn.implicit_filter.2``, ...); a published task model
(``BertForMaskedLM``, ...) is traced through its ``bert``. The published short
convolution pads both ends (``Conv1d(padding=2)``) and the mixer keeps the first L
outputs; its site compares those. Inside every sequence mixer the ops that are no module
call are sites too: ``v*x1``, the Sin activations of both filter MLPs (at their published
indices 1, 3, 5), ``y*x2`` and ``y+yu``; the Linear layers, the modulations (forward
filter, then reverse), the long convolutions (``filter_fn``, ``filter_fn2``) and the
projections are module sites.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import types
from pathlib import Path
from typing import Any, List, Optional, Union

import mlx.core as mx
import numpy as np
from mlx_precise.trace import Call, Captures, OpSite, TraceReport, compare

from .checkpoint import CONFIG_FILE, WEIGHT_FILES, CheckpointError, read_tensors
from .model import M2BertModel

_SIN_INDICES = (1, 3, 5)


def _published_encoder(torch_model):
    """Published task models (BertForMaskedLM, ...) hold the BertModel as ``bert``."""
    return torch_model.bert if hasattr(torch_model, "bert") and \
        not hasattr(torch_model, "embeddings") else torch_model


def name_map(mlx_name: str):
    """MLX module name -> published torch name (the same), with the short convolution's
    output cut to the L outputs the published mixer keeps."""
    if mlx_name.endswith(".short_filter"):
        # Conv1d(kernel_size=3, padding=2): the mixer keeps the first L of L + 2 outputs
        return mlx_name, lambda output: output[..., : output.shape[-1] - 2]
    if mlx_name == "embeddings.position_embeddings":
        # torch looks up position_ids (1, L); MLX looks up arange(L)
        return mlx_name, lambda output: output[0]
    return mlx_name


def _first(calls: dict, name: str) -> Optional[Call]:
    found = calls.get(name)
    return found[0] if found else None


def _as_mlx(tensor) -> mx.array:
    return mx.array(tensor.detach().cpu().float().numpy())


def mixer_op_sites(mlx_model: M2BertModel, captures: Captures) -> List[OpSite]:
    """The op sites inside every sequence mixer (see the module docstring)."""
    sites: List[OpSite] = []
    for index, layer in enumerate(mlx_model.encoder.layer):
        mixer_name = f"encoder.layer.{index}.attention"
        mixer = layer.attention
        mlx_calls = {name: calls for name, calls in captures.mlx.items()
                     if name.startswith(mixer_name + ".")}
        torch_calls = {name: calls for name, calls in captures.torch.items()
                       if name.startswith(mixer_name + ".")}

        def both(name):
            return _first(mlx_calls, f"{mixer_name}.{name}"), _first(torch_calls, f"{mixer_name}.{name}")

        (short_m, short_t), (long_m, long_t) = both("short_filter"), both("filter_fn")
        (long2_m, long2_t), (out_m, out_t) = both("filter_fn2"), both("out_linear")
        if None in (short_m, short_t, long_m, long_t):
            continue
        dims = mixer.out_linear.weight.shape[0]
        seq_len = short_m.output.shape[-1]
        mixed_t = short_t.output[..., :seq_len]
        x1_t, x2_t, v_t = mixed_t[:, :dims], mixed_t[:, dims : 2 * dims], mixed_t[:, 2 * dims :]
        x2_m = short_m.output[:, dims : 2 * dims]

        sites.append(OpSite(
            f"{mixer_name}.v*x1", long_m.args[0], long_t.args[0],
            after=(f"{mixer_name}.short_filter", 0),
            added=lambda v_t=v_t, x1_t=x1_t: _as_mlx(v_t) * _as_mlx(x1_t)))
        gated_t = long_t.output * x2_t
        sites.append(OpSite(
            f"{mixer_name}.y*x2", long_m.output * x2_m, gated_t,
            after=(f"{mixer_name}.filter_fn", 0),
            added=lambda y=long_t.output, x2=x2_t: _as_mlx(y) * _as_mlx(x2)))
        if long2_m is not None and long2_t is not None and out_m is not None and out_t is not None:
            sites.append(OpSite(
                f"{mixer_name}.y+yu", out_m.args[0], out_t.args[0],
                after=(f"{mixer_name}.filter_fn2", 0),
                added=lambda g=gated_t, yu=long2_t.output:
                    (_as_mlx(g) + _as_mlx(yu)).transpose(0, 2, 1)))
        for filter_name in ("filter_fn", "filter_fn2"):
            if filter_name in mixer:
                sites.extend(_sin_sites(mixer[filter_name], f"{mixer_name}.{filter_name}",
                                        mlx_calls, torch_calls))
    return sites


def _sin_sites(hyena, filter_name: str, mlx_calls: dict, torch_calls: dict) -> List[OpSite]:
    """Sin j of an implicit filter MLP: its value is the input of Linear j + 1 on both sides;
    fed the torch side's Linear j output it shows what the MLX sin adds."""
    scaled_freq = mx.array(hyena.w_mod, dtype=mx.float32) * hyena.sin_freq
    sites = []
    for mlp in ("implicit_filter", "implicit_filter_rev"):
        for j in _SIN_INDICES:
            before, after = f"{filter_name}.{mlp}.{j - 1}", f"{filter_name}.{mlp}.{j + 1}"
            mlx_next, torch_next = _first(mlx_calls, after), _first(torch_calls, after)
            torch_before = _first(torch_calls, before)
            if None in (mlx_next, torch_next, torch_before) or before not in mlx_calls:
                continue
            sites.append(OpSite(
                f"{filter_name}.{mlp}.{j}", mlx_next.args[0], torch_next.args[0],
                after=(before, 0),
                added=lambda h=torch_before.output: mx.sin(scaled_freq * _as_mlx(h))))
    return sites


def _clear_kernel_caches(mlx_model: M2BertModel) -> None:
    """The Hyena kernels are cached per (length, precision, parameters); a trace needs the
    filter MLPs to run, so it drops the caches first."""
    for _, module in mlx_model.named_modules():
        module.__dict__.pop("_kernel_cache", None)


def trace(
    torch_model,
    mlx_model: M2BertModel,
    token_ids: Any,
    precision: Optional[str] = None,
    token_type_ids: Any = None,
) -> TraceReport:
    """Compare ``mlx_model`` (at ``precision``, default its own) with the published
    PyTorch M2-BERT ``torch_model`` (BertModel, or a task model holding it as ``bert``)
    on ``token_ids`` ``(batch, length)``; the torch model runs in eval mode in whatever
    dtype it has (``.double()`` makes it a float64 reference)."""
    import torch

    ids = np.asarray(token_ids.cpu() if isinstance(token_ids, torch.Tensor) else token_ids)
    torch_inputs = [torch.as_tensor(ids, dtype=torch.long)]
    mlx_inputs = [mx.array(ids.astype(np.int32))]
    if token_type_ids is not None:
        types = np.asarray(token_type_ids.cpu() if isinstance(token_type_ids, torch.Tensor)
                           else token_type_ids)
        torch_inputs.append(torch.as_tensor(types, dtype=torch.long))
        mlx_inputs.append(mx.array(types.astype(np.int32)))
    encoder = _published_encoder(torch_model)
    previous_precision, was_training = mlx_model.precision, torch_model.training
    if precision is not None:
        mlx_model.set_precision(precision)
    _clear_kernel_caches(mlx_model)
    # Feature-major Monarch MLPs (the same bits), so that gated_layers and wo are sites.
    block_major_mlps = [module for _, module in mlx_model.named_modules()
                        if module.__dict__.get("block_major")]
    for module in block_major_mlps:
        module.block_major = False
    torch_model.eval()
    try:
        return compare(
            encoder, mlx_model, torch_inputs, mlx_inputs, name_map=name_map,
            op_sites=lambda captures: mixer_op_sites(mlx_model, captures),
        )
    finally:
        for module in block_major_mlps:
            module.block_major = True
        mlx_model.set_precision(previous_precision)
        torch_model.train(was_training)


_PUBLISHED_PREFIXES = ("model.bert.", "bert.", "model.")
_SIN_FREQ = re.compile(r"^(.*\.filter_fn2?)\.sin_freq$")
_SHARED_SIN_ALIAS = re.compile(r"\.implicit_filter(_rev)?\.\d+\.freq$")


def load_published_torch_model(torch_src: Union[str, os.PathLike], model_dir: Union[str, os.PathLike]):
    """The published PyTorch ``BertModel`` from the user's copy of HazyResearch/m2
    ``bert/src``, with the config and weights of ``model_dir`` (``pytorch_model.bin`` with
    the published names, or this package's ``model.safetensors``). Needs what the published
    code imports (transformers, einops, opt_einsum)."""
    import torch

    src, model_dir = Path(torch_src).resolve(), Path(model_dir)
    if not (src / "bert_layers.py").is_file() or not (src / "configuration_bert.py").is_file():
        raise FileNotFoundError(
            f"{src} has no bert_layers.py / configuration_bert.py: pass the published "
            f"m2 repository's bert/src directory")
    weights = next((model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()),
                   None)
    if weights is None or not (model_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{model_dir} needs {CONFIG_FILE} and one of {WEIGHT_FILES}")
    # The published code imports itself as ``src.*``. Its src/__init__.py imports the
    # training stack (composer, datasets ...); a bare package object for ``src`` lets the
    # model modules load without it.
    package = sys.modules.get("src")
    if package is None:
        package = types.ModuleType("src")
        package.__path__ = [str(src)]
        sys.modules["src"] = package
    elif [str(Path(p).resolve()) for p in getattr(package, "__path__", [])] != [str(src)]:
        raise ImportError(f"another package named src is already imported "
                          f"({getattr(package, '__path__', package)}); trace in a fresh process")
    bert_layers = importlib.import_module("src.bert_layers")
    configuration = importlib.import_module("src.configuration_bert")
    # bert_layers switches TF32 on when imported; the trace compares IEEE float32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = configuration.BertConfig(**json.loads((model_dir / CONFIG_FILE).read_text()))
    model = bert_layers.BertModel(config)
    state = {}
    for name, value in read_tensors(weights).items():
        for prefix in _PUBLISHED_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        alias = _SIN_FREQ.match(name)  # this package's name for the shared Sin frequency
        state[f"{alias.group(1)}.implicit_filter.1.freq" if alias else name] = \
            torch.from_numpy(np.array(value))
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")
               and not _SHARED_SIN_ALIAS.search(name)]
    if missing:
        raise CheckpointError(f"{weights} lacks {len(missing)} published parameters: "
                              + ", ".join(missing[:8]))
    return model.eval()
