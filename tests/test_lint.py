"""The numerics linter (mlx_precise.lint): a flagged and a clean fixture for every rule,
the pair check, output formats, suppressions, speed, idiomatic MLX model code, and the
project's own code (linted here, at test time, so whatever lands on main is checked)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlx_precise.lint import ERROR, RULES, WARNING, lint_pair, lint_paths, lint_source
from mlx_precise.lint.__main__ import main as lint_main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "lint_fixtures"

HEADER = """\
import os
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch
"""


def findings_of(body: str):
    return lint_source(HEADER + textwrap.dedent(body), "fixture.py")


def rules_of(body: str):
    return [(f.rule, f.severity) for f in findings_of(body)]


# (rule, flagged source, expected severity, clean source); each clean source is the fix
# the rule advises, or the same code outside compute paths.
RULE_CASES = [
    ("MP001", """
        def scale(x: mx.array) -> mx.array:
            return x * 0.1
     """, ERROR, """
        TENTH = mx.array(0.1, dtype=mx.float32)
        def scale(x: mx.array) -> mx.array:
            return x * TENTH + 0.5 * x - 2
     """),
    ("MP001", """
        class Norm(nn.Module):
            def __init__(self, eps: float = 1e-5):
                super().__init__()
                self.eps = eps
            def __call__(self, x):
                return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + self.eps)
     """, WARNING, """
        class Norm(nn.Module):
            def __init__(self, eps: float = 1e-5):
                super().__init__()
                self.eps = mx.array(eps, dtype=mx.float32)
            def __call__(self, x):
                return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + self.eps)
     """),
    ("MP001", """
        def clip(x: mx.array) -> mx.array:
            return mx.maximum(x, 1e-6)
     """, ERROR, """
        def clip(x: mx.array) -> mx.array:
            return mx.maximum(x, mx.array(1e-6, dtype=mx.float32))
     """),
    ("MP002", """
        def norm(x: mx.array) -> mx.array:
            return x / float(mx.sqrt(mx.sum(x * x)))
     """, ERROR, """
        def norm(x: mx.array) -> mx.array:
            if mx.any(mx.isnan(x)).item() or x.max().item() == 0:
                raise ValueError("NaN or zero input")
            return x / mx.sqrt(mx.sum(x * x))
     """),
    ("MP002", """
        class Head(nn.Module):
            def __call__(self, x):
                return x.max().item()
     """, ERROR, """
        class Head(nn.Module):
            def __call__(self, x):
                return x.max()
     """),
    ("MP003", """
        def softplus(x: mx.array) -> mx.array:
            return mx.array(np.log1p(np.exp(np.asarray(x))))
     """, ERROR, """
        def softplus(x: mx.array) -> mx.array:
            return mx.logaddexp(x, mx.zeros_like(x))
        def reference(x):
            return np.log1p(np.exp(np.asarray(x, dtype=np.float64)))
     """),
    ("MP003", """
        class Head(nn.Module):
            def forward(self, x):
                return torch.from_numpy(x.numpy() * 2)
     """, ERROR, """
        class Head(nn.Module):
            def forward(self, x):
                return x * 2
        def to_host(x: torch.Tensor) -> np.ndarray:
            return x.numpy()
     """),
    ("MP004", """
        def spectrum(x: mx.array) -> mx.array:
            return mx.fft.rfft(x.astype(mx.float64))
     """, ERROR, """
        def spectrum(x: mx.array) -> mx.array:
            return mx.fft.rfft(x.astype(mx.float32))
     """),
    ("MP005", """
        def long_conv(u: mx.array, k: mx.array) -> mx.array:
            n = 2 * u.shape[-1]
            k_f = mx.fft.rfft(k, n=n) / n
            return mx.fft.irfft(mx.fft.rfft(u, n=n) * k_f, n=n)
     """, WARNING, """
        import mlx_precise
        def long_conv(u: mx.array, k: mx.array) -> mx.array:
            n = 2 * u.shape[-1]
            smoothed = mx.fft.irfft(mx.fft.rfft(u, n=n), n=n)  # a round trip, no product
            return smoothed + mlx_precise.rfft_conv(u, k, n=n, precision="extended")
     """),
    ("MP006", """
        def project(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
            return mx.addmm(b, x, w)
     """, WARNING, """
        import mlx_precise
        def project(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
            return mlx_precise.addmm(b, x, w, precision="extended")
     """),
    ("MP006", """
        def norm(x: mx.array) -> mx.array:
            return mx.fast.layer_norm(x, None, None, 1e-5)
     """, WARNING, """
        import mlx_precise
        def norm(x: mx.array) -> mx.array:
            return mlx_precise.layer_norm(x, None, None, 1e-5, precision="extended")
     """),
    ("MP007", """
        def accumulate(x):
            with mx.stream(mx.gpu):
                return mx.cumsum(x.astype(mx.float64))
     """, ERROR, """
        def accumulate(x):
            with mx.stream(mx.gpu):
                y = mx.exp(x)
            return mx.cumsum(y.astype(mx.float64), stream=mx.cpu)
     """),
    ("MP007", """
        mx.set_default_device(mx.gpu)
        table = mx.zeros((4,), dtype=mx.float64)
     """, ERROR, """
        mx.set_default_device(mx.gpu)
        table = mx.zeros((4,), dtype=mx.float64, stream=mx.cpu)
     """),
    ("MP008", """
        torch.backends.cuda.matmul.allow_tf32 = True
     """, ERROR, """
        torch.backends.cuda.matmul.allow_tf32 = False
     """),
    ("MP008", """
        os.environ["MLX_ENABLE_TF32"] = "1"
     """, ERROR, """
        os.environ["MLX_ENABLE_TF32"] = "0"
     """),
    ("MP008", """
        model = torch.nn.Conv1d(8, 8, 3).cuda()
     """, WARNING, """
        torch.backends.cudnn.allow_tf32 = False
        model = torch.nn.Conv1d(8, 8, 3).cuda()
     """),
    ("MP008", """
        mx.set_default_device(mx.gpu)
        def project(x: mx.array, w: mx.array) -> mx.array:
            return x @ w
     """, WARNING, """
        os.environ.setdefault("MLX_ENABLE_TF32", "0")
        mx.set_default_device(mx.gpu)
        def project(x: mx.array, w: mx.array) -> mx.array:
            return x @ w
     """),
]


@pytest.mark.parametrize("rule, flagged, severity, clean", RULE_CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(RULE_CASES)])
def test_rule_flags_the_hazard_and_not_its_fix(rule, flagged, severity, clean):
    found = findings_of(flagged)
    assert [(f.rule, f.severity) for f in found] == [(rule, severity)], found
    finding = found[0]
    assert finding.fix == RULES[rule].fix and finding.message
    assert rules_of(clean) == []


def test_findings_give_line_and_column():
    finding, = findings_of("""
        def scale(x: mx.array) -> mx.array:
            return x *   0.1
    """)
    line = HEADER.count("\n") + 3
    assert (finding.path, finding.line, finding.col) == ("fixture.py", line, 18)


def test_exact_literals_are_not_flagged():
    # 0.5, 2, 255.0, 1e-3-free: exact in float16, bfloat16 and float32, so no rounding.
    assert rules_of("""
        def f(x: mx.array) -> mx.array:
            return (x * 0.5 + 2) / 255.0 - 1 + x ** 2
    """) == []
    # exact in float32, not in the half types: a warning
    assert rules_of("""
        def f(x: mx.array) -> mx.array:
            return x * 1000.5
    """) == [("MP001", WARNING)]


def test_non_compute_code_is_not_checked():
    # Neither function takes or returns arrays; nor is it a module's __call__ / forward.
    assert rules_of("""
        def learning_rate(step: int) -> float:
            return 0.1 * 0.95 ** step
        def report(values):
            return float(np.mean(values))
    """) == []


def test_suppression_comment():
    source = """
        def f(x: mx.array) -> mx.array:
            return x * 0.1  # mlx-precise: ignore[MP001] -- matches the torch file's literal
        def g(x: mx.array) -> mx.array:
            return x * 0.1  # mlx-precise: ignore[MP003]
    """
    found = findings_of(source)
    assert [(f.rule, f.line) for f in found] == [("MP001", HEADER.count("\n") + 5)]


PAIR_TORCH = """\
import torch
import torch.nn as nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.norm = nn.LayerNorm(dims, eps=1e-12)
        self.conv = nn.Conv1d(dims, dims, kernel_size=3, padding=2, groups=dims)

    def forward(self, x, k):
        n = 2 * x.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n) / n, n=n, norm="forward")
        return F.gelu(self.norm(self.conv(y)), approximate="tanh")
