"""M2-BERT (Monarch Mixer BERT) on MLX, running on mlx_precise's ops.

    from m2bert import load_model
    model = load_model("m2-bert-80M-2k-retrieval/", precision="extended")
    model = load_model(download_from_hub("togethercomputer/m2-bert-80M-2k-retrieval"))
    embeddings = model.encode(token_ids)        # (batch, 768), pooled first token

    report = m2bert.trace(torch_model, model, token_ids)   # vs the published PyTorch model

Command line: ``python -m m2bert embed``, ``convert`` and ``trace`` (see --help).
"""

from .checkpoint import (
    CheckpointError, download_from_hub, load_model, load_state_dict, read_tensors, save_model,
)
from .config import ConfigError, M2BertConfig
from .heads import ARCHITECTURES, M2BertForMaskedLM, M2BertForSequenceClassification
from .model import M2BertModel
from .tensor_files import UnsafePickleError
from .tracing import trace

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "ConfigError",
    "M2BertConfig",
    "M2BertForMaskedLM",
    "M2BertForSequenceClassification",
    "M2BertModel",
    "UnsafePickleError",
    "download_from_hub",
    "load_model",
    "load_state_dict",
    "read_tensors",
    "save_model",
    "trace",
]
