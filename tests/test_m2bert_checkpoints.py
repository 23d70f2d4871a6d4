"""Checkpoint readers against crafted files: pickle payloads, strided bombs, bad headers,
truncated files and absurd configs each give a clear error, within a time and memory
bound, in a process without torch (tests/checkpoint_probe.py), and no pickled code runs.
Also: Composer .pt files, float64 handled the same in .bin and .safetensors."""

from __future__ import annotations

import builtins
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m2bert import (  # noqa: E402
    CheckpointError, M2BertConfig, M2BertModel, load_model, read_tensors,
)
from m2bert.config import ConfigError  # noqa: E402
from m2bert_reference import ReferenceM2Bert, initialize_  # noqa: E402

PROBE = Path(__file__).with_name("checkpoint_probe.py")
SECONDS_PER_FILE = 5.0
TRACED_BYTES_PER_FILE = 64 << 20
RSS_GROWTH_BYTES = 512 << 20


# --- crafting torch zip files ------------------------------------------------------------

class StorageRef:
    """Pickled as torch's persistent id of a storage."""

    def __init__(self, storage_type, key: str, numel: int):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class CraftedTensor:
    """Pickled as torch pickles a tensor, with any geometry."""

    def __init__(self, storage, offset, size, stride, hooks=None):
        self.args = (storage, offset, size, stride, False,
                     collections.OrderedDict() if hooks is None else hooks)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class CraftingPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def crafted_pickle(obj, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    CraftingPickler(buffer, protocol).dump(obj)
    return buffer.getvalue()


def write_torch_zip(path: Path, data_pkl: bytes, storages=None,
                    compression: int = zipfile.ZIP_STORED, byteorder: str = "little") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl, compress_type=compression)
        archive.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data, compress_type=compression)
        archive.writestr("archive/version", "3\n")
    return path


def float_storage(values) -> tuple:
    values = np.asarray(values, dtype=np.float32)
    return StorageRef(torch.FloatStorage, "0", values.size), {"0": values.tobytes()}


# --- pickle payloads: each would touch `marker` if it ran ------------------------------------

class Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Eval(Shell):
    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w')",))


class Exec(Shell):
    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w')",))


class Popen(Shell):
    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


def newobj_popen_pickle(marker) -> bytes:
    """{"w": NEWOBJ subprocess.Popen(["touch", marker]), then BUILD with a state}, written
    opcode by opcode (the pickler refuses to write a NEWOBJ of another class)."""

    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value.encode())) + value.encode()

    command = b"](" + text("touch") + text(str(marker)) + b"e"
    return (b"\x80\x02}" + text("w") + b"csubprocess\nPopen\n(" + command + b"t\x81}"
            + text("args") + command + b"sbs.")


# --- safetensors crafting ------------------------------------------------------------------

def write_safetensors(path: Path, header, data: bytes = b"", header_size=None) -> Path:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(encoded) if header_size is None else header_size
    path.write_bytes(struct.pack("<Q", size) + encoded + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# --- the model every config case pairs with --------------------------------------------------

def tiny_config() -> M2BertConfig:
    return M2BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=1,
                        intermediate_size=128, max_position_embeddings=64, long_conv_l_max=64)


@pytest.fixture(scope="module")
def tiny_state_dict():
    torch.manual_seed(5)
    return initialize_(ReferenceM2Bert(tiny_config()), 5).eval().state_dict()


def checkpoint_dir(directory: Path, state_dict, config_values) -> Path:
    directory.mkdir()
    torch.save(state_dict, directory / "pytorch_model.bin")
    config = config_values if isinstance(config_values, (bytes, str)) else json.dumps(config_values)
    (directory / "config.json").write_bytes(
        config if isinstance(config, bytes) else config.encode()
    )
    return directory


