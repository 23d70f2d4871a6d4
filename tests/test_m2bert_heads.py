"""M2-BERT task heads, pool_all, hyena_training_additions and train/eval mode against the
PyTorch reference of the published classes (tests/m2bert_reference.py)."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m2bert import (  # noqa: E402
    CheckpointError, M2BertConfig, M2BertForMaskedLM, M2BertForSequenceClassification,
    M2BertModel, load_model, load_state_dict, save_model,
)
from m2bert_reference import (  # noqa: E402
    ReferenceForMaskedLM, ReferenceForSequenceClassification, ReferenceM2Bert, as_mx, initialize_,
    relative_l2,
)

VOCAB = 96
SEQ_LEN = 64


def tiny_config(**changes) -> M2BertConfig:
    return M2BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        max_position_embeddings=SEQ_LEN, long_conv_l_max=SEQ_LEN, hyena_filter_order=16,
        **changes,
    )


def pair(reference_class, mlx_class, config, seed):
    """A randomly initialised reference (eval mode) and the MLX model loaded from its
    state dict by published names."""
    torch.manual_seed(seed)
    reference = initialize_(reference_class(config), seed).eval()
    model = mlx_class(config)
    load_state_dict(model, as_mx(reference.state_dict()))
    return reference, model


def batch(rng, batch_size=3):
    ids = rng.integers(0, VOCAB, (batch_size, SEQ_LEN))
    mask = np.ones((batch_size, SEQ_LEN), dtype=np.int64)
    for row in range(batch_size):
        mask[row, rng.integers(4, SEQ_LEN):] = 0
    return ids, mask


def test_masked_lm_matches_reference(rng):
    config = tiny_config()
    reference, model = pair(ReferenceForMaskedLM, M2BertForMaskedLM, config, seed=5)
    ids, _ = batch(rng)
    labels = np.where(rng.random(ids.shape) < 0.3, rng.integers(1, VOCAB, ids.shape), -100)
    labels[:, 0] = 0  # label 0 is never a target in the published loss
    with torch.no_grad():
        torch_scores = reference(torch.from_numpy(ids))
        torch_loss = reference.loss(torch.from_numpy(ids), torch.from_numpy(labels))
    scores = model(mx.array(ids))
    loss = model.loss(mx.array(ids), mx.array(labels))
    assert scores.shape == (3, SEQ_LEN, VOCAB)
    assert relative_l2(scores, torch_scores.numpy()) <= 1e-5
    assert abs(loss.item() - torch_loss.item()) <= 1e-5 * abs(torch_loss.item())
    # the decoder has no weight of its own: it is the word-embedding matrix
    assert "weight" not in model.cls.predictions.decoder


@pytest.mark.parametrize("num_labels,label_kind", [
    (1, "regression"), (3, "single_label_classification"), (4, "multi_label_classification"),
])
def test_sequence_classification_matches_reference(rng, num_labels, label_kind):
    config = tiny_config(num_labels=num_labels)
    reference, model = pair(
        ReferenceForSequenceClassification, M2BertForSequenceClassification, config, seed=6
    )
    ids, mask = batch(rng)
    if label_kind == "regression":
        labels = rng.standard_normal((3,)).astype(np.float32)
    elif label_kind == "single_label_classification":
        labels = rng.integers(0, num_labels, (3,))
    else:
        labels = (rng.random((3, num_labels)) < 0.5).astype(np.float32)
    with torch.no_grad():
        torch_logits = reference(torch.from_numpy(ids))
        torch_loss = reference.loss(torch.from_numpy(ids), torch.from_numpy(labels))
    assert model.problem_type(mx.array(labels)) == label_kind
    assert relative_l2(model(mx.array(ids)), torch_logits.numpy()) <= 1e-5
    loss = model.loss(mx.array(ids), mx.array(labels)).item()
    assert abs(loss - torch_loss.item()) <= 1e-5 * abs(torch_loss.item())


def test_pool_all_averages_the_unmasked_positions(rng):
    config = tiny_config(pool_all=True)
    reference, model = pair(ReferenceM2Bert, M2BertModel, config, seed=7)
    ids, mask = batch(rng)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[1]
    pooled = model.encode(mx.array(ids), attention_mask=mx.array(mask))
    assert relative_l2(pooled, expected.numpy()) <= 1e-5
    # the mask changes the mean, and only through the pooler
    unmasked = model.encode(mx.array(ids))
    assert relative_l2(unmasked, pooled) > 1e-3


def test_normalized_sentence_embeddings_as_published(rng):
    config = tiny_config(gather_sentence_embeddings=True, use_normalized_embeddings=True)
    reference, model = pair(
        ReferenceForSequenceClassification, M2BertForSequenceClassification, config, seed=8
    )
    ids, _ = batch(rng)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).numpy()
    embeddings = np.asarray(model(mx.array(ids)))
    assert embeddings.shape == (3, config.hidden_size)
    assert relative_l2(embeddings, expected) <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="retrieval loss"):
        model.loss(mx.array(ids), mx.array([0, 1, 0]))


def test_hyena_training_additions_match_reference(rng):
    config = tiny_config(hyena_training_additions=True)
    reference, model = pair(ReferenceM2Bert, M2BertModel, config, seed=9)
    assert "layernorm" in model.encoder.layer[0].attention
    ids, _ = batch(rng)
    with torch.no_grad():
        hidden, pooled = reference(torch.from_numpy(ids))
    mine = model(mx.array(ids))
    assert relative_l2(mine[0], hidden.numpy()) <= 1e-5
    assert relative_l2(mine[1], pooled.numpy()) <= 1e-5


def test_train_mode_drops_out_and_eval_mode_is_deterministic(rng):
    config = tiny_config(hidden_dropout_prob=0.3)
    _, model = pair(ReferenceM2Bert, M2BertModel, config, seed=10)
    ids = mx.array(batch(rng)[0])
    assert not model.training  # built in eval mode, like HF's from_pretrained
    first, second = model(ids)[0], model(ids)[0]
    assert mx.array_equal(first, second).item()
    model.train()
    dropped = model(ids)[0]
    assert not mx.array_equal(dropped, first).item()
    assert not mx.array_equal(dropped, model(ids)[0]).item()  # a fresh mask per call
    model.eval()
    assert mx.array_equal(model(ids)[0], first).item()


def test_hyena_filter_dropout_changes_nothing_as_published(rng):
    """The published HyenaFilter builds its Dropout and never applies it."""
    config = tiny_config(hidden_dropout_prob=0.0, hyena_filter_dropout=0.5)
    _, model = pair(ReferenceM2Bert, M2BertModel, config, seed=11)
    ids = mx.array(batch(rng)[0])
    evaluated = model(ids)[0]
    assert mx.array_equal(model.train()(ids)[0], evaluated).item()


def test_published_buffers_are_not_trained():
    model = M2BertForMaskedLM(tiny_config())
    from mlx.utils import tree_flatten

    trainable = {name for name, _ in tree_flatten(model.trainable_parameters())}
    everything = {name for name, _ in tree_flatten(model.parameters())}
    frozen = everything - trainable
    assert frozen and all(name.endswith((".pos_emb.t", ".modulation.deltas")) for name in frozen)


def write_torch_checkpoint(directory, config, reference, architectures=None, prefix=""):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k: v for k, v in reference.state_dict().items()},
               directory / "pytorch_model.bin")
    values = config.to_dict()
    if architectures is not None:
        values["architectures"] = architectures
    (directory / "config.json").write_text(json.dumps(values))
    return directory


def test_load_model_picks_the_head_from_architectures(tmp_path, rng):
    config = tiny_config()
    reference, direct = pair(ReferenceForMaskedLM, M2BertForMaskedLM, config, seed=12)
    source = write_torch_checkpoint(
        tmp_path / "mlm", config, reference, ["BertForMaskedLM"], prefix="model."
    )
    model = load_model(source)
    assert type(model) is M2BertForMaskedLM
    ids = mx.array(batch(rng)[0])
    assert mx.array_equal(model(ids), direct(ids)).item()

    # the MLX copy records its architecture and loads back as the same class
    save_model(model, tmp_path / "mlx")
    again = load_model(tmp_path / "mlx")
    assert type(again) is M2BertForMaskedLM and mx.array_equal(again(ids), direct(ids)).item()

    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(source, architecture="BertForSequenceClassification")
    with pytest.raises(ValueError, match="pass one of"):
        load_model(source, architecture="BertForQuestionAnswering")


def test_architecture_argument_overrides_config(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    reference = initialize_(ReferenceM2Bert(config), 0)
    source = write_torch_checkpoint(
        tmp_path / "encoder", config, reference, ["BertForSequenceClassification"]
    )
    with pytest.raises(CheckpointError, match="classifier.weight"):
        load_model(source)
    assert type(load_model(source, architecture="BertModel")) is M2BertModel


def test_untied_decoder_weight_is_refused():
    config = tiny_config()
    torch.manual_seed(0)
    reference = initialize_(ReferenceForMaskedLM(config), 0)
    tensors = as_mx(reference.state_dict())
    tensors["cls.predictions.decoder.weight"] = tensors["cls.predictions.decoder.weight"] * 2
    with pytest.raises(CheckpointError, match="ties them"):
        load_state_dict(M2BertForMaskedLM(config), tensors)


def test_config_fields_of_heads_follow_hf_conventions():
    values = dataclasses.asdict(tiny_config())
    values.update(hidden_dropout_prob=0.25, classifier_dropout=None, problem_type=None,
                  id2label={"0": "no", "1": "yes", "2": "maybe"})
    del values["num_labels"]
    config = M2BertConfig.from_dict(values)
    assert config.classifier_dropout == 0.25 and config.num_labels == 3
    assert config.problem_type == ""
    with pytest.raises(ValueError, match="hidden_act"):
        tiny_config(hidden_act="relu")
    with pytest.raises(ValueError, match="use_cls_token"):
        M2BertConfig.from_dict({"use_cls_token": True})


def test_embed_command_on_a_retrieval_head_checkpoint(tmp_path):
    """A config naming BertForSequenceClassification with gather_sentence_embeddings and
    use_normalized_embeddings (the retrieval setup) embeds as the published class does."""
    from m2bert.__main__ import main as cli_main

    config = tiny_config(gather_sentence_embeddings=True, use_normalized_embeddings=True)
    reference, _ = pair(
        ReferenceForSequenceClassification, M2BertForSequenceClassification, config, seed=13
    )
    source = write_torch_checkpoint(
        tmp_path / "retrieval", config, reference, ["BertForSequenceClassification"]
    )
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "input.txt").write_text("cat dog\ndog\n")
    cli_main(["embed", "--model", str(source), "--tokenizer", str(tmp_path / "vocab.txt"),
              str(tmp_path / "input.txt"), "-o", str(tmp_path / "out.npy"), "--quiet"])
    ids = np.zeros((2, SEQ_LEN), dtype=np.int64)
    ids[0, :4], ids[1, :3] = [2, 5, 6, 3], [2, 6, 3]
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).numpy()
    embeddings = np.load(tmp_path / "out.npy")
    assert relative_l2(embeddings, expected) <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-6)
