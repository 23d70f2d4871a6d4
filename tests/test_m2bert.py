"""M2-BERT on MLX against the PyTorch reference (tests/m2bert_reference.py): parity,
checkpoint round trips and errors, command line."""

from __future__ import annotations

import json
import os
import pickle

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mlx_precise  # noqa: E402
from m2bert import (  # noqa: E402
    CheckpointError, M2BertConfig, M2BertModel, load_model, load_state_dict, read_tensors,
)
from m2bert import ops  # noqa: E402
from m2bert.__main__ import main as cli_main  # noqa: E402
from m2bert_reference import ReferenceM2Bert, as_mx, initialize_, relative_l2  # noqa: E402

VOCAB = 96


def small_config(hidden: int, seq_len: int) -> M2BertConfig:
    return M2BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2,
        intermediate_size=2 * hidden, max_position_embeddings=seq_len, long_conv_l_max=seq_len,
    )


def reference_model(config: M2BertConfig, seed: int = 0) -> ReferenceM2Bert:
    torch.manual_seed(seed)
    return initialize_(ReferenceM2Bert(config), seed).eval()


class Case:
    """One random-init config shared by the torch reference and the MLX model."""

    def __init__(self, hidden: int, seq_len: int, batch: int = 2):
        self.config = small_config(hidden, seq_len)
        self.reference = reference_model(self.config)
        self.state_dict = self.reference.state_dict()
        self.model = M2BertModel(self.config)
        load_state_dict(self.model, as_mx(self.state_dict))
        generator = torch.Generator().manual_seed(1)
        self.token_ids = torch.randint(0, VOCAB, (batch, seq_len), generator=generator)
        self.token_type_ids = torch.randint(0, 2, (batch, seq_len), generator=generator)
        with torch.no_grad():
            self.torch32 = self.reference(self.token_ids, self.token_type_ids)
            reference64 = reference_model(self.config).double()
            reference64.load_state_dict(self.state_dict)
            self.torch64 = reference64(self.token_ids, self.token_type_ids)

    def mlx(self, precision: str):
        self.model.set_precision(precision)
        hidden, pooled = self.model(
            mx.array(self.token_ids.numpy()), mx.array(self.token_type_ids.numpy())
        )
        mx.eval(hidden, pooled)
        return hidden, pooled


@pytest.fixture(scope="module", params=[(64, 256), (128, 1024)], ids=["h64-L256", "h128-L1024"])
def case(request):
    return Case(*request.param)


def test_float32_matches_torch_float32(case):
    hidden, pooled = case.mlx("float32")
    hidden_error = relative_l2(hidden, case.torch32[0].numpy())
    pooled_error = relative_l2(pooled, case.torch32[1].numpy())
    print(f"float32 MLX vs float32 torch: hidden {hidden_error:.2e}, pooled {pooled_error:.2e}; "
          f"vs float64 torch: hidden {relative_l2(hidden, case.torch64[0].numpy()):.2e}, "
          f"pooled {relative_l2(pooled, case.torch64[1].numpy()):.2e}")
    assert hidden_error <= 1e-5 and pooled_error <= 1e-5


@pytest.mark.parametrize("precision", ["extended", "dd"])
def test_precise_modes_closer_to_float64_than_torch_float32(case, precision):
    hidden, pooled = case.mlx(precision)
    for name, mine, ref32, ref64 in (
        ("hidden", hidden, case.torch32[0], case.torch64[0]),
        ("pooled", pooled, case.torch32[1], case.torch64[1]),
    ):
        precise_error = relative_l2(mine, ref64.numpy())
        torch_error = relative_l2(ref32.numpy(), ref64.numpy())
        print(f"{name}: {precision} MLX vs float64 torch {precise_error:.2e}, "
              f"float32 torch vs float64 torch {torch_error:.2e}")
        assert precise_error * 2 <= torch_error


@pytest.mark.parametrize("precision", ["float32", "extended", "dd"])
def test_block_major_mlp_gives_the_feature_major_bits(case, precision):
    """The Monarch MLP block-major (the default) and feature-major (what m2bert.trace
    runs): the same products and elementwise operations, so the same bits."""
    block_major = case.mlx(precision)
    mlps = [layer.mlp for layer in case.model.encoder.layer]
    try:
        for mlp in mlps:
            mlp.block_major = False
        feature_major = case.mlx(precision)
    finally:
        for mlp in mlps:
            mlp.block_major = True
    for mine, reference in zip(block_major, feature_major):
        assert np.all(np.isfinite(np.asarray(mine)))
        assert np.asarray(mine).tobytes() == np.asarray(reference).tobytes()