def build_corpus(root: Path, marker: Path, state_dict) -> dict:
    """name -> (path, expected error class or None, fragment of the message)."""
    cases = {}

    def add(name, path, error, fragment=""):
        cases[name] = (path, error, fragment)

    def bin_file(name):
        return root / f"{name}.bin"

    storage, storages = float_storage(np.arange(16))
    good = CraftedTensor(storage, 0, (4, 4), (4, 1))

    # pickle payloads of several kinds
    add("shell_value", write_torch_zip(bin_file("shell_value"),
        crafted_pickle({"w": Shell(marker)})), "UnsafePickleError", "posix.system")
    add("shell_top_level_protocol4", write_torch_zip(bin_file("shell_top"),
        crafted_pickle(Shell(marker), protocol=4)), "UnsafePickleError", "system")
    add("eval_protocol5", write_torch_zip(bin_file("eval"),
        crafted_pickle({"w": Eval(marker)}, protocol=5)), "UnsafePickleError", "builtins.eval")
    add("exec_as_key", write_torch_zip(bin_file("exec_key"),
        crafted_pickle({Exec(marker): good}, protocol=3), storages), "CheckpointError", "key")
    add("newobj_popen", write_torch_zip(bin_file("newobj"),
        newobj_popen_pickle(marker)), "UnsafePickleError", "subprocess.Popen")
    add("popen_in_hooks", write_torch_zip(bin_file("hooks"), crafted_pickle(
        {"w": CraftedTensor(storage, 0, (16,), (1,), hooks=Popen(marker))}), storages),
        None)  # the hooks are ignored; the tensor itself is fine
    add("shell_as_storage_type", write_torch_zip(bin_file("storage_type"), crafted_pickle(
        {"w": CraftedTensor(StorageRef(Shell(marker), "0", 16), 0, (16,), (1,))}), storages),
        "CheckpointError", "does not take")
    add("shell_in_composer_rng", write_torch_zip(root / "composer_rng.pt", crafted_pickle(
        {"state": {"model": {"model.w": good}}, "rng": [Shell(marker)]}), storages), None)
    module = torch.nn.Linear(2, 2)
    torch.save(module, root / "whole_module.pt")
    add("whole_module", root / "whole_module.pt", "UnsafePickleError", "Linear")
    (root / "bare.bin").write_bytes(pickle.dumps({"w": Shell(marker)}))
    add("bare_pickle", root / "bare.bin", "UnsafePickleError", "bare pickles")
    torch.save({"w": torch.zeros(2)}, bin_file("legacy"), _use_new_zipfile_serialization=False)
    add("legacy_format", bin_file("legacy"), "UnsafePickleError", "legacy format")

    # geometry: strided bombs, extents, sizes
    torch.save({"w": torch.zeros(10, dtype=torch.float16).as_strided((100000, 100000), (0, 0))},
               bin_file("strided_bomb"))
    add("strided_bomb", bin_file("strided_bomb"), "CheckpointError", "reuses storage elements")
    add("overlapping_rows", write_torch_zip(bin_file("overlap_rows"), crafted_pickle(
        {"w": CraftedTensor(storage, 0, (10, 4), (1, 1))}), storages),
        "CheckpointError", "reuses storage elements")
    add("beyond_storage", write_torch_zip(bin_file("beyond"), crafted_pickle(
        {"w": CraftedTensor(storage, 3, (4, 4), (4, 1))}), storages),
        "CheckpointError", "reach element 18")
    add("negative_stride", write_torch_zip(bin_file("negative"), crafted_pickle(
        {"w": CraftedTensor(storage, 0, (4,), (-1,))}), storages),
        "CheckpointError", "non-negative")
    add("float_size", write_torch_zip(bin_file("float_size"), crafted_pickle(
        {"w": CraftedTensor(storage, 0, (4.0,), (1,))}), storages),
        "CheckpointError", "non-negative integers")
    huge = StorageRef(torch.FloatStorage, "0", 10**12)
    add("declared_storage_too_big", write_torch_zip(bin_file("declared_big"), crafted_pickle(
        {"w": CraftedTensor(huge, 0, (10**12,), (1,))}), storages),
        "CheckpointError", "its tensors declare")
    add("astronomic_size", write_torch_zip(bin_file("astronomic"), crafted_pickle(
        {"w": CraftedTensor(storage, 0, (2**70, 2**70), (2**80, 1))}), storages),
        "CheckpointError", "reach element")
    big, big_storages = float_storage(np.zeros(1 << 16))
    add("many_views_of_one_storage", write_torch_zip(bin_file("many_views"), crafted_pickle(
        {f"w{i}": CraftedTensor(big, i, ((1 << 16) - i,), (1,)) for i in range(300)}),
        big_storages), "CheckpointError", "only views sharing one storage")

    # tensors that are not dense float/int data
    torch.save({"w": torch.eye(3).to_sparse()}, bin_file("sparse"))
    add("sparse", bin_file("sparse"), "CheckpointError", "sparse tensor")
    torch.save({"w": torch.zeros(3, device="meta")}, bin_file("meta"))
    add("meta", bin_file("meta"), "CheckpointError", "'meta' device")
    torch.save({0: torch.zeros(3)}, bin_file("int_key"))
    add("int_key", bin_file("int_key"), "CheckpointError", "key 0 (int)")
    torch.save({"w": torch.zeros(3).to(torch.float8_e4m3fn)}, bin_file("float8"))
    add("float8", bin_file("float8"), "CheckpointError", "float8_e4m3fn")
    torch.save({"w": torch.zeros(3, dtype=torch.complex64)}, bin_file("complex"))
    add("complex", bin_file("complex"), "CheckpointError", "ComplexFloatStorage")
    torch.save([torch.zeros(3)], bin_file("list"))
    add("not_a_dict", bin_file("list"), "CheckpointError", "not a state dict")

    # damaged archives
    torch.save(state_dict, bin_file("valid"))
    whole = bin_file("valid").read_bytes()
    for fraction in (0.1, 0.5, 0.99):
        name = f"truncated_{int(fraction * 100)}"
        bin_file(name).write_bytes(whole[: int(len(whole) * fraction)])
        add(name, bin_file(name), "CheckpointError", "damaged or truncated zip")
    add("deflated", write_torch_zip(bin_file("deflated"), crafted_pickle({"w": good}),
        storages, zipfile.ZIP_DEFLATED), "CheckpointError", "compressed")
    with zipfile.ZipFile(bin_file("no_pickle"), "w") as archive:
        archive.writestr("archive/data/0", b"\0" * 8)
    add("zip_without_data_pkl", bin_file("no_pickle"), "CheckpointError", "data.pkl")
    add("garbage_pickle", write_torch_zip(bin_file("garbage"), b"\x80\x02garbage"),
        "UnsafePickleError", "not a valid pickle")
    add("huge_pickle", write_torch_zip(bin_file("huge_pickle"), b"\x80\x02" + b"N0" * (5 << 20)),
        "CheckpointError", "at most")
    add("missing_storage", write_torch_zip(bin_file("missing_storage"),
        crafted_pickle({"w": good})), "CheckpointError", "missing from the archive")

    # safetensors
    st = root
    (st / "short.safetensors").write_bytes(b"\x01\x00")
    add("st_too_short", st / "short.safetensors", "CheckpointError", "too short")
    add("st_header_beyond_file",
        write_safetensors(st / "beyond.safetensors", {}, header_size=1 << 40),
        "CheckpointError", "header claims")
    add("st_not_json", write_safetensors(st / "notjson.safetensors", b"{not json"),
        "CheckpointError", "not valid JSON")
    add("st_overlap", write_safetensors(st / "overlap.safetensors", {
        "a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}, b"\0" * 24),
        "CheckpointError", "overlap")
    add("st_gap", write_safetensors(st / "gap.safetensors", {
        "a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 16, 24)}, b"\0" * 24),
        "CheckpointError", "gap")
    add("st_bad_dtype", write_safetensors(st / "dtype.safetensors", {
        "a": entry("F8_E4M3", [8], 0, 8)}, b"\0" * 8), "CheckpointError", "F8_E4M3")
    add("st_size_mismatch", write_safetensors(st / "mismatch.safetensors", {
        "a": entry("F32", [2**40, 2**40], 0, 8)}, b"\0" * 8), "CheckpointError", "needs")
    add("st_duplicate_name", write_safetensors(st / "duplicate.safetensors",
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
        "CheckpointError", "twice")
    add("st_truncated_data", write_safetensors(st / "truncated.safetensors", {
        "a": entry("F32", [4], 0, 16)}, b"\0" * 10), "CheckpointError", "data_offsets")
    add("st_bad_metadata", write_safetensors(st / "metadata.safetensors", {
        "__metadata__": {"x": 1}}), "CheckpointError", "__metadata__")

    # absurd configs beside valid weights
    base = tiny_config().to_dict()
    for name, change, fragment in (
        ("layers_1e9", {"num_hidden_layers": 10**9}, "num_hidden_layers must be in"),
        ("glu_string", {"use_glu_mlp": "false"}, "use_glu_mlp must be a boolean"),
        ("hidden_float", {"hidden_size": 64.0}, "hidden_size must be an integer"),
        ("nblocks_zero", {"monarch_mlp_nblocks": 0}, "monarch_mlp_nblocks must be in"),
        ("eps_negative", {"layer_norm_eps": -1}, "layer_norm_eps must be a finite number"),
        ("vocab_null", {"vocab_size": None}, "vocab_size must be an integer, got None (null)"),
    ):
        add(f"config_{name}", checkpoint_dir(root / f"config_{name}", state_dict,
            {**base, **change}), "ConfigError", fragment)
    add("config_not_json", checkpoint_dir(root / "config_not_json", state_dict, b"\xff{"),
        "ConfigError", "not a valid UTF-8 JSON object")
    add("config_list", checkpoint_dir(root / "config_list", state_dict, "[1, 2]"),
        "ConfigError", "JSON object")
    add("config_duplicate", checkpoint_dir(root / "config_duplicate", state_dict,
        '{"hidden_size": 64, "hidden_size": 64}'), "ConfigError", "twice")
    add("config_huge", checkpoint_dir(root / "config_huge", state_dict,
        " " * (2 << 20) + "{}"), "ConfigError", "bytes")
    return cases


def test_crafted_checkpoints_fail_clearly_fast_and_small_without_running_code(
    tmp_path, tiny_state_dict
):
    marker = tmp_path / "code_ran"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cases = build_corpus(corpus, marker, tiny_state_dict)
    result = subprocess.run(
        [sys.executable, str(PROBE), *(str(path) for path, _, _ in cases.values())],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    *outcomes, summary = lines
    assert len(outcomes) == len(cases)
    for (name, (path, error, fragment)), outcome in zip(cases.items(), outcomes):
        assert outcome["path"] == path.name
        print(f"{name}: {outcome['seconds'] * 1e3:.1f} ms, "
              f"{outcome['peak_bytes'] / 1e6:.2f} MB traced, {outcome['error']}")
        if error is None:
            assert outcome["error"] is None, name
        else:
            assert outcome["error"] is not None, f"{name} was accepted"
            assert outcome["error"][0] == error, (name, outcome["error"])
            assert fragment in outcome["error"][1], (name, outcome["error"])
        assert outcome["seconds"] < SECONDS_PER_FILE, name
        assert outcome["peak_bytes"] < TRACED_BYTES_PER_FILE, name
    print(f"max RSS growth over the corpus: {summary['max_rss_growth_bytes'] / 1e6:.1f} MB")
    assert summary["max_rss_growth_bytes"] < RSS_GROWTH_BYTES
    assert not marker.exists()


# --- formats that load -----------------------------------------------------------------------

def test_composer_checkpoint_loads_state_model_with_prefixes_stripped(tmp_path, tiny_state_dict):
    import random

    composer = {
        "state": {
            "model": {f"model.bert.{name}": tensor for name, tensor in tiny_state_dict.items()},
            "optimizers": {"DecoupledAdamW": {"state": {0: {"exp_avg": torch.ones(3)}}}},
            "timestamp": {"epoch": 3},
        },
        "rng": [{"python": random.getstate(), "numpy": np.random.get_state(),
                 "torch": torch.get_rng_state()}],
    }
    torch.save(composer, tmp_path / "ep3-ba1000-rank0.pt")
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    from_composer = load_model(tmp_path / "ep3-ba1000-rank0.pt")
    torch.save(tiny_state_dict, tmp_path / "pytorch_model.bin")
    from_bin = load_model(tmp_path / "pytorch_model.bin")
    ids = mx.array(np.arange(128).reshape(2, 64) % 96)
    for mine, expected in zip(from_composer(ids), from_bin(ids)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(expected))


def test_composer_masked_lm_checkpoint_with_optimizer_state_loads_as_published(tmp_path):
    """The layout of the published M2 pretraining checkpoints: Composer's HuggingFaceModel
    prefix, the MLM head with its decoder tied to the word embeddings, AdamW state."""
    from m2bert import M2BertForMaskedLM
    from m2bert_reference import ReferenceForMaskedLM, relative_l2

    config = tiny_config()
    torch.manual_seed(2)
    reference = initialize_(ReferenceForMaskedLM(config), 2).eval()
    ids = torch.arange(128).reshape(2, 64) % 96
    optimizer = torch.optim.AdamW(reference.parameters())
    reference(ids).square().mean().backward()
    optimizer.step()
    reference.zero_grad()
    torch.save({"state": {"model": {f"model.{name}": tensor
                                    for name, tensor in reference.state_dict().items()},
                          "optimizers": {"AdamW": optimizer.state_dict()}},
                "rng": [{"torch": torch.get_rng_state(), "numpy": np.random.get_state()}]},
               tmp_path / "latest-rank0.pt")
    (tmp_path / "config.json").write_text(
        json.dumps({**config.to_dict(), "architectures": ["BertForMaskedLM"]}))
    model = load_model(tmp_path / "latest-rank0.pt")
    assert type(model) is M2BertForMaskedLM
    with torch.no_grad():
        expected = reference(ids).numpy()
    assert relative_l2(model(mx.array(ids.numpy())), expected) <= 1e-5


def test_bin_reader_matches_torch_load_for_every_dtype_and_layout(tmp_path):
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(6, 10, generator=generator)
    tensors = {
        "f32": base, "f16": base.half(), "bf16": base.bfloat16(),
        "f64_exact": base.double(), "i64": torch.arange(12),
        "i8": torch.arange(-4, 4).to(torch.int8),
        "u16": torch.arange(5).to(torch.uint16), "bool": base > 0,
        "transposed": base.t(), "strided_view": base[1::2, 3:9:3], "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    tensors["tied"] = tensors["f32"]
    torch.save(tensors, tmp_path / "all.bin")
    arrays = read_tensors(tmp_path / "all.bin")
    for name, tensor in tensors.items():
        expected = tensor.float() if tensor.is_floating_point() else tensor
        assert arrays[name].shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(np.asarray(arrays[name]), expected.numpy(), err_msg=name)
        if tensor.is_floating_point():
            assert arrays[name].dtype == mx.float32, name


def test_big_endian_storages_are_read_in_their_byte_order(tmp_path):
    values = np.array([1.5, -2.0, 3.25e-3, np.inf], dtype=np.float32)
    storage = StorageRef(torch.FloatStorage, "0", 4)
    path = write_torch_zip(tmp_path / "big.bin", crafted_pickle(
        {"w": CraftedTensor(storage, 0, (2, 2), (1, 2))}),
        {"0": values.astype(">f4").tobytes()}, byteorder="big")
    np.testing.assert_array_equal(np.asarray(read_tensors(path)["w"]), values.reshape(2, 2).T)


def test_float64_is_handled_the_same_in_bin_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    exact = {"w": torch.tensor([0.5, -3.0, 2.0**-140, float("inf")], dtype=torch.float64)}
    inexact = {"w": torch.tensor([0.5, 0.1], dtype=torch.float64)}
    messages = []
    for name, tensors in (("exact", exact), ("inexact", inexact)):
        torch.save(tensors, tmp_path / f"{name}.bin")
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    for suffix in (".bin", ".safetensors"):
        loaded = read_tensors(tmp_path / f"exact{suffix}")["w"]
        assert loaded.dtype == mx.float32
        np.testing.assert_array_equal(np.asarray(loaded), exact["w"].float().numpy())
        with pytest.raises(CheckpointError) as error:
            read_tensors(tmp_path / f"inexact{suffix}")
        messages.append(str(error.value).split(": ", 1)[1])
    assert messages[0] == messages[1]
    assert "0.1 at index (1,)" in messages[0] and "tensor.float()" in messages[0]


def test_converted_model_round_trips_through_the_safetensors_reader(tmp_path, tiny_state_dict):
    from m2bert import load_state_dict, save_model

    model = M2BertModel(tiny_config())
    load_state_dict(model, {name: mx.array((t.float() if t.is_floating_point() else t).numpy())
                            for name, t in tiny_state_dict.items()})
    save_model(model, tmp_path)
    reloaded = load_model(tmp_path)
    ids = mx.array(np.arange(64).reshape(1, 64) % 96)
    for mine, expected in zip(reloaded(ids), model(ids)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(expected))


# --- config validation ---------------------------------------------------------------------

def test_every_config_field_is_validated_by_its_type():
    import dataclasses

    from m2bert.config import _checked_value

    for field in dataclasses.fields(M2BertConfig):
        with pytest.raises(ConfigError, match=field.name):
            _checked_value(field.name, str(field.type), object())


@pytest.mark.parametrize("values, fragment", [
    ({"num_hidden_layers": 10**9}, "num_hidden_layers must be in [1, 256], got 1000000000"),
    ({"use_glu_mlp": "false"}, "use_glu_mlp must be a boolean (JSON true or false), got 'false'"),
    ({"bidirectional": 1}, "bidirectional must be a boolean"),
    ({"hidden_size": 64.0}, "hidden_size must be an integer, got 64.0 (float)"),
    ({"hidden_size": True}, "hidden_size must be an integer, got True (bool)"),
    ({"monarch_mlp_nblocks": 0}, "monarch_mlp_nblocks must be in [1, 4096], got 0"),
    ({"layer_norm_eps": -1}, "layer_norm_eps must be a finite number in (0, 1], got -1.0"),
    ({"layer_norm_eps": 0}, "layer_norm_eps must be a finite number in (0, 1]"),
    ({"hyena_w": float("nan")}, "hyena_w must be a finite number"),
    ({"pad_token_id": 30528}, "pad_token_id (30528) must be below vocab_size (30528)"),
    ({"hyena_emb_dim": 4}, "hyena_emb_dim must be odd"),
    ({"monarch_mlp_nblocks": 5}, "multiples of monarch_mlp_nblocks (5)"),
    ({"num_labels": 10**9}, "num_labels must be in [1, 65536], got 1000000000"),
])
def test_config_errors_name_the_field_and_the_expected_type(values, fragment):
    with pytest.raises(ConfigError) as error:
        M2BertConfig.from_dict(values)
    assert fragment in str(error.value)


def test_config_accepts_integers_for_float_fields():
    config = M2BertConfig.from_dict({"hyena_w": 10, "layer_norm_eps": 1e-5})
    assert config.hyena_w == 10.0 and isinstance(config.hyena_w, float)


# --- command line ---------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_files(tmp_path, tiny_state_dict):
    model = tmp_path / "model"
    model.mkdir()
    torch.save(tiny_state_dict, model / "pytorch_model.bin")
    (model / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "input.txt").write_text("the cat sat\non the mat\n")
    return tmp_path


def cli_error(argv) -> str:
    from m2bert.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return str(exit_info.value)


def embed_args(files: Path, **changes):
    args = {"input": files / "input.txt", "--model": files / "model",
            "--tokenizer": files / "vocab.txt", "-o": files / "out.npy"}
    args.update(changes)
    return ["embed", args.pop("input"), *[str(v) for item in args.items() for v in item], "--quiet"]


def test_embed_checks_every_path_before_loading_the_model(cli_files):
    absent = cli_files / "absent"  # the model is never reached: each check comes first
    assert "no such file" in cli_error(embed_args(cli_files, input=absent / "in.txt",
                                                  **{"--model": absent}))
    assert "--tokenizer" in cli_error(embed_args(cli_files, **{"--tokenizer": absent / "v.txt",
                                                               "--model": absent}))
    message = cli_error(embed_args(cli_files, **{"-o": absent / "out.npy", "--model": absent}))
    assert f"the directory {absent} does not exist" in message
    message = cli_error(embed_args(cli_files, **{"-o": cli_files / "out"}))
    assert "pass a name ending in .npy" in message
    (cli_files / "latin1.txt").write_bytes("the cat\nsat on the mat\xe9\n".encode("latin-1"))
    message = cli_error(
        embed_args(cli_files, input=cli_files / "latin1.txt", **{"--model": absent})
    )
    assert "line 2 is not UTF-8" in message and "b'\\xe9'" in message
    (cli_files / "broken.json").write_text("{")
    assert "cannot be read as a tokenizer" in cli_error(
        embed_args(cli_files, **{"--tokenizer": cli_files / "broken.json"}))
    assert "error: no checkpoint at" in cli_error(embed_args(cli_files, **{"--model": absent}))


def test_convert_refuses_to_overwrite_without_force(cli_files):
    from m2bert.__main__ import main

    source, output = cli_files / "model", cli_files / "converted"
    main(["convert", str(source), "-o", str(output)])
    first = (output / "model.safetensors").read_bytes()
    (output / "model.safetensors").write_bytes(b"stale")
    assert "pass --force to overwrite" in cli_error(["convert", source, "-o", output])
    assert (output / "model.safetensors").read_bytes() == b"stale"
    main(["convert", str(source), "-o", str(output), "--force"])
    assert (output / "model.safetensors").read_bytes() == first


def test_long_documents_are_truncated_before_tokenizing(cli_files):
    from tokenizers.implementations import BertWordPieceTokenizer

    from m2bert.text import encode_truncated

    tokenizer = BertWordPieceTokenizer(str(cli_files / "vocab.txt"), lowercase=True)
    tokenizer.enable_truncation(max_length=64)
    words = ["the", "cat", "Sat,", "on", "mat", "zebra", "é"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=n)) for n in (0, 1, 30, 62, 63, 64, 65, 5000)]
    texts += ["x" * 3000, " " * 5000 + "the cat", "the\n\tcat  " * 2000]
    expected = tokenizer.encode_batch(texts)
    for text, mine, full in zip(texts, encode_truncated(tokenizer, texts), expected):
        assert mine.ids == full.ids, text[:40]

    class CountingTokenizer:
        """Records how many characters reach the tokenizer."""

        characters = 0
        truncation = tokenizer.truncation

        def encode_batch(self, batch):
            self.characters += sum(map(len, batch))
            return tokenizer.encode_batch(batch)

        def encode(self, text):
            self.characters += len(text)
            return tokenizer.encode(text)

    counting = CountingTokenizer()
    huge = "the cat sat on the mat " * 2_000_000  # 46 MB on one line
    assert encode_truncated(counting, [huge])[0].ids == tokenizer.encode(huge[:2000]).ids
    assert counting.characters <= 16 * 64
    from tokenizers import Tokenizer

    keeps_the_end = Tokenizer.from_str(tokenizer.to_str())
    keeps_the_end.enable_truncation(max_length=64, direction="left")
    with pytest.raises(ValueError, match="enable_truncation"):
        encode_truncated(keeps_the_end, texts)


def make_hub_cache(cache: Path, repo: str, files: dict, revision: str = "0" * 40) -> None:
    """The layout huggingface_hub writes: blobs by hash, snapshot links, refs/main."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "snapshots" / revision).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        (root / "snapshots" / revision / name).symlink_to(Path("..", "..", "blobs", blob))


def run_cli(args, cwd, **env):
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "m2bert", *map(str, args)], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=120)


def test_from_hub_reads_the_hub_cache_offline(cli_files, tiny_state_dict):
    pytest.importorskip("huggingface_hub")
    cache = cli_files / "hub"
    make_hub_cache(cache, "hazy/m2-tiny", {
        "config.json": (cli_files / "model" / "config.json").read_bytes(),
        "pytorch_model.bin": (cli_files / "model" / "pytorch_model.bin").read_bytes(),
        "bert_layers.py": b"raise SystemExit('remote code is never fetched or run')",
    })
    import m2bert
    import mlx_precise

    # the packages this process imported (source tree or installed wheel), nothing else
    packages = {str(Path(module.__file__).parents[1]) for module in (m2bert, mlx_precise)}
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
               "PYTHONPATH": os.pathsep.join(sorted(packages))}
    result = run_cli(["convert", "--from-hub", "hazy/m2-tiny", "-o", cli_files / "from_hub"],
                     cli_files, **offline)
    assert result.returncode == 0, result.stderr
    ids = mx.array(np.arange(64).reshape(1, 64) % 96)
    for mine, expected in zip(load_model(cli_files / "from_hub")(ids),
                              load_model(cli_files / "model")(ids)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(expected))

    result = run_cli(["embed", cli_files / "input.txt", "--from-hub", "hazy/absent", "--tokenizer",
                      cli_files / "vocab.txt", "-o", cli_files / "e.npy"], cli_files, **offline)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "hazy/absent is not in the Hugging Face cache" in result.stderr


def test_source_folder_without_extension_says_what_to_run(tmp_path):
    import shutil

    source = tmp_path / "mlx_precise"
    shutil.copytree(REPO_ROOT / "mlx_precise", source,
                    ignore=shutil.ignore_patterns("_ext*", "__pycache__"))
    result = subprocess.run([sys.executable, "-c", "import mlx_precise"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "without the built extension" in result.stderr
    assert "bash scripts/dev_build.sh" in result.stderr and "python -P" in result.stderr


def test_python_m_m2bert_from_the_repository_root_runs_or_says_what_to_run():
    result = run_cli(["--help"], REPO_ROOT)
    built_here = any((REPO_ROOT / "mlx_precise").glob("_ext*"))
    if built_here:  # a development build: the source folder is the package
        assert result.returncode == 0 and "embed" in result.stdout, result.stderr
    else:  # the source folder shadows the installed wheel
        assert result.returncode != 0 and "bash scripts/dev_build.sh" in result.stderr


def test_recompute_fraction_script_reads_a_checkpoint_and_text(cli_files):
    """benchmarks/m2bert_recompute_fraction.py on trained-weights input: a checkpoint
    directory and tokenized documents (issue 10's fraction on real weights and text)."""

    script = REPO_ROOT / "benchmarks" / "m2bert_recompute_fraction.py"
    import mlx_precise

    # the mlx_precise this test imported (the built source folder, or an installed wheel)
    paths = [Path(mlx_precise.__file__).parents[1], REPO_ROOT / "models", REPO_ROOT / "tests"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))
    result = subprocess.run([sys.executable, script, "--checkpoint", cli_files / "model",
                             "--text", cli_files / "input.txt", "--tokenizer", cli_files / "vocab.txt",
                             "--batch", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "checkpoint" in lines[0] and "L = 64" in lines[0] and "2 documents" in lines[0]
    totals = {line.split("|")[1].strip(): line.split("|")[2:5] for line in lines if line.startswith("| **all")}
    assert set(totals) == {"**all addmm / linear**", "**all rfft_conv**"}
    for outputs, recomputed, share in totals.values():
        assert int(outputs) > 0 and 0 <= int(recomputed) <= int(outputs)
