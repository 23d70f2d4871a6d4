"""M2-BERT training: retrieval losses against torch, the fine-tuning command, and the
masked-LM gradients and one AdamW step against the PyTorch reference in float32 and
float64 (docs/m2bert.md, "Gradient parity")."""

from __future__ import annotations

import json
import re

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")
F = torch.nn.functional

from m2bert import M2BertConfig, M2BertForMaskedLM, load_model, load_state_dict  # noqa: E402
from m2bert.__main__ import main as cli_main  # noqa: E402
from m2bert.losses import contrastive_loss, multiple_negatives_ranking_loss  # noqa: E402
from m2bert_reference import ReferenceForMaskedLM, ReferenceM2Bert, as_mx, initialize_  # noqa: E402

# --- losses ------------------------------------------------------------------------------


def test_multiple_negatives_ranking_loss_matches_torch(rng):
    anchors, positives, negatives = (rng.standard_normal((5, 16)).astype(np.float32)
                                     for _ in range(3))
    for extra in (None, negatives):
        candidates = positives if extra is None else np.concatenate([positives, extra])
        scores = 20.0 * F.normalize(torch.from_numpy(anchors), dim=1) @ F.normalize(
            torch.from_numpy(candidates), dim=1).T
        expected = F.cross_entropy(scores, torch.arange(5)).item()
        got = multiple_negatives_ranking_loss(
            mx.array(anchors), mx.array(positives), None if extra is None else mx.array(extra)
        ).item()
        assert abs(got - expected) <= 1e-5 * abs(expected)


def test_contrastive_loss_matches_torch(rng):
    a, b = rng.standard_normal((6, 16)).astype(np.float32), rng.standard_normal((6, 16)).astype(np.float32)
    b[:3] = a[:3] + 0.1 * b[:3]  # some close pairs, so both branches count
    labels = np.array([1, 1, 0, 0, 1, 0])
    distance = 1 - F.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b))
    y = torch.from_numpy(labels).float()
    expected = (0.5 * (y * distance**2 + (1 - y) * F.relu(0.5 - distance) ** 2)).mean().item()
    got = contrastive_loss(mx.array(a), mx.array(b), mx.array(labels)).item()
    assert abs(got - expected) <= 1e-5 * abs(expected)
    with pytest.raises(ValueError, match="one pair per row"):
        contrastive_loss(mx.array(a), mx.array(b), mx.array(labels[:3]))


# --- fine-tuning command -----------------------------------------------------------------

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "bird", "sang"]


def test_finetune_command_trains_and_saves(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = M2BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, intermediate_size=64,
        max_position_embeddings=16, long_conv_l_max=16, hyena_filter_order=16,
        hidden_dropout_prob=0.0,  # a deterministic loss curve for the assertion below
    )
    torch.manual_seed(0)
    reference = initialize_(ReferenceM2Bert(config), 0)
    source = tmp_path / "model"
    source.mkdir()
    torch.save(reference.state_dict(), source / "pytorch_model.bin")
    (source / "config.json").write_text(json.dumps(config.to_dict()))
    pairs = ["the cat sat\ta cat sat on the mat", "a dog ran\tthe dog ran far away",
             "a bird sang\tthe bird sang", "the mat\ta mat on the dog"]
    (tmp_path / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    output = tmp_path / "tuned"
    cli_main(["finetune", str(tmp_path / "pairs.tsv"), "--model", str(source), "--tokenizer",
              str(tmp_path / "vocab.txt"), "-o", str(output), "--epochs", "4",
              "--batch-size", "4", "--learning-rate", "1e-3", "--quiet"])
    tuned = load_model(output)
    before = load_model(source)
    assert not tuned.training
    ids = mx.array([[2, 5, 6, 7, 3] + [0] * 11])
    assert not mx.array_equal(tuned.encode(ids), before.encode(ids)).item()

    # the same loop from Python: the in-batch ranking loss falls on the training pairs
    from m2bert.__main__ import load_tokenizer
    from m2bert.finetune import finetune, read_pairs

    tokenizer = load_tokenizer(tmp_path / "vocab.txt", 16, 0)
    losses = finetune(before, tokenizer, read_pairs(tmp_path / "pairs.tsv", "mnrl"),
                      epochs=20, batch_size=4, learning_rate=1e-2, progress=False)
    print("mnrl losses", [round(value, 4) for value in losses])
    assert losses[-1] < 0.5 * losses[0]

    (tmp_path / "bad.tsv").write_text("only one text\n")
    with pytest.raises(SystemExit, match="line 1"):
        cli_main(["finetune", str(tmp_path / "bad.tsv"), "--model", str(source),
                  "--tokenizer", str(tmp_path / "vocab.txt"), "-o", str(tmp_path / "x")])


# --- gradient parity ---------------------------------------------------------------------

SIN_ALIAS = re.compile(r"implicit_filter(_rev)?\.\d+\.freq")


class GradientCase:
    """Masked-LM loss gradients of one batch w.r.t. every trainable parameter: torch float32
    and float64 (the published Sin frequency is one shared parameter, under its first
    name), MLX float32, extended and exact; and the parameters after one AdamW step."""

    def __init__(self, hidden=64, length=256, intermediate=128, filter_order=32, seed=1):
        vocab = 96
        self.config = M2BertConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2,
            intermediate_size=intermediate, max_position_embeddings=length,
            long_conv_l_max=length, hyena_filter_order=filter_order,
        )
        torch.manual_seed(seed)
        self.state = initialize_(ReferenceForMaskedLM(self.config), seed).state_dict()
        rng = np.random.default_rng(seed + 1)
        self.ids = rng.integers(0, vocab, (2, length))
        self.labels = np.where(rng.random(self.ids.shape) < 0.15,
                               rng.integers(1, vocab, self.ids.shape), -100)

    def torch_run(self, dtype):
        """(gradients, parameters after one AdamW step), float64 numpy by MLX name."""
        model = ReferenceForMaskedLM(self.config).to(dtype)
        model.load_state_dict(self.state)
        model.eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        model.loss(torch.from_numpy(self.ids), torch.from_numpy(self.labels)).backward()
        grads = {SIN_ALIAS.sub("sin_freq", name): p.grad.double().numpy()
                 for name, p in model.named_parameters()}
        optimizer.step()
        stepped = {SIN_ALIAS.sub("sin_freq", name): p.detach().double().numpy()
                   for name, p in model.named_parameters()}
        return grads, stepped

    def mlx_run(self, precision):
        model = M2BertForMaskedLM(self.config, precision=precision)
        load_state_dict(model, as_mx(self.state))
        loss_and_grad = nn.value_and_grad(model, lambda a, b: model.loss(a, b))
        _, grads = loss_and_grad(mx.array(self.ids), mx.array(self.labels))
        as_numpy = {name: np.asarray(g).astype(np.float64) for name, g in tree_flatten(grads)}
        optimizer = optim.AdamW(learning_rate=1e-3, weight_decay=0.01, bias_correction=True)
        optimizer.update(model, grads)
        stepped = {name: np.asarray(p).astype(np.float64)
                   for name, p in tree_flatten(model.trainable_parameters())}
        return as_numpy, stepped