@pytest.mark.parametrize("precision", ["float32", "extended", "dd"])
def test_bias_free_monarch_product_is_the_product_plus_zero(rng, precision):
    """Without a bias the float32 Monarch product leaves c unread (beta = 0): the same bits
    as adding +0, zero rows and negative-zero weights included (no -0 comes out)."""
    rows = rng.standard_normal((4, 64, 24)).astype(np.float32)
    rows[:, ::3] = 0.0
    rows[:, 1::5] = -0.0
    weight = rng.standard_normal((4, 40, 24)).astype(np.float32)
    weight[1] = -np.abs(weight[1])
    weight[2] = -0.0
    rows, weight = mx.array(rows), mx.array(weight)
    plus_zero = mlx_precise.addmm(
        mx.zeros((1,), dtype=mx.float32), rows, weight.transpose(0, 2, 1), precision=precision
    )
    product = np.asarray(ops.blockdiag_blocks(rows, weight, None, precision))
    assert np.all(np.isfinite(product)) and np.any(product == 0)
    assert product.tobytes() == np.asarray(plus_zero).tobytes()


def test_fused_gelu_product_gives_the_unfused_bits(rng):
    """ops.gelu_product (one mx.compile kernel) and gelu(x) * y op by op: the same bits,
    on contiguous and strided inputs, specials included."""
    x = rng.standard_normal((4, 96, 40)) * rng.choice([1e-3, 1.0, 4.0, 30.0], size=(4, 96, 1))
    x = x.astype(np.float32)
    x.flat[:10] = [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, 5.5, -5.5]
    y = rng.standard_normal(x.shape).astype(np.float32)
    x, y = mx.array(x), mx.array(y)
    for a, b in ((x, y), (x[:2], x[2:]), (x[..., :20], y[..., 20:]), (x.transpose(1, 0, 2), y[:, 0])):
        fused = np.asarray(ops.gelu_product(a, b))
        unfused = np.asarray(ops.gelu(a) * b)
        assert not np.any(np.isnan(unfused[np.isfinite(np.asarray(a))]))
        assert fused.tobytes() == unfused.tobytes()


def test_fused_short_conv_sums_give_the_unfused_bits(rng):
    """The float32 short convolution's sums in one mx.compile kernel and op by op: the
    same bits (a transposed input as in the model, negative zero taps, zero padding)."""
    u = mx.array(rng.standard_normal((2, 300, 48)).astype(np.float32)).transpose(0, 2, 1)
    weight = rng.standard_normal((48, 1, 3)).astype(np.float32)
    weight[::4, 0, 1] = -0.0
    bias = rng.standard_normal(48).astype(np.float32)
    bias[::5] = -0.0
    weight, bias = mx.array(weight), mx.array(bias)
    fused = np.asarray(ops.short_causal_conv(u, weight, bias, "float32"))
    taps = weight[:, 0, ::-1]
    padded = mx.concatenate([mx.zeros((2, 48, 2), dtype=mx.float32), u], axis=-1)
    terms = [padded[..., 2 - lag : 302 - lag] * taps[:, lag : lag + 1] for lag in range(3)]
    unfused = np.asarray(ops._sum_in_order(terms, bias[:, None]))
    assert np.all(np.isfinite(unfused))
    assert fused.tobytes() == unfused.tobytes()


@pytest.mark.parametrize("precision", ["extended", "dd"])
@pytest.mark.parametrize("length", [96, 100])
def test_chunked_short_conv_gives_the_whole_row_bits(rng, precision, length):
    """The extended short convolution on chunks (ops.chunked_causal_conv_function) and
    on whole rows: the same output bits (a transposed input as in the model, a length
    that is not a multiple of the chunk, zero and negative zero inputs, taps and bias
    entries), and the same gradient bits."""
    u = rng.standard_normal((2, length, 12)).astype(np.float32)
    u[:, 10:30:3] = 0.0
    u[:, 31:40:2] = -0.0
    taps = rng.standard_normal((12, 3)).astype(np.float32)
    taps[::4, 1] = -0.0
    bias = rng.standard_normal(12).astype(np.float32)
    bias[::5] = -0.0
    u = mx.array(u).transpose(0, 2, 1)
    taps, bias = mx.array(taps), mx.array(bias)
    cotangent = mx.array(rng.standard_normal((2, 12, length)).astype(np.float32))

    def whole_row(u, taps, bias):
        return mlx_precise.rfft_conv(u, taps, precision=precision) + bias[:, None]

    chunked = ops.chunked_causal_conv_function(precision, 16)
    results = []
    for conv in (chunked, whole_row):
        loss = lambda u, taps, bias, conv=conv: mx.sum(conv(u, taps, bias) * cotangent)
        results.append((conv(u, taps, bias), *mx.grad(loss, argnums=(0, 1, 2))(u, taps, bias)))
    assert np.all(np.isfinite(np.asarray(results[1][0])))
    for mine, whole in zip(*results):
        assert np.asarray(mine).tobytes() == np.asarray(whole).tobytes()


