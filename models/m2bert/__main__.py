"""``python -m m2bert embed|convert|finetune|trace``: embed text, convert checkpoints,
fine-tune on text pairs (finetune.py), trace vs torch.

trace: runs the MLX model and the published PyTorch model (your copy of its source) on
the same random token ids, compares them site by site (``m2bert.tracing``), writes a
markdown report and a plot, and prints the first site that adds more than the budget.

embed: one document per non-empty line of the input file, tokenized with a local
tokenizer (``tokenizer.json`` or a WordPiece ``vocab.txt``; nothing is downloaded),
truncated and padded to the model's max length as the reference does (it has no
attention mask, so the padding takes part in the long convolutions), embedded in batches;
writes a ``(documents, hidden)`` float32 .npy. Only the start of a long document is
tokenized (text.py).

The model comes from a local checkpoint or, with ``--from-hub ORG/NAME``, from the Hugging
Face Hub cache (downloaded if missing, unless HF_HUB_OFFLINE=1). Paths are checked before
the model is loaded, and errors end the command with a message, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence

import mlx.core as mx
import numpy as np

from .checkpoint import CONFIG_FILE, WEIGHT_FILES, download_from_hub, load_model, save_model
from .config import ConfigError, M2BertConfig
from .model import M2BertModel
from .ops import PRECISIONS
from .tensor_files import CheckpointError
from .finetune import LOSSES, encoder_of, finetune, read_pairs
from .heads import l2_normalize
from .text import PADDINGS, TRUNCATIONS

TOKENIZER_SUFFIXES = (".json", ".txt")


def load_tokenizer(path: Path, max_length: int, pad_id: int):
    """A ``tokenizers.Tokenizer`` that truncates and pads every input to max_length."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    try:
        if path.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(path))
        else:
            # bert-base-uncased, the tokenizer the M2-BERT checkpoints were trained with
            tokenizer = BertWordPieceTokenizer(str(path), lowercase=True)
    except Exception as error:  # tokenizers raises bare Exception for unreadable files
        raise SystemExit(f"--tokenizer {path} cannot be read as a tokenizer: {error}") from None
    pad_token = tokenizer.id_to_token(pad_id)
    if pad_token is None:
        raise SystemExit(f"--tokenizer {path} has no token with the model's pad id {pad_id}")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def read_documents(path: Path) -> List[str]:
    """The non-empty lines of a UTF-8 file; a line that is not UTF-8 is an error naming it."""
    documents = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise SystemExit(
                    f"{path}: line {number} is not UTF-8 (byte {error.start} of the line is "
                    f"{raw[error.start : error.start + 1]!r}); convert the file, e.g. "
                    f"iconv -f latin1 -t utf-8"
                ) from None
            if line.strip():
                documents.append(line.rstrip("\n"))
    if not documents:
        raise SystemExit(f"{path} holds no text: put one document per line")
    return documents


def embed_documents(
    model: M2BertModel,
    tokenizer,
    documents: Sequence[str],
    batch_size: int,
    progress: bool,
    padding: str = "max_length",
    truncation: str = "keep_sep",
    normalize: bool = False,
) -> np.ndarray:
    from tqdm import tqdm

    rows = []
    with tqdm(total=len(documents), unit="doc", disable=not progress) as bar:
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            embeddings = model.embed(batch, tokenizer, padding, truncation, batch_size)
            if normalize:
                embeddings = l2_normalize(embeddings)
            mx.eval(embeddings)
            rows.append(np.asarray(embeddings))
            bar.update(len(batch))
    return np.concatenate(rows, axis=0)



def check_file(option: str, path: Path, suffixes: Sequence[str] = ()) -> None:
    if not path.is_file():
        raise SystemExit(f"{option} {path}: no such file")
    if suffixes and path.suffix not in suffixes:
        raise SystemExit(f"{option} {path}: pass a file ending in {' or '.join(suffixes)}")


def check_output_file(path: Path, suffix: str) -> None:
    """Before any work: the output's directory exists and the name has ``suffix``."""
    if path.suffix != suffix:
        raise SystemExit(
            f"-o {path}: the output is a {suffix} file; pass a name ending in {suffix}"
        )
    if not path.parent.is_dir():
        raise SystemExit(f"-o {path}: the directory {path.parent} does not exist; create it")
    if path.is_dir():
        raise SystemExit(f"-o {path} is a directory; pass a file name")