def relative_error(values, reference, names) -> float:
    difference = sum(np.sum((values[n] - reference[n]) ** 2) for n in names)
    return float(np.sqrt(difference / sum(np.sum(reference[n] ** 2) for n in names)))


@pytest.fixture(scope="module")
def gradients():
    case = GradientCase()
    runs = {"torch32": case.torch_run(torch.float32), "torch64": case.torch_run(torch.float64),
            "float32": case.mlx_run("float32"), "extended": case.mlx_run("extended"),
            "exact": case.mlx_run("exact")}
    grads = {name: run[0] for name, run in runs.items()}
    stepped = {name: run[1] for name, run in runs.items()}
    return grads, stepped


def test_float32_gradients_match_torch_float32(gradients):
    grads, _ = gradients
    names = sorted(grads["torch64"])
    assert sorted(grads["float32"]) == names  # every trainable parameter, no others
    overall = relative_error(grads["float32"], grads["torch32"], names)
    per_tensor = {n: relative_error(grads["float32"], grads["torch32"], [n]) for n in names}
    worst = max(per_tensor, key=per_tensor.get)
    print(f"MLX float32 vs torch float32 gradients: overall {overall:.2e}, "
          f"worst tensor {per_tensor[worst]:.2e} ({worst})")
    assert overall <= 1e-5
    assert per_tensor[worst] <= 1e-4


def test_extended_gradients_closer_to_float64(gradients):
    grads, _ = gradients
    names = sorted(grads["torch64"])
    extended = relative_error(grads["extended"], grads["torch64"], names)
    torch32 = relative_error(grads["torch32"], grads["torch64"], names)
    print(f"gradients vs torch float64: extended {extended:.2e}, torch float32 {torch32:.2e} "
          f"({torch32 / extended:.1f}x)")
    assert extended * 2 <= torch32
    ratios = {}
    for name in names:
        own = relative_error(grads["torch32"], grads["torch64"], [name])
        if own > 1e-7:
            ratios[name] = own / relative_error(grads["extended"], grads["torch64"], [name])
    met = sum(ratio >= 2 for ratio in ratios.values())
    print(f"tensors with torch float32 error > 1e-7: {len(ratios)}; extended >= 2x closer on "
          f"{met}; lowest ratio {min(ratios.values()):.2f} ({min(ratios, key=ratios.get)})")
    # The per-tensor 2x bar is met on about half the tensors, not all (docs/m2bert.md says
    # where the float32 parts of the backward set the floor); what holds is asserted here.
    assert met * 2 >= len(ratios)
    assert min(ratios.values()) >= 0.7