"""

PAIR_MLX_CLEAN = """\
import mlx.core as mx
import mlx.nn as nn
import mlx_precise

class Block(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.norm = nn.LayerNorm(dims, eps=1e-12)
        self.conv = nn.Conv1d(dims, dims, kernel_size=3, padding=2, groups=dims)

    def __call__(self, x, k):
        y = mlx_precise.rfft_conv(x, k, n=2 * x.shape[-1], precision="extended")
        return nn.gelu_approx(self.norm(self.conv(y)))
"""

PAIR_MLX_DIFFERENT = """\
import mlx.core as mx
import mlx.nn as nn

class Block(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.norm = nn.LayerNorm(dims, eps=1e-5)
        self.conv = nn.Conv1d(dims, dims, kernel_size=3, padding=1, groups=dims)

    def __call__(self, x, k):
        n = 2 * x.shape[-1]
        y = mx.fft.irfft(mx.fft.rfft(x, n=n) * mx.fft.rfft(k, n=n), n=n)
        return nn.gelu(self.norm(self.conv(y)))
"""


def test_pair_check(tmp_path):
    torch_file, clean, different = (tmp_path / "torch_block.py", tmp_path / "clean.py",
                                    tmp_path / "different.py")
    torch_file.write_text(PAIR_TORCH)
    clean.write_text(PAIR_MLX_CLEAN)
    different.write_text(PAIR_MLX_DIFFERENT)
    assert lint_pair(torch_file, clean) == []
    found = lint_pair(torch_file, different)
    assert sorted((f.rule, f.line) for f in found) == [
        ("MP101", 7), ("MP102", 12), ("MP103", 8), ("MP104", 13)]
    assert all(f.path == str(different) for f in found)
    eps = next(f for f in found if f.rule == "MP101")
    assert "1e-12" in eps.message and f"{torch_file}:8" in eps.message


def test_pair_on_the_m2bert_port_is_clean():
    assert lint_pair(ROOT / "tests/m2bert_reference.py", ROOT / "models/m2bert/model.py") == []


def test_cli_exit_status_and_json(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text(HEADER + "def f(x: mx.array) -> mx.array:\n    return x * 0.1\n")
    warn = tmp_path / "warn.py"
    warn.write_text(HEADER + "def f(x: mx.array) -> mx.array:\n    return mx.addmm(x, x, x)\n")
    assert lint_main([str(warn)]) == 0
    capsys.readouterr()
    assert lint_main([str(bad), "--format", "json"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1
    assert set(records[0]) == {"path", "line", "col", "rule", "severity", "message", "fix"}
    assert records[0]["rule"] == "MP001" and records[0]["severity"] == "error"


def test_module_entry_point(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(HEADER + "def f(x: mx.array) -> mx.array:\n    return x * 0.1\n")
    result = subprocess.run([sys.executable, "-P", "-m", "mlx_precise.lint", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert re.search(r"bad\.py:\d+:16: MP001 error: ", result.stdout), result.stdout


# Idiomatic MLX model code, written in mlx-examples style (tests/lint_fixtures):
# the exact findings, and why each is right.
MODEL_FIXTURES = {
    # Attention.__call__: ``(queries * self.scale)`` with ``self.scale = head_dim ** -0.5``,
    # a Python float rounded to the queries' dtype at every call (bf16/fp16 in practice,
    # where torch scales in float32): MP001 warning. Nothing else: RMSNorm passes eps to
    # mx.fast.rms_norm as an argument, softmax runs in float32 explicitly, generate()'s
    # sampling is not compute code.
    "mlx_llama_style.py": [("MP001", WARNING, 74)],
    # Convolutions, BatchNorm, ReLU, mean pooling and ``x / 255.0`` (exact in every
    # dtype): nothing to report.
    "mlx_resnet_style.py": [],
    # fft_conv composes irfft(rfft(u) * rfft(k)) from mx.fft: MP005, the rule's own case.
    # The 1e-4 and math.pi of the positional embedding are in __init__ (not compute).
    "mlx_hyena_style.py": [("MP005", WARNING, 15)],
}


@pytest.mark.parametrize("name", sorted(MODEL_FIXTURES))
def test_quiet_on_idiomatic_mlx_models(name):
    found = lint_paths([FIXTURES / name])
    assert [(f.rule, f.severity, f.line) for f in found] == MODEL_FIXTURES[name], found


def test_quiet_on_the_torch_reference():
    assert lint_paths([ROOT / "tests/m2bert_reference.py"]) == []


def test_project_code_is_clean_and_suppressions_are_justified():
    trees = [ROOT / "models/m2bert", ROOT / "mlx_precise"]
    findings = lint_paths(trees)
    assert findings == [], "\n".join(map(str, findings))
    for path in (p for tree in trees for p in tree.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "mlx-precise: ignore[" in line and "mlx_precise/lint/" not in path.as_posix():
                previous = path.read_text(encoding="utf-8").splitlines()[number - 2]
                justified = re.search(r"ignore\[[A-Z0-9, ]+\]\s*(--|#)?\s*\w", line) or \
                    previous.strip().startswith("#")
                assert justified, f"{path}:{number}: say why the finding is suppressed"


def test_fast_on_m2bert():
    start = time.perf_counter()
    lint_paths([ROOT / "models/m2bert"])
    assert time.perf_counter() - start < 1.0