def check_rounds_once(case):
    """precision="exact" returns float32(torch float64 output) bit for bit."""
    hidden, pooled = case.mlx("exact")
    for name, mine, ref64 in (("hidden", hidden, case.torch64[0]), ("pooled", pooled, case.torch64[1])):
        reference = ref64.numpy()
        mine = np.asarray(mine)
        assert np.all(np.isfinite(mine))
        equal = np.mean(mine == reference.astype(np.float32))
        error = relative_l2(mine, reference)
        print(f"{name}: exact MLX equals float32(float64 torch) for {equal:.4%}, "
              f"relative L2 {error:.2e}")
        assert equal >= 0.9999 and error <= 3e-8


def test_exact_rounds_once_like_torch_float64(case):
    check_rounds_once(case)


def test_exact_rounds_once_hidden_768():
    check_rounds_once(Case(768, 64))


def test_encode_returns_pooled_output(case):
    ids = mx.array(case.token_ids.numpy())
    np.testing.assert_array_equal(np.asarray(case.model.encode(ids)), np.asarray(case.model(ids)[1]))


# --- checkpoints -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    config = small_config(64, 64)
    reference = reference_model(config, seed=3)
    return config, reference.state_dict()


def write_checkpoint_dir(directory, config, state_dict, prefix=""):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + name: tensor for name, tensor in state_dict.items()},
               directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(config.to_dict()))
    return directory


def outputs(model, seq_len):
    ids = mx.array(np.arange(2 * seq_len).reshape(2, seq_len) % VOCAB)
    hidden, pooled = model(ids)
    return np.asarray(hidden), np.asarray(pooled)


@pytest.mark.parametrize("prefix", ["", "bert.", "model.bert."])
def test_torch_bin_to_mlx_to_safetensors_round_trip(tmp_path, tiny, prefix):
    config, state_dict = tiny
    source = write_checkpoint_dir(tmp_path / "torch", config, state_dict, prefix)
    from_bin = load_model(source)
    direct = M2BertModel(config)
    load_state_dict(direct, as_mx(state_dict))
    for mine, expected in zip(outputs(from_bin, 64), outputs(direct, 64)):
        np.testing.assert_array_equal(mine, expected)

    cli_main(["convert", str(source), "-o", str(tmp_path / "mlx")])
    from_safetensors = load_model(tmp_path / "mlx")
    assert from_safetensors.config == config
    for mine, expected in zip(outputs(from_safetensors, 64), outputs(from_bin, 64)):
        np.testing.assert_array_equal(mine, expected)


def test_published_name_safetensors_and_bf16_are_read_as_float32(tmp_path, tiny):
    from safetensors.torch import save_file

    config, state_dict = tiny
    bf16 = {
        name: (t.to(torch.bfloat16) if t.is_floating_point() else t).clone().contiguous()
        for name, t in state_dict.items()
    }
    save_file(bf16, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    model = load_model(tmp_path)
    weight = model.encoder.layer[1].mlp.gated_layers.weight
    assert weight.dtype == mx.float32
    expected = bf16["encoder.layer.1.mlp.gated_layers.weight"].float().numpy()
    np.testing.assert_array_equal(np.asarray(weight), expected)


def test_shared_sin_frequency_is_one_parameter(tiny):
    config, state_dict = tiny
    model = M2BertModel(config)
    load_state_dict(model, as_mx(state_dict))
    published = state_dict["encoder.layer.0.attention.filter_fn2.implicit_filter_rev.5.freq"]
    np.testing.assert_array_equal(
        np.asarray(model.encoder.layer[0].attention.filter_fn2.sin_freq), published.numpy()
    )


def checkpoint_error(config, tensors) -> str:
    with pytest.raises(CheckpointError) as error:
        load_state_dict(M2BertModel(config), tensors)
    return str(error.value)


def test_missing_and_unexpected_keys_are_listed(tiny):
    config, state_dict = tiny
    tensors = as_mx(state_dict)
    del tensors["pooler.dense.bias"]
    del tensors["encoder.layer.1.attention.filter_fn.modulation.deltas"]
    tensors["cls.predictions.bias"] = mx.zeros((VOCAB,), dtype=mx.float32)
    message = checkpoint_error(config, tensors)
    assert "missing keys (2)" in message and "pooler.dense.bias" in message
    assert "encoder.layer.1.attention.filter_fn.modulation.deltas" in message
    assert "unexpected keys (1): cls.predictions.bias" in message


def test_bad_shape_is_reported(tiny):
    config, state_dict = tiny
    tensors = as_mx(state_dict)
    tensors["encoder.layer.0.mlp.wo.weight"] = mx.zeros((4, 16, 33), dtype=mx.float32)
    message = checkpoint_error(config, tensors)
    assert "encoder.layer.0.mlp.wo.weight: checkpoint (4, 16, 33), model (4, 16, 32)" in message


def test_disagreeing_sin_frequencies_are_refused(tiny):
    config, state_dict = tiny
    tensors = as_mx(state_dict)
    name = "encoder.layer.0.attention.filter_fn.implicit_filter_rev.3.freq"
    tensors[name] = tensors[name] + 1
    assert "shares one Sin frequency" in checkpoint_error(config, tensors)


def test_custom_position_ids_are_refused(tiny):
    config, state_dict = tiny
    tensors = as_mx(state_dict)
    tensors["embeddings.position_ids"] = tensors["embeddings.position_ids"][:, ::-1]
    assert "position_ids" in checkpoint_error(config, tensors)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"weight": Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        read_tensors(path)
    assert not marker.exists()


def test_missing_config_and_unknown_format_say_what_to_pass(tmp_path, tiny):
    config, state_dict = tiny
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    assert load_model(tmp_path, config=config).config == config
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match=".safetensors or .bin"):
        read_tensors(tmp_path / "weights.npz")


