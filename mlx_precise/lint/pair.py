"""``--pair TORCH_FILE MLX_FILE``: settings a port must copy from the torch file, compared
across the two files: eps values, FFT normalisation, convolution padding, GELU variant.
Findings point into the MLX file (the port is what gets fixed) and name the torch line."""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import Dict, List, Tuple

from .rules import ERROR, WARNING, Finding, _constant, _literal_value, import_aliases, \
    make_finding, qualified_name

Located = Tuple[object, ast.AST]  # (value, node)

EXACT, TANH, FAST = "exact (erf)", "tanh approximation", "sigmoid approximation"
# transformers' ACT2FN names and what they compute
_HF_GELU = {"gelu": EXACT, "gelu_new": TANH, "gelu_pytorch_tanh": TANH, "gelu_fast": TANH,
            "quick_gelu": FAST}
_TORCH_APPROX = {"none": EXACT, "tanh": TANH}
_MLX_APPROX = {"none": EXACT, "precise": TANH, "tanh": TANH, "fast": FAST}
_GELU_TANH_CONSTANT = 0.044715


class PairFacts:
    """What one file says about eps, FFT norm, padding and GELU, with locations."""

    def __init__(self, tree: ast.Module):
        self.aliases = import_aliases(tree)
        self.eps: List[Located] = []
        self.fft: List[Tuple[str, str, ast.AST]] = []  # (function, norm, node)
        self.conv_padding: List[Located] = []
        self.padding_mode: List[Located] = []
        self.gelu: List[Located] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                self._call(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                self._assignment(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._defaults(node)
            elif isinstance(node, ast.Constant) and node.value == _GELU_TANH_CONSTANT:
                self.gelu.append((TANH, node))

    def _call(self, call: ast.Call) -> None:
        name = qualified_name(call.func, self.aliases) or ""
        last = name.split(".")[-1]
        keywords = {k.arg: k.value for k in call.keywords if k.arg}
        for key, value in keywords.items():
            literal = _literal_value(value)
            if key.endswith("eps") and literal is not None:
                self.eps.append((float(literal), value))
        if name.startswith(("torch.fft.", "mlx.core.fft.", "numpy.fft.")):
            norm = _constant(keywords["norm"]) if "norm" in keywords else "backward"
            self.fft.append((last, norm or "backward", call))
        if last.lower() in ("conv1d", "conv2d", "conv3d") and "padding" in keywords:
            value = keywords["padding"]
            literal = _literal_value(value) if _literal_value(value) is not None \
                else _constant(value)
            if literal is not None:
                self.conv_padding.append((literal, value))
            if "padding_mode" in keywords:
                self.padding_mode.append((_constant(keywords["padding_mode"]), call))
        if last in ("gelu", "GELU"):
            approx = keywords.get("approximate", keywords.get("approx"))
            table = _MLX_APPROX if name.startswith("mlx.") else _TORCH_APPROX
            self.gelu.append((table.get(_constant(approx) if approx is not None else "none",
                                        EXACT), call))
        elif name in ("mlx.nn.gelu_approx",):
            self.gelu.append((TANH, call))
        elif name in ("mlx.nn.gelu_fast_approx",):
            self.gelu.append((FAST, call))
        elif name in ("mlx.core.erf", "torch.erf", "torch.special.erf"):
            self.gelu.append((EXACT, call))

    def _assignment(self, node) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        literal = _literal_value(node.value) if node.value is not None else None
        for target in targets:
            name = target.attr if isinstance(target, ast.Attribute) else \
                target.id if isinstance(target, ast.Name) else ""
            if name.lower().endswith("eps") and literal is not None:
                self.eps.append((float(literal), node.value))
            if name in ("hidden_act", "hidden_activation") and isinstance(node.value, ast.Constant):
                if node.value.value in _HF_GELU:
                    self.gelu.append((_HF_GELU[node.value.value], node.value))

    def _defaults(self, function) -> None:
        arguments = function.args
        positional = arguments.posonlyargs + arguments.args
        pairs = list(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults))
        pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d]
        for arg, default in pairs:
            literal = _literal_value(default)
            if arg.arg.lower().endswith("eps") and literal is not None:
                self.eps.append((float(literal), default))


def _where(path: str, node: ast.AST) -> str:
    return f"{path}:{node.lineno}"


def _values(located: List[Located]) -> Dict[object, ast.AST]:
    first: Dict[object, ast.AST] = {}
    for value, node in located:
        first.setdefault(value, node)
    return first


def compare_pair(torch_path: str, torch_tree: ast.Module, mlx_path: str,
                 mlx_tree: ast.Module) -> List[Finding]:
    torch_facts, mlx_facts = PairFacts(torch_tree), PairFacts(mlx_tree)
    findings: List[Finding] = []

    def add(node, rule, severity, message):
        findings.append(make_finding(mlx_path, node, rule, severity, message))

    def values_not_in_torch(rule, describe, torch_located, mlx_located):
        torch_values = _values(torch_located)
        for value, node in mlx_located:
            if torch_values and value not in torch_values:
                listed = ", ".join(f"{describe(v)} ({_where(torch_path, n)})"
                                   for v, n in torch_values.items())
                add(node, rule, ERROR, f"{describe(value)} here; the torch file uses {listed}")

    values_not_in_torch("MP101", lambda v: f"eps {v:g}", torch_facts.eps, mlx_facts.eps)
    values_not_in_torch("MP103", lambda v: f"convolution padding {v!r}",
                        torch_facts.conv_padding, mlx_facts.conv_padding)

    torch_norms: Dict[str, Dict[str, ast.AST]] = defaultdict(dict)
    for function, norm, node in torch_facts.fft:
        torch_norms[function].setdefault(norm, node)
    for function, norm, node in mlx_facts.fft:
        others = {n: where for n, where in torch_norms.get(function, {}).items() if n != norm}
        if others and norm not in torch_norms[function]:
            listed = ", ".join(f"norm={n!r} ({_where(torch_path, w)})" for n, w in others.items())
            add(node, "MP102", WARNING,
                f"{function} here normalises with norm={norm!r} (mx.fft has no other); the "
                f"torch file uses {listed}: the 1/n lands elsewhere, so results round "
                f"differently")

    for mode, node in torch_facts.padding_mode:
        if mode not in (None, "zeros") and mlx_facts.conv_padding:
            add(mlx_facts.conv_padding[0][1], "MP103", ERROR,
                f"the torch file pads its convolution with padding_mode={mode!r} "
                f"({_where(torch_path, node)}); MLX convolutions pad with zeros")

    torch_gelu = _values(torch_facts.gelu)
    mlx_gelu = _values(mlx_facts.gelu)
    if torch_gelu and mlx_gelu:
        for variant, node in mlx_gelu.items():
            if variant not in torch_gelu:
                listed = ", ".join(f"{v} ({_where(torch_path, n)})" for v, n in torch_gelu.items())
                add(node, "MP104", ERROR, f"GELU {variant} here; the torch file uses {listed}")
        shared = [v for v in mlx_gelu if v in torch_gelu]
        missing = [v for v in torch_gelu if v not in mlx_gelu] if shared else []
        for variant in missing:
            add(next(iter(mlx_gelu.values())), "MP104", ERROR,
                f"the torch file uses GELU {variant} ({_where(torch_path, torch_gelu[variant])}), "
                f"which this file never computes")
    return findings