def check_output_directory(path: Path, force: bool) -> None:
    """Before any work: ``path`` can receive a converted checkpoint without overwriting
    one, unless ``force``."""
    if path.exists() and not path.is_dir():
        raise SystemExit(f"-o {path} exists and is not a directory")
    existing = [name for name in (WEIGHT_FILES[0], CONFIG_FILE) if (path / name).exists()]
    if existing and not force:
        raise SystemExit(
            f"-o {path} already holds {' and '.join(existing)}; pass --force to overwrite"
        )


def model_source(args: argparse.Namespace) -> Path:
    """The local checkpoint to load: the given path, or the Hub snapshot's directory."""
    return download_from_hub(args.from_hub) if args.from_hub else args.model


def command_embed(args: argparse.Namespace) -> None:
    check_file("input", args.input)
    check_file("--tokenizer", args.tokenizer, TOKENIZER_SUFFIXES)
    check_output_file(args.output, ".npy")
    documents = read_documents(args.input)
    model = encoder_of(load_model(model_source(args), precision=args.precision))
    config = model.config
    tokenizer = load_tokenizer(args.tokenizer, config.max_length, config.pad_token_id)
    # the published sentence embedding of the retrieval configs (BertForSequenceClassification
    # with gather_sentence_embeddings) is L2-normalised when use_normalized_embeddings is set
    normalize = config.gather_sentence_embeddings and config.use_normalized_embeddings
    embeddings = embed_documents(
        model, tokenizer, documents, args.batch_size, not args.quiet, args.padding,
        args.truncation, normalize,
    )
    np.save(args.output, embeddings)
    if not args.quiet:
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.output}")


def command_convert(args: argparse.Namespace) -> None:
    check_output_directory(args.output, args.force)
    if args.config is not None:
        check_file("--config", args.config)
    config = None if args.config is None else M2BertConfig.from_json(args.config)
    model = load_model(model_source(args), config=config)
    weights = save_model(model, args.output)
    print(f"wrote {weights} and {weights.parent / 'config.json'}")


def command_finetune(args: argparse.Namespace) -> None:
    check_file("pairs", args.pairs)
    check_file("--tokenizer", args.tokenizer, TOKENIZER_SUFFIXES)
    check_output_directory(args.output, args.force)
    try:
        pairs = read_pairs(args.pairs, args.loss)
    except (ValueError, UnicodeDecodeError) as error:
        raise SystemExit(f"error: {error}") from None
    mx.random.seed(args.seed)  # dropout masks
    model = load_model(model_source(args), precision=args.precision)
    config = encoder_of(model).config
    tokenizer = load_tokenizer(args.tokenizer, config.max_length, config.pad_token_id)
    losses = finetune(
        model, tokenizer, pairs, args.loss, args.epochs, args.batch_size, args.learning_rate,
        args.weight_decay, args.padding, args.truncation, args.seed, not args.quiet,
    )
    weights = save_model(model, args.output)
    if not args.quiet:
        print(f"{len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; wrote {weights}")


def add_finetune_command(commands) -> None:
    finetune_parser = commands.add_parser(
        "finetune", help="fine-tune the encoder on text pairs with a retrieval loss"
    )
    finetune_parser.add_argument(
        "pairs", type=Path,
        help="UTF-8 file, one tab-separated pair per line: anchor<TAB>positive (mnrl) or "
             "text<TAB>text<TAB>0|1 (contrastive)")
    add_model_source(finetune_parser.add_mutually_exclusive_group(required=True), "--model")
    finetune_parser.add_argument("--tokenizer", required=True, type=Path,
                                 help="local tokenizer.json or WordPiece vocab.txt")
    finetune_parser.add_argument("-o", "--output", required=True, type=Path,
                                 help="directory for the fine-tuned model.safetensors + config.json")
    finetune_parser.add_argument("--force", action="store_true",
                                 help="overwrite the model.safetensors / config.json in --output")
    finetune_parser.add_argument(
        "--loss", choices=LOSSES, default="mnrl",
        help="mnrl: multiple-negatives ranking (in-batch softmax); contrastive: labelled pairs")
    finetune_parser.add_argument("--epochs", type=positive_int, default=1)
    finetune_parser.add_argument("--batch-size", type=positive_int, default=8)
    finetune_parser.add_argument("--learning-rate", type=float, default=2e-5)
    finetune_parser.add_argument("--weight-decay", type=float, default=0.01)
    finetune_parser.add_argument("--precision", choices=("float32", "extended", "dd"),
                                 default="float32")
    finetune_parser.add_argument("--seed", type=int, default=0,
                                 help="shuffling and dropout seed")
    add_text_options(finetune_parser)
    finetune_parser.add_argument("--quiet", action="store_true",
                                 help="no progress bar or summary")
    finetune_parser.set_defaults(run=command_finetune)


