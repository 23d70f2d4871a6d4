"""PyTorch reference M2-BERT, written from the published semantics of HazyResearch/m2
``bert/src`` (bert_layers.py, mm/monarch_mixer_sequence_mixer.py, mm/hyena_utils.py,
mm/blockdiag_linear.py), any floating dtype (``.double()`` for float64): the encoder
(``ReferenceM2Bert``, the published ``BertModel``) with its dropouts, the
``hyena_training_additions`` LayerNorm and ``pool_all``, and the published heads
``ReferenceForMaskedLM`` and ``ReferenceForSequenceClassification`` with their losses.

Its ``state_dict()`` carries the published parameter names, including the shared Sin
frequency under every Sin index of both implicit filters and the ``position_ids`` buffer,
so it doubles as a stand-in for a published ``pytorch_model.bin``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Sin(nn.Module):
    def __init__(self, order: int, w: float, w_mod: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, order))
        self.w_mod = w_mod

    def forward(self, x):
        return torch.sin(self.w_mod * self.freq * x)


class PositionalEmbedding(nn.Module):
    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        angle = 2 * math.pi * torch.linspace(0, seq_len - 1, seq_len)[None, :, None] / seq_len
        freqs = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * freqs * angle)
        self.z = nn.Parameter(torch.cat([t, z.real, z.imag], dim=-1))
        self.register_buffer("t", t)


class ExponentialModulation(nn.Module):
    def __init__(self, dims: int, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2):
        super().__init__()
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, dims)[None, None])

    def forward(self, t, x):
        return x * torch.exp(-t * self.deltas.abs())


def implicit_mlp(emb_dim: int, order: int, dims: int, sin: Sin) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(emb_dim, order), sin,
        nn.Linear(order, order), sin,
        nn.Linear(order, order), sin,
        nn.Linear(order, dims, bias=False),
    )


class HyenaFilter(nn.Module):
    def __init__(self, config):
        super().__init__()
        dims, order, emb = config.hidden_size, config.hyena_filter_order, config.hyena_emb_dim
        self.bidirectional = config.bidirectional
        self.bias = nn.Parameter(torch.randn(dims))
        sin = Sin(order, config.hyena_w, config.hyena_w_mod)  # one object: shared freq
        self.pos_emb = PositionalEmbedding(emb, config.long_conv_l_max)
        self.implicit_filter = implicit_mlp(emb, order, dims, sin)
        if self.bidirectional:
            self.implicit_filter_rev = implicit_mlp(emb, order, dims, sin)
        self.modulation = ExponentialModulation(dims)

    def _filter(self, mlp, seq_len):
        z, t = self.pos_emb.z[:, :seq_len], self.pos_emb.t[:, :seq_len]
        return self.modulation(t, mlp(z))[0].transpose(0, 1)  # (H, L)

    def forward(self, u):
        """u (B, H, L): bidirectional FFT convolution plus u * bias, as fftconv_ref."""
        seq_len = u.shape[-1]
        kernel = self._filter(self.implicit_filter, seq_len)
        if self.bidirectional:
            reverse = self._filter(self.implicit_filter_rev, seq_len)
            kernel = F.pad(kernel, (0, seq_len)) + F.pad(reverse.flip(-1), (seq_len, 0))
        fft_size = 2 * seq_len
        kernel_f = torch.fft.rfft(kernel, n=fft_size) / fft_size
        u_f = torch.fft.rfft(u, n=fft_size)
        y = torch.fft.irfft(u_f * kernel_f, n=fft_size, norm="forward")[..., :seq_len]
        return y + u * self.bias[None, :, None]


class MonarchMixerSequenceMixing(nn.Module):
    def __init__(self, config):
        super().__init__()
        dims = config.hidden_size
        self.dims = dims
        self.hyena_training_additions = config.hyena_training_additions
        if self.hyena_training_additions:
            self.layernorm = nn.LayerNorm(dims, eps=1e-5)  # published: nn.LayerNorm(d_model), the default eps
        self.filter_fn = HyenaFilter(config)
        self.residual_long_conv = config.residual_long_conv
        if self.residual_long_conv:
            self.filter_fn2 = HyenaFilter(config)
        self.in_linear = nn.Linear(dims, 3 * dims)
        self.out_linear = nn.Linear(dims, dims)
        self.short_filter = nn.Conv1d(3 * dims, 3 * dims, kernel_size=3, groups=3 * dims, padding=2)

    def forward(self, u):
        if self.hyena_training_additions:
            u = self.layernorm(u)
        seq_len = u.shape[-2]
        projected = self.in_linear(u).transpose(1, 2)
        mixed = self.short_filter(projected)[..., :seq_len]
        x1, x2, v = mixed.split(self.dims, dim=1)
        y = self.filter_fn(v * x1) * x2
        if self.residual_long_conv:
            y = y + self.filter_fn2(u.transpose(1, 2))
        return self.out_linear(y.transpose(1, 2))


class BlockdiagLinear(nn.Module):
    def __init__(self, in_features, out_features, nblocks, bias):
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(nblocks, out_features // nblocks, in_features // nblocks)
            / math.sqrt(in_features // nblocks)
        )
        self.bias = nn.Parameter(0.1 * torch.randn(out_features)) if bias else None

    def forward(self, x):
        nblocks, out_block, in_block = self.weight.shape
        batch_shape = x.shape[:-1]
        blocks = x.reshape(-1, nblocks, in_block).transpose(0, 1)  # (nb, N, p)
        out = torch.bmm(blocks, self.weight.transpose(1, 2)).transpose(0, 1)
        out = out.reshape(*batch_shape, nblocks * out_block)
        return out if self.bias is None else out + self.bias


class GatedLinearUnitMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        dims, inner = config.hidden_size, config.intermediate_size
        self.inner = inner
        if config.use_monarch_mlp:
            nb = config.monarch_mlp_nblocks
            self.gated_layers = BlockdiagLinear(dims, 2 * inner, nb, bias=False)
            self.wo = BlockdiagLinear(inner, dims, nb, bias=True)
        else:
            self.gated_layers = nn.Linear(dims, 2 * inner, bias=False)
            self.wo = nn.Linear(inner, dims)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(dims, eps=config.layer_norm_eps)

    def forward(self, hidden):
        h = self.gated_layers(hidden)
        h = F.gelu(h[..., : self.inner], approximate="none") * h[..., self.inner :]
        return self.layernorm(self.wo(self.dropout(h)) + hidden)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = MonarchMixerSequenceMixing(config)
        self.mlp = GatedLinearUnitMLP(config)

    def forward(self, hidden):
        return self.mlp(self.attention(hidden))


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1))
        )

    def forward(self, token_ids, token_type_ids):
        seq_len = token_ids.shape[1]
        summed = self.word_embeddings(token_ids) + self.token_type_embeddings(token_type_ids)
        summed = summed + self.position_embeddings(self.position_ids[:, :seq_len])
        return self.dropout(self.LayerNorm(summed))


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.pool_all = config.pool_all
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden, mask):
        if self.pool_all:  # mean of the unmasked positions
            pooled = torch.sum(hidden * mask.unsqueeze(-1), dim=1) / torch.sum(mask, 1, True)
        else:
            pooled = hidden[:, 0]
        return torch.tanh(self.dense(pooled))


class ReferenceM2Bert(nn.Module):
    """Published BertModel with Monarch mixing, GLU Monarch MLP, learned positions."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(self, token_ids, token_type_ids=None, attention_mask=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(token_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(token_ids)
        hidden = self.embeddings(token_ids, token_type_ids)
        for layer in self.encoder.layer:
            hidden = layer(hidden)
        if self.pooler is None:
            return hidden, None
        return hidden, self.pooler(hidden, attention_mask.to(hidden.dtype))


class PredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, hidden):
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class LMPredictionHead(nn.Module):
    def __init__(self, config, embedding_weight):
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.decoder = nn.Linear(embedding_weight.size(1), embedding_weight.size(0))
        self.decoder.weight = embedding_weight  # tied

    def forward(self, hidden):
        return self.decoder(self.transform(hidden))


class OnlyMLMHead(nn.Module):
    def __init__(self, config, embedding_weight):
        super().__init__()
        self.predictions = LMPredictionHead(config, embedding_weight)


class ReferenceForMaskedLM(nn.Module):
    """Published BertForMaskedLM: no pooler; the loss is the cross-entropy of the
    positions with labels > 0, computed on those rows only, as published."""

    def __init__(self, config):
        super().__init__()
        self.bert = ReferenceM2Bert(config, add_pooling_layer=False)
        self.cls = OnlyMLMHead(config, self.bert.embeddings.word_embeddings.weight)

    def forward(self, token_ids, token_type_ids=None):
        return self.cls.predictions(self.bert(token_ids, token_type_ids)[0])

    def loss(self, token_ids, labels, token_type_ids=None):
        hidden = self.bert(token_ids, token_type_ids)[0]
        masked = torch.nonzero(labels.flatten() > 0, as_tuple=False).flatten()
        scores = self.cls.predictions(hidden.reshape(-1, hidden.shape[-1])[masked])
        return F.cross_entropy(scores, labels.flatten()[masked])


class ReferenceForSequenceClassification(nn.Module):
    """Published BertForSequenceClassification (pooled -> dropout -> classifier)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = ReferenceM2Bert(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, token_ids, token_type_ids=None, attention_mask=None):
        pooled = self.bert(token_ids, token_type_ids, attention_mask)[1]
        if self.config.gather_sentence_embeddings:
            if self.config.use_normalized_embeddings:
                return F.normalize(pooled, p=2, dim=1)
            return pooled
        return self.classifier(self.dropout(pooled))

    def loss(self, token_ids, labels, token_type_ids=None, attention_mask=None):
        logits = self(token_ids, token_type_ids, attention_mask)
        if self.config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        if labels.dtype in (torch.long, torch.int):
            return F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def initialize_(model: ReferenceM2Bert, seed: int, std: float = 0.02) -> ReferenceM2Bert:
    """The published initialisation (HF ``BertPreTrainedModel._init_weights``, run by
    ``post_init``): every ``nn.Linear`` and ``nn.Embedding`` weight, the Hyena filter MLPs'
    included, is N(0, std); Monarch blocks, the short conv and the filter ``bias`` keep
    their own (torch-RNG) init: seed torch before building the model. Where the published init puts constants (Linear biases 0, LayerNorm
    1 and 0) this puts small N(0, std) perturbations instead, so that a test exercises
    every parameter."""
    generator = torch.Generator().manual_seed(seed)

    def normal_(tensor, mean=0.0):
        tensor.copy_(mean + std * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal_(module.weight)
                if getattr(module, "bias", None) is not None:
                    normal_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                normal_(module.weight, mean=1.0)
                normal_(module.bias)
    return model


def as_mx(state_dict) -> dict:
    """What read_tensors makes of a torch state dict: floats as float32, integers kept."""
    import mlx.core as mx

    return {
        name: mx.array((tensor.float() if tensor.is_floating_point() else tensor).numpy())
        for name, tensor in state_dict.items()
    }


def relative_l2(value, reference) -> float:
    """||value - reference|| / ||reference||, both taken as float64."""
    import numpy as np

    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))
