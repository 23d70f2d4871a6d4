"""A numerics linter for code that ports models between PyTorch and MLX.

    python -m mlx_precise.lint PATH...            # or: mlx-precise-lint PATH...
    python -m mlx_precise.lint --pair model_torch.py model_mlx.py
    python -m mlx_precise.lint --format json models/

Rules (``RULES``): Python scalars in array arithmetic (MP001), arrays turned into Python
scalars (MP002), numpy in compute paths (MP003), ``mx.fft`` of float64 (MP004), FFT
convolutions composed from ``mx.fft`` (MP005), ``mx.fast.layer_norm`` / ``mx.addmm``
(MP006), float64 on a GPU stream (MP007), TF32 matmuls (MP008); across a torch file and
its port (``--pair``): eps (MP101), FFT norm (MP102), padding (MP103), GELU (MP104).
Compute code is ``__call__`` / ``forward`` and every function that takes or returns an
array (annotated ``mx.array`` / ``torch.Tensor``), unless its return annotation says it
hands something else to the host (``-> float``, ``-> None``, ``-> np.ndarray``, ...). A line ending in
``# mlx-precise: ignore[MP006]`` (rules comma-separated) suppresses those rules there;
say why after it.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Iterable, List, Sequence, Union

from .pair import compare_pair
from .rules import ERROR, RULES, WARNING, FileAnalysis, Finding, Rule

__all__ = ["ERROR", "RULES", "WARNING", "Finding", "Rule", "lint_pair", "lint_paths",
           "lint_source"]

_SUPPRESSION = re.compile(r"#\s*mlx-precise:\s*ignore\[([A-Z0-9,\s]+)\]")
PathLike = Union[str, os.PathLike]


def _suppressed_rules(source: str) -> dict:
    """Line number -> rules suppressed on it."""
    table = {}
    for number, line in enumerate(source.splitlines(), start=1):
        match = _SUPPRESSION.search(line)
        if match:
            table[number] = {rule.strip() for rule in match.group(1).split(",") if rule.strip()}
    return table


def _unsuppressed(findings: Iterable[Finding], source: str) -> List[Finding]:
    table = _suppressed_rules(source)
    return [
        finding for finding in findings
        if not any(finding.rule in table.get(line, ())
                   for line in range(finding.line, max(finding.line, finding.end_line) + 1))
    ]


def _parse(source: str, path: str):
    try:
        return ast.parse(source, filename=path), None
    except SyntaxError as error:
        return None, Finding(path, error.lineno or 1, error.offset or 1, "MP000", ERROR,
                             f"cannot parse: {error.msg}", "fix the syntax error")


def lint_source(source: str, path: str = "<string>") -> List[Finding]:
    """Findings for one module's source, suppressions applied, in line order."""
    tree, error = _parse(source, path)
    if error is not None:
        return [error]
    findings = FileAnalysis(tree, path).run()
    return sorted(_unsuppressed(findings, source), key=lambda f: (f.line, f.col, f.rule))


def _python_files(paths: Sequence[PathLike]) -> List[Path]:
    files: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.py")
                                if not any(part.startswith(".") for part in p.parts)))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return files


def lint_paths(paths: Sequence[PathLike]) -> List[Finding]:
    """Findings for every ``.py`` file named or under a named directory."""
    findings: List[Finding] = []
    for path in _python_files(paths):
        findings.extend(lint_source(path.read_text(encoding="utf-8"), str(path)))
    return findings


def lint_pair(torch_path: PathLike, mlx_path: PathLike) -> List[Finding]:
    """The cross-file check: eps, FFT norm, padding and GELU of a port against its torch
    file; findings point into the MLX file."""
    torch_source = Path(torch_path).read_text(encoding="utf-8")
    mlx_source = Path(mlx_path).read_text(encoding="utf-8")
    torch_tree, error = _parse(torch_source, str(torch_path))
    if error is not None:
        return [error]
    mlx_tree, error = _parse(mlx_source, str(mlx_path))
    if error is not None:
        return [error]
    findings = compare_pair(str(torch_path), torch_tree, str(mlx_path), mlx_tree)
    return sorted(_unsuppressed(findings, mlx_source), key=lambda f: (f.line, f.col, f.rule))