def command_trace(args: argparse.Namespace) -> None:
    from .tracing import load_published_torch_model, trace

    model = load_model(args.model, precision=args.precision)
    torch_model = load_published_torch_model(args.torch_src, args.model)
    length = args.length or model.config.max_length
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    token_ids = np.random.default_rng(seed).integers(
        1, model.config.vocab_size, size=(1, length), dtype=np.int64)
    report = trace(torch_model, model, token_ids)
    first = report.first_divergence(args.budget)
    plot = args.output.with_suffix(".png")
    header = (f"# M2-BERT: MLX ({args.precision}) vs published PyTorch\n\n"
              f"model `{args.model}`, random token ids (seed {seed}), length {length}; "
              f"relative L2 against the torch value; added: the MLX site run on the torch "
              f"side's inputs. Plot: `{plot.name}`.\n\n")
    args.output.write_text(header + report.to_markdown(args.budget), encoding="utf-8")
    report.plot(plot, args.budget)
    print(f"wrote {args.output} and {plot} ({len(report.sites)} sites, seed {seed})")
    print(f"first divergence: {first.name if first else 'none'}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_model_source(group, model_argument: str) -> None:
    """``model_argument`` (a local checkpoint) or ``--from-hub NAME``, exactly one."""
    help_text = ("checkpoint directory (config.json + model.safetensors or pytorch_model.bin), "
                 "or a weights file (.safetensors, .bin, Composer .pt) beside a config.json")
    if model_argument.startswith("-"):
        group.add_argument(model_argument, dest="model", type=Path, help=help_text)
    else:
        group.add_argument(model_argument, nargs="?", type=Path, help=help_text)
    group.add_argument("--from-hub", metavar="ORG/NAME",
                       help="Hugging Face Hub repository (config.json and weights are "
                            "fetched into the Hub cache; HF_HUB_OFFLINE=1 reads the cache only)")


def add_text_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--padding", choices=PADDINGS, default="max_length",
        help="max_length (default): pad every text to the model's max length, as the "
             "published model does (embeddings depend on it); longest: to the batch's "
             "longest text, faster, other embeddings")
    parser.add_argument(
        "--truncation", choices=TRUNCATIONS, default="keep_sep",
        help="keep_sep (default): Hugging Face's, [CLS] text [SEP]; published: the first "
             "max-length tokens, as embeddings_inference.py (a long text loses its [SEP])")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m m2bert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed one document per line of a text file")
    embed.add_argument("input", type=Path, help="UTF-8 text file, one document per line")
    add_model_source(embed.add_mutually_exclusive_group(required=True), "--model")
    embed.add_argument("--tokenizer", required=True, type=Path,
                       help="local tokenizer.json or WordPiece vocab.txt")
    embed.add_argument("-o", "--output", required=True, type=Path, help="output .npy path")
    embed.add_argument("--precision", choices=PRECISIONS, default="float32")
    embed.add_argument("--batch-size", type=positive_int, default=4)
    add_text_options(embed)
    embed.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    embed.set_defaults(run=command_embed)

    convert = commands.add_parser(
        "convert", help="write an MLX model.safetensors + config.json from a checkpoint"
    )
    add_model_source(convert.add_mutually_exclusive_group(required=True), "model")
    convert.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    convert.add_argument("--force", action="store_true",
                         help="overwrite the model.safetensors / config.json in --output")
    convert.add_argument("--config", type=Path,
                         help="config.json to use when none lies beside the checkpoint")
    convert.set_defaults(run=command_convert)

    add_finetune_command(commands)

    trace = commands.add_parser(
        "trace", help="compare with the published PyTorch model site by site"
    )
    trace.add_argument("--model", required=True, type=Path,
                       help="checkpoint directory: config.json + pytorch_model.bin or "
                            "model.safetensors")
    trace.add_argument("--torch-src", required=True, type=Path,
                       help="your copy of the published HazyResearch/m2 bert/src directory")
    trace.add_argument("-o", "--output", required=True, type=Path,
                       help="markdown report (the plot goes beside it, as .png)")
    trace.add_argument("--precision", choices=PRECISIONS, default="float32")
    trace.add_argument("--length", type=positive_int,
                       help="tokens per input (default: the model's max length)")
    trace.add_argument("--budget", type=float, default=1e-4,
                       help="relative L2 a site may add before it counts as the divergence")
    trace.add_argument("--seed", type=int, help="token-id seed (default: fresh, printed)")
    trace.set_defaults(run=command_trace)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CheckpointError, ConfigError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
