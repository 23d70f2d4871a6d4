"""The divergence tracer (mlx_precise.trace) on a generic two-layer pair, and M2-BERT
(m2bert.tracing) against the PyTorch reference (tests/m2bert_reference.py): clean runs,
deliberately wrong parameters it must name, the command line."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_precise.trace import _metrics, compare  # noqa: E402
from m2bert import M2BertConfig, M2BertModel, load_state_dict, trace  # noqa: E402
from m2bert.__main__ import main as cli_main  # noqa: E402
from m2bert_reference import ReferenceM2Bert, initialize_  # noqa: E402

BUDGET = 1e-5  # float32 sites add ~1e-7; a parameter 1 % off adds ~1e-4 and more


class TorchPair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(16, 32)
        self.second = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


class MlxPair(mlx.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = mlx.nn.Linear(16, 32)
        self.second = mlx.nn.Linear(32, 8)

    def __call__(self, x):
        return self.second(mx.tanh(self.first(x)))


def copy_parameters(torch_model, mlx_model):
    mlx_model.load_weights(
        [(name, mx.array(value.detach().float().numpy()))
         for name, value in torch_model.state_dict().items()], strict=True)


@pytest.fixture
def pair(rng):
    torch.manual_seed(int(rng.integers(2**31)))
    torch_model, mlx_model = TorchPair(), MlxPair()
    copy_parameters(torch_model, mlx_model)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    return torch_model, mlx_model, x


def test_metrics_count_ulps_and_bit_equal_elements():
    reference = np.array([1.0, -2.0, 3.5, 0.0], dtype=np.float32)
    value = reference.copy()
    value[1] = np.nextafter(value[1], np.float32(0))  # one ULP toward zero
    value[2] = np.nextafter(np.nextafter(value[2], np.float32(9)), np.float32(9))
    relative, max_ulp, bit_equal = _metrics(value, reference.astype(np.float64))
    assert max_ulp == 2 and bit_equal == 0.5
    assert 0 < relative < 1e-6
    assert _metrics(reference, reference) == (0.0, 0, 1.0)


def test_two_layer_pair(pair, tmp_path):
    torch_model, mlx_model, x = pair
    report = compare(torch_model, mlx_model, (torch.from_numpy(x),), (mx.array(x),))
    assert [site.name for site in report.sites] == ["first", "second", ""]
    for site in report.sites:
        assert site.relative_l2 < 1e-6 and site.added is not None and site.added < 1e-6
    assert report.first_divergence(BUDGET) is None
    text = report.to_markdown(BUDGET)
    assert "| 1 | `second` | 4x8 |" in text and "first divergence (budget 1e-05): none" in text
    report.plot(tmp_path / "pair.png", BUDGET)
    assert (tmp_path / "pair.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shared_module_is_recorded_once_per_call_and_restored(pair):
    torch_model, mlx_model, x = pair

    class Twice(mlx.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.a, self.b = layer, layer  # one module under two names

        def __call__(self, h):
            return self.b(mx.tanh(self.a(h)))

    class TorchTwice(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.a = self.b = layer

        def forward(self, h):
            return self.b(torch.tanh(self.a(h)))

    square_t = torch.nn.Linear(16, 16)
    square_m = mlx.nn.Linear(16, 16)
    square_m.load_weights([(n, mx.array(v.detach().numpy())) for n, v in
                           square_t.state_dict().items()])
    twice = Twice(square_m)
    report = compare(TorchTwice(square_t), twice, (torch.from_numpy(x),), (mx.array(x),))
    assert [site.name for site in report.sites] == ["a#0", "a#1", ""]
    assert type(square_m) is mlx.nn.Linear and "_trace_log" not in square_m.__dict__


def test_two_layer_pair_against_float64_and_a_wrong_parameter(pair):
    torch_model, mlx_model, x = pair
    reference = torch_model.double()
    mlx_model.second.bias = mlx_model.second.bias + mx.array(1e-2, dtype=mx.float32)
    report = compare(reference, mlx_model, (torch.from_numpy(x).double(),), (mx.array(x),))
    first, second = report.sites[:2]
    assert first.added < 1e-6  # float32 rounding of 16-term dot products (ULPs can be many where they cancel)
    assert report.first_divergence(BUDGET).name == "second"
    assert second.added > 1e-3  # found from the torch side's input: the error is its own


# ---------------------------------------------------------------- M2-BERT

VOCAB, HIDDEN, SEQ_LEN = 64, 32, 64


@pytest.fixture(scope="module")
def m2():
    config = M2BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                          intermediate_size=2 * HIDDEN, max_position_embeddings=SEQ_LEN,
                          long_conv_l_max=SEQ_LEN, hyena_filter_order=32)
    seed = int(np.random.SeedSequence().entropy % 2**31)  # fresh each run
    print(f"m2 seed {seed}")
    torch.manual_seed(seed)
    reference = initialize_(ReferenceM2Bert(config), seed=seed).eval()
    state = reference.state_dict()
    model = M2BertModel(config)
    load_state_dict(model, {name: mx.array((t.float() if t.is_floating_point() else t).numpy())
                            for name, t in state.items()})
    token_ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=torch.Generator().manual_seed(seed + 1))
    return config, reference, state, model, token_ids


def test_m2bert_against_the_reference(m2):
    config, reference, _, model, token_ids = m2
    report = trace(reference, model, token_ids)
    names = [site.name for site in report.sites]
    mixer = "encoder.layer.1.attention"
    expected_order = [
        f"{mixer}.in_linear", f"{mixer}.short_filter", f"{mixer}.v*x1",
        f"{mixer}.filter_fn.implicit_filter.0", f"{mixer}.filter_fn.implicit_filter.1",
        f"{mixer}.filter_fn.implicit_filter.6", f"{mixer}.filter_fn.modulation#0",
        f"{mixer}.filter_fn.implicit_filter_rev.5", f"{mixer}.filter_fn.modulation#1",
        f"{mixer}.filter_fn", f"{mixer}.y*x2", f"{mixer}.filter_fn2", f"{mixer}.y+yu",
        f"{mixer}.out_linear", mixer, "encoder.layer.1.mlp.wo", "encoder.layer.1",
        "pooler.dense", "pooler", "",
    ]
    positions = [names.index(name) for name in expected_order]
    assert positions == sorted(positions), names
    by_name = {site.name: site for site in report.sites}
    for layer in range(config.num_hidden_layers):
        for op in ("v*x1", "y*x2", "y+yu"):
            # one float32 multiply or add on the torch side's inputs: the same bits
            assert by_name[f"encoder.layer.{layer}.attention.{op}"].added == 0.0
    assert by_name["embeddings.word_embeddings"].bit_equal == 1.0
    assert report.first_divergence(BUDGET) is None, report.to_markdown()
    assert by_name[""].relative_l2 < 1e-5


def test_m2bert_extended_against_float64(m2):
    config, _, state, model, token_ids = m2
    reference64 = ReferenceM2Bert(config).double().eval()
    reference64.load_state_dict(state)
    report = trace(reference64, model, token_ids, precision="extended")
    by_name = {site.name: site for site in report.sites}
    # Linears and layer norms round once: within half an ULP of the float64 value when
    # fed the float64 side's inputs rounded to float32... up to that input rounding.
    assert by_name["encoder.layer.0.attention.in_linear"].added < 1e-6
    assert report.first_divergence(BUDGET) is None, report.to_markdown()
    assert model.precision == "float32"  # restored


@pytest.mark.parametrize("parameter, site", [
    ("encoder.layer.1.mlp.wo.weight", "encoder.layer.1.mlp.wo"),
    ("encoder.layer.1.attention.filter_fn.implicit_filter.2.weight",
     "encoder.layer.1.attention.filter_fn.implicit_filter.2"),
    ("encoder.layer.1.attention.short_filter.bias", "encoder.layer.1.attention.short_filter"),
])
def test_m2bert_names_a_wrong_parameter_in_layer_1(m2, parameter, site):
    config, reference, state, _, token_ids = m2
    model = M2BertModel(config)
    tensors = {name: mx.array((t.float() if t.is_floating_point() else t).numpy())
               for name, t in state.items()}
    load_state_dict(model, tensors)
    wrong = dict(tensors)
    wrong[parameter] = tensors[parameter] * mx.array(1.01, dtype=mx.float32)
    model.load_weights([(parameter, wrong[parameter])], strict=False)
    report = trace(reference, model, token_ids)
    first = report.first_divergence(BUDGET)
    assert first is not None and first.name == site, report.to_markdown()
    assert first.added > 10 * BUDGET


def test_cli_trace(m2, tmp_path, capsys):
    config, reference, state, _, _ = m2
    model_dir = tmp_path / "checkpoint"
    model_dir.mkdir()
    torch.save(state, model_dir / "pytorch_model.bin")
    (model_dir / "config.json").write_text(json.dumps(config.to_dict()))
    # A stand-in for the published bert/src: the reference under the published names.
    src = tmp_path / "m2" / "bert" / "src"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "configuration_bert.py").write_text(
        "class BertConfig:\n    def __init__(self, **values):\n"
        "        self.__dict__.update(values)\n")
    (src / "bert_layers.py").write_text(
        "from m2bert_reference import ReferenceM2Bert\n\n"
        "class BertModel(ReferenceM2Bert):\n"
        "    def __init__(self, config, add_pooling_layer=True):\n"
        "        super().__init__(config)\n")
    report_path = tmp_path / "report.md"
    cli_main(["trace", "--model", str(model_dir), "--torch-src", str(src), "-o",
              str(report_path), "--seed", "5"])
    out = capsys.readouterr().out
    assert out.strip().endswith("first divergence: none"), out
    assert "`encoder.layer.1.attention.y*x2`" in report_path.read_text()
    assert report_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
