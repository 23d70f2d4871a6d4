"""M2-BERT embedding API on strings: padding and truncation against token ids built by
hand and the PyTorch reference."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

from m2bert import M2BertConfig, M2BertModel, load_state_dict  # noqa: E402
from m2bert.text import token_batch  # noqa: E402
from m2bert_reference import ReferenceM2Bert, as_mx, initialize_, relative_l2  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
IDS = {token: index for index, token in enumerate(VOCAB)}
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tokenizers.implementations import BertWordPieceTokenizer

    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertWordPieceTokenizer(str(vocab), lowercase=True)


@pytest.fixture(scope="module")
def models():
    config = M2BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        max_position_embeddings=MAX_LENGTH, long_conv_l_max=MAX_LENGTH, hyena_filter_order=16,
    )
    torch.manual_seed(4)
    reference = initialize_(ReferenceM2Bert(config), 4).eval()
    model = M2BertModel(config)
    load_state_dict(model, as_mx(reference.state_dict()))
    return reference, model


def hand_ids(text: str):
    return [IDS["[CLS]"]] + [IDS[word] for word in text.lower().split()] + [IDS["[SEP]"]]


def test_embed_strings_pads_to_max_length_like_the_reference(tokenizer, models):
    reference, model = models
    texts = ["The cat sat", "a dog ran far away on the mat"]
    embeddings = model.embed(texts, tokenizer)
    expected_ids = np.zeros((2, MAX_LENGTH), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = hand_ids(text)
        expected_ids[row, : len(ids)] = ids
    with torch.no_grad():
        expected = reference(torch.from_numpy(expected_ids))[1].numpy()
    assert embeddings.shape == (2, 32)
    assert relative_l2(embeddings, expected) <= 1e-5
    single = model.embed("The cat sat", tokenizer)
    assert single.shape == (32,) and mx.array_equal(single, embeddings[0]).item()
    with pytest.raises(TypeError, match="strings"):
        model.embed([1, 2], tokenizer)


def test_padding_to_the_longest_text_changes_the_embedding(tokenizer, models):
    _, model = models
    text = "the cat sat on the mat"
    ids, mask = token_batch(tokenizer, [text, "a dog"], MAX_LENGTH, 0, padding="longest")
    assert [len(row) for row in ids] == [8, 8] and mask[1] == [1] * 4 + [0] * 4
    full = np.asarray(model.embed([text], tokenizer))[0]
    short = np.asarray(model.embed([text], tokenizer, padding="longest"))[0]
    cosine = float(full @ short / np.linalg.norm(full) / np.linalg.norm(short))
    change = relative_l2(short, full)
    print(f"max_length vs longest padding: cosine {cosine:.7f}, relative L2 {change:.2e}")
    # the long convolutions see the padding: the embedding moves far beyond rounding
    assert change > 1e-4
    with pytest.raises(ValueError, match="padding must be one of"):
        token_batch(tokenizer, [text], MAX_LENGTH, 0, padding="do_not_pad")


def test_truncation_keep_sep_and_published(tokenizer):
    long_text = " ".join(WORDS * 3)  # 30 words: overflows 16 tokens
    whole = hand_ids(long_text)
    keep_sep, _ = token_batch(tokenizer, [long_text], MAX_LENGTH, 0)
    published, mask = token_batch(tokenizer, [long_text], MAX_LENGTH, 0, truncation="published")
    assert keep_sep[0] == whole[: MAX_LENGTH - 1] + [IDS["[SEP]"]]
    assert published[0] == whole[:MAX_LENGTH] and mask[0] == [1] * MAX_LENGTH
    # one token too long: the published slice drops exactly the [SEP]
    fifteen = " ".join((WORDS * 2)[:15])
    assert token_batch(tokenizer, [fifteen], MAX_LENGTH, 0, truncation="published")[0][0] == (
        hand_ids(fifteen)[:MAX_LENGTH]
    )
    # texts that fit are the same either way
    short = "a dog ran"
    assert token_batch(tokenizer, [short], MAX_LENGTH, 0, truncation="published") == (
        token_batch(tokenizer, [short], MAX_LENGTH, 0)
    )
