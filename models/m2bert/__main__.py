"""``python -m m2bert embed|convert``: sentence embeddings of a text file, checkpoint conversion.

embed: one document per non-empty line of the input file, tokenized with a local
tokenizer (``tokenizer.json`` or a WordPiece ``vocab.txt``; nothing is downloaded),
truncated and padded to the model's max length as the reference does (it has no
attention mask, so the padding takes part in the long convolutions), embedded in batches;
writes a ``(documents, hidden)`` float32 .npy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence

import mlx.core as mx
import numpy as np

from .checkpoint import load_model, save_model
from .config import M2BertConfig
from .model import M2BertModel
from .ops import PRECISIONS


def load_tokenizer(path: Path, max_length: int, pad_id: int):
    """A ``tokenizers.Tokenizer`` that truncates and pads every input to max_length."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
    elif path.suffix == ".txt":
        # bert-base-uncased, the tokenizer the M2-BERT checkpoints were trained with
        tokenizer = BertWordPieceTokenizer(str(path), lowercase=True)
    else:
        raise SystemExit(
            f"--tokenizer {path}: pass a tokenizer.json or a WordPiece vocab.txt"
        )
    pad_token = tokenizer.id_to_token(pad_id)
    if pad_token is None:
        raise SystemExit(f"--tokenizer {path} has no token with the model's pad id {pad_id}")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def read_documents(path: Path) -> List[str]:
    with open(path, encoding="utf-8") as handle:
        documents = [line.rstrip("\n") for line in handle if line.strip()]
    if not documents:
        raise SystemExit(f"{path} holds no text: put one document per line")
    return documents


def embed_documents(
    model: M2BertModel, tokenizer, documents: Sequence[str], batch_size: int, progress: bool
) -> np.ndarray:
    from tqdm import tqdm

    rows = []
    with tqdm(total=len(documents), unit="doc", disable=not progress) as bar:
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            encodings = tokenizer.encode_batch(list(batch))
            token_ids = mx.array([encoding.ids for encoding in encodings], dtype=mx.int32)
            embeddings = model.encode(token_ids)
            mx.eval(embeddings)
            rows.append(np.asarray(embeddings))
            bar.update(len(batch))
    return np.concatenate(rows, axis=0)


def command_embed(args: argparse.Namespace) -> None:
    model = load_model(args.model, precision=args.precision)
    tokenizer = load_tokenizer(args.tokenizer, model.config.max_length, model.config.pad_token_id)
    documents = read_documents(args.input)
    embeddings = embed_documents(model, tokenizer, documents, args.batch_size, not args.quiet)
    np.save(args.output, embeddings)
    if not args.quiet:
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.output}")


def command_convert(args: argparse.Namespace) -> None:
    config = None if args.config is None else M2BertConfig.from_json(args.config)
    model = load_model(args.checkpoint, config=config)
    weights = save_model(model, args.output)
    print(f"wrote {weights} and {weights.parent / 'config.json'}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m m2bert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed one document per line of a text file")
    embed.add_argument("input", type=Path, help="UTF-8 text file, one document per line")
    embed.add_argument("--model", required=True, type=Path,
                       help="checkpoint directory (config.json + model.safetensors or "
                            "pytorch_model.bin) or weights file beside a config.json")
    embed.add_argument("--tokenizer", required=True, type=Path,
                       help="local tokenizer.json or WordPiece vocab.txt")
    embed.add_argument("-o", "--output", required=True, type=Path, help="output .npy path")
    embed.add_argument("--precision", choices=PRECISIONS, default="float32")
    embed.add_argument("--batch-size", type=positive_int, default=4)
    embed.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    embed.set_defaults(run=command_embed)

    convert = commands.add_parser(
        "convert", help="write an MLX model.safetensors + config.json from a checkpoint"
    )
    convert.add_argument("checkpoint", type=Path,
                         help="pytorch_model.bin, .safetensors, or a checkpoint directory")
    convert.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    convert.add_argument("--config", type=Path,
                         help="config.json to use when none lies beside the checkpoint")
    convert.set_defaults(run=command_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