def test_one_adamw_step_in_extended_is_closer_to_float64(gradients):
    _, stepped = gradients
    names = sorted(stepped["torch64"])
    extended_error = relative_error(stepped["extended"], stepped["torch64"], names)
    torch32_error = relative_error(stepped["torch32"], stepped["torch64"], names)
    print(f"parameters after one AdamW step vs torch float64: extended {extended_error:.2e}, "
          f"torch float32 {torch32_error:.2e}, MLX float32 "
          f"{relative_error(stepped['float32'], stepped['torch64'], names):.2e}")
    assert extended_error < torch32_error


def noise_floor(expected):
    """(floor, resolved): 2^-40 of the tensor's largest float64 gradient, and the elements
    above it (or exactly zero), whose float32 rounding float64 resolves."""
    floor = 2.0**-40 * np.max(np.abs(expected))
    return floor, (np.abs(expected) >= floor) | (expected == 0)


def rounded_once_counts(exact, reference):
    """(equal, elements, equal above the noise floor, elements above it) of exact-mode
    gradients against float32(torch float64 gradient), asserting every element within
    one rounding of float64 plus the floor.

    Some elements of pos_emb.z have a true gradient far below float64's resolution of
    the long convolutions' gradients: the last position (the reverse filter's last tap
    reaches no output, so its share is zero) and the late positions, where the filter's
    decay exp(-t |deltas|) scales the gradient down to 1e-18 of the tensor's largest.
    Both sides give FFT noise there (below 2^-40 of the largest entry): such elements are
    counted apart, and asserted to lie in pos_emb.z only."""
    counts = np.zeros(4, dtype=np.int64)
    for name in sorted(reference):
        expected, got = reference[name], exact[name]
        same = got == expected.astype(np.float32)
        floor, resolved = noise_floor(expected)
        counts += [np.sum(same), same.size, np.sum(same & resolved), np.sum(resolved)]
        assert np.all(resolved) or name.endswith("pos_emb.z"), name
        # at most one rounding (half an ulp; a double rounding reaches an ulp) above the floor
        assert np.all(np.abs(got - expected) <= 2.0**-23 * np.abs(expected) + floor), name
    return counts


def test_exact_gradients_are_the_float64_gradients_rounded_once(gradients):
    """precision="exact" carries the gradient as pairs from the loss to every parameter
    (docs/m2bert.md): each element is float32(torch float64's gradient)."""
    grads, _ = gradients
    names = sorted(grads["torch64"])
    assert sorted(grads["exact"]) == names
    equal, total, resolved_equal, resolved_total = rounded_once_counts(
        grads["exact"], grads["torch64"])
    overall = relative_error(grads["exact"], grads["torch64"], names)
    print(f"exact gradients == float32(torch float64): {equal / total:.4%} of {total} "
          f"elements; {resolved_equal / resolved_total:.4%} of the {resolved_total} above "
          f"float64's noise floor; relative L2 {overall:.2e}")
    assert resolved_equal >= 0.9999 * resolved_total


def test_exact_gradients_on_fresh_weights_and_batch():
    """The same on a fresh random model and batch each run (smaller: hidden 32, L 128)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"gradient case seed {seed}")
    case = GradientCase(hidden=32, length=128, intermediate=64, filter_order=16, seed=seed)
    reference, _ = case.torch_run(torch.float64)
    exact, _ = case.mlx_run("exact")
    equal, total, resolved_equal, resolved_total = rounded_once_counts(exact, reference)
    print(f"exact == float32(torch float64): {equal / total:.4%} of {total}; "
          f"{resolved_equal / resolved_total:.4%} above the noise floor")
    assert resolved_equal >= 0.9999 * resolved_total


def test_exact_gradients_meet_the_per_tensor_bar(gradients):
    """Issue #12's bar with exact-mode gradients: 2x closer to torch float64 than torch
    float32, overall and for every tensor where torch float32's own error exceeds 1e-7."""
    grads, _ = gradients
    names = sorted(grads["torch64"])
    exact = relative_error(grads["exact"], grads["torch64"], names)
    torch32 = relative_error(grads["torch32"], grads["torch64"], names)
    assert exact * 2 <= torch32
    ratios = {}
    for name in names:
        own = relative_error(grads["torch32"], grads["torch64"], [name])
        if own > 1e-7:
            ratios[name] = own / relative_error(grads["exact"], grads["torch64"], [name])
    lowest = min(ratios, key=ratios.get)
    print(f"exact vs torch float64: {exact:.2e} ({torch32 / exact:.1f}x closer than torch "
          f"float32); {len(ratios)} tensors with torch float32 error > 1e-7, lowest ratio "
          f"{ratios[lowest]:.1f} ({lowest})")
    assert ratios[lowest] >= 2


def test_one_adamw_step_in_exact_is_closer_to_float64(gradients):
    _, stepped = gradients
    names = sorted(stepped["torch64"])
    exact_error = relative_error(stepped["exact"], stepped["torch64"], names)
    torch32_error = relative_error(stepped["torch32"], stepped["torch64"], names)
    print(f"parameters after one AdamW step vs torch float64: exact {exact_error:.2e}, "
          f"torch float32 {torch32_error:.2e}")
    assert exact_error < torch32_error
