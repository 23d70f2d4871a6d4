"""Command line of the numerics linter (``python -m mlx_precise.lint``, ``mlx-precise-lint``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from . import ERROR, RULES, lint_pair, lint_paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-precise-lint",
        description="Numerics linter for PyTorch / MLX model code. Exit status 1 when an "
                    "error-level finding remains.",
        epilog="rules: " + "; ".join(f"{r.id} {r.name}" for r in RULES.values())
               + ". Suppress one line with  # mlx-precise: ignore[RULE]  and say why.")
    parser.add_argument("paths", nargs="*", help="Python files or directories")
    parser.add_argument("--pair", nargs=2, metavar=("TORCH_FILE", "MLX_FILE"),
                        help="also compare a torch file with its MLX port (eps, FFT norm, "
                             "padding, GELU variant)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.paths and not args.pair:
        parser.error("name at least one path, or --pair TORCH_FILE MLX_FILE")
    try:
        findings = lint_paths(args.paths)
        if args.pair:
            findings += lint_pair(*args.pair)
    except (FileNotFoundError, UnicodeDecodeError) as error:
        parser.error(str(error))
    if args.format == "json":
        print(json.dumps([finding.as_dict() for finding in findings], indent=1))
    else:
        for finding in findings:
            print(finding)
        errors = sum(finding.severity == ERROR for finding in findings)
        print(f"{errors} error(s), {len(findings) - errors} warning(s)", file=sys.stderr)
    return 1 if any(finding.severity == ERROR for finding in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