def test_config_refuses_other_architectures_and_ignores_training_keys():
    with pytest.raises(ValueError, match="monarch_mixer_sequence_mixing"):
        M2BertConfig.from_dict({"monarch_mixer_sequence_mixing": False})
    config = M2BertConfig.from_dict({"hidden_size": 128, "hyena_wd": 0.1, "architectures": ["x"]})
    assert config.hidden_size == 128


def test_bad_inputs_say_what_to_pass(tiny):
    config, state_dict = tiny
    model = M2BertModel(config)
    with pytest.raises(ValueError, match="at most 64 tokens"):
        model(mx.zeros((1, 65), dtype=mx.int32))
    with pytest.raises(TypeError, match="integers"):
        model(mx.zeros((1, 8), dtype=mx.float32))
    with pytest.raises(ValueError, match="precision must be one of"):
        model.set_precision("float64")
    with pytest.raises(ValueError, match="precision must be one of"):
        M2BertModel(config, precision="float64")


# --- command line ------------------------------------------------------------------------

def test_embed_command_pads_to_max_length_like_the_reference(tmp_path, tiny):
    config, state_dict = tiny
    checkpoint = write_checkpoint_dir(tmp_path / "model", config, state_dict)
    words = ["the", "cat", "sat", "on", "mat", "a", "dog"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    documents = ["The cat sat on the mat", "a dog", "", "the dog sat on a cat the end"]
    (tmp_path / "input.txt").write_text("\n".join(documents) + "\n")
    output = tmp_path / "out.npy"
    cli_main(["embed", "--model", str(checkpoint), "--tokenizer", str(tmp_path / "vocab.txt"),
              str(tmp_path / "input.txt"), "-o", str(output), "--batch-size", "2", "--quiet"])
    embeddings = np.load(output)
    assert embeddings.shape == (3, config.hidden_size) and embeddings.dtype == np.float32

    ids = {token: index for index, token in enumerate(vocab)}
    expected_ids = np.zeros((3, config.max_length), dtype=np.int32)  # [PAD] = 0
    for row, document in enumerate(d for d in documents if d):
        tokens = ["[CLS]"] + [w if w in ids else "[UNK]" for w in document.lower().split()]
        expected_ids[row, : len(tokens) + 1] = [ids[t] for t in tokens + ["[SEP]"]]
    reference = reference_model(config, seed=3)
    with torch.no_grad():
        torch_pooled = reference(torch.from_numpy(expected_ids).long())[1].numpy()
    assert relative_l2(embeddings, torch_pooled) <= 1e-5

    from tokenizers.implementations import BertWordPieceTokenizer

    BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=True).save(
        str(tmp_path / "tokenizer.json")
    )
    # Same batch size: float32 GEMMs on CUDA (cuBLAS) may sum a row in another order for
    # another number of rows, so only equal batches give equal bits.
    cli_main(["embed", "--model", str(checkpoint), "--tokenizer", str(tmp_path / "tokenizer.json"),
              str(tmp_path / "input.txt"), "-o", str(tmp_path / "out_json.npy"), "--batch-size", "2",
              "--quiet"])
    np.testing.assert_array_equal(np.load(tmp_path / "out_json.npy"), embeddings)
