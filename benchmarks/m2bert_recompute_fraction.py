"""Share of M2-BERT's extended outputs that the certification sends to the exact
recompute, per op kind, on the CPU.

    PYTHONPATH=.:models:tests python benchmarks/m2bert_recompute_fraction.py \
        [--length 8192] [--layers 12] [--batch 1] [--padding 0.0] [--precision extended]
        [--checkpoint DIR] [--text FILE --tokenizer tokenizer.json|vocab.txt]

The extended and dd ops compute each output in float64 (addmm: a float64 GEMM of
the float32 inputs; rfft_conv: a float64 FFT), keep it when its error bound cannot
straddle a float32 rounding boundary, and recompute the rest exactly. The CPU
backend counts both (mlx_precise._ext.testing.recompute_counts); this script
evaluates each strict op of one forward on its own (its inputs first, then the op
with the counts reset) and sums the counts per kind: the linears by weight shape,
the Monarch block products, the long convolutions and the short 3-tap ones. The
first forward also computes the Hyena filters (their MLP linears).

Weights: a checkpoint (``--checkpoint``, anything ``m2bert.load_model`` reads; its
config fixes L and the layers), else the published initialisation
(tests/m2bert_reference.py initialize_, seed 0). Inputs: the first ``--batch`` lines of
``--text`` tokenized as ``python -m m2bert embed`` does (truncated and padded to L), else
random token ids with the last ``--padding`` share of each row the pad token (the
published inference pads every text to the model's length). The GPU certifies with its own bounds on its own
float64 products; these are the CPU's counts.
"""

import argparse
from collections import defaultdict
from pathlib import Path

import mlx.core as mx
import mlx_precise
import mlx_precise.nn as precise_nn
import torch
import numpy as np
from m2bert import M2BertConfig, M2BertModel, load_model, load_state_dict
from m2bert.__main__ import load_tokenizer, read_documents
from m2bert.finetune import encoder_of
from m2bert.text import encode_truncated
from m2bert_reference import ReferenceM2Bert, initialize_

testing = mlx_precise._ext.testing


def linear_kind(weight, config):
    out_features, in_features = weight.shape
    hidden = config.hidden_size
    if (out_features, in_features) == (3 * hidden, hidden):
        return "linear: in_linear"
    if (out_features, in_features) == (hidden, hidden):
        return "linear: out_linear, pooler"
    if hidden > config.hyena_filter_order and in_features in (
        config.hyena_emb_dim, config.hyena_filter_order
    ):
        return "linear: Hyena filter MLPs"
    return f"linear: other {weight.shape}"


def conv_kind(k):
    return "rfft_conv: short 3-tap" if k.shape[-1] <= 3 else "rfft_conv: long"


def counted(kind_of, op, counts):
    """``op`` evaluated on its own: its array inputs first, then the op with the
    recompute counts reset; its counts added to ``counts[kind_of(*args)]``."""

    def run(*args, **kwargs):
        mx.eval([a for a in args if isinstance(a, mx.array)])
        testing.reset_recompute_counts()
        out = op(*args, **kwargs)
        mx.eval(out)
        kind = kind_of(*args)
        for recomputed, outputs in testing.recompute_counts().values():
            counts[kind][0] += recomputed
            counts[kind][1] += outputs
        return out

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=None,
                        help="L for the published initialisation (default 8192); a checkpoint fixes its own")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--padding", type=float, default=0.0)
    parser.add_argument("--precision", choices=("extended", "dd"), default="extended")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (a directory or weights file)")
    parser.add_argument("--text", type=Path, help="documents, one per line (needs --tokenizer)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json or a WordPiece vocab.txt")
    args = parser.parse_args()
    if (args.text is None) != (args.tokenizer is None):
        parser.error("--text and --tokenizer go together")
    if args.checkpoint is not None and args.length is not None:
        parser.error("--length applies to the published initialisation; a checkpoint's config fixes L")
    mx.set_default_device(mx.cpu)
    if args.checkpoint is not None:
        model = encoder_of(load_model(args.checkpoint, precision=args.precision))
        config = model.config
        L = config.max_position_embeddings
        weights = f"checkpoint {args.checkpoint}"
    else:
        L = args.length or 8192
        config = M2BertConfig(max_position_embeddings=L, long_conv_l_max=L,
                              num_hidden_layers=args.layers)
        torch.manual_seed(0)
        reference = initialize_(ReferenceM2Bert(config), seed=0).eval()
        state = {n: mx.array((t.float() if t.is_floating_point() else t).numpy())
                 for n, t in reference.state_dict().items()}
        del reference
        model = M2BertModel(config, precision=args.precision)
        load_state_dict(model, state)
        weights = "published initialisation"
    if args.text is not None:
        tokenizer = load_tokenizer(args.tokenizer, L, config.pad_token_id)
        documents = read_documents(args.text)[: args.batch]
        ids = np.array([encoding.ids for encoding in encode_truncated(tokenizer, documents)])
        inputs = f"{len(documents)} documents of {args.text}"
    else:
        ids = torch.randint(1, config.vocab_size, (args.batch, L),
                            generator=torch.Generator().manual_seed(1))
        ids[:, L - int(args.padding * L):] = config.pad_token_id
        ids = ids.numpy()
        inputs = f"batch {args.batch} of random ids, {args.padding:.0%} padding"

    counts = defaultdict(lambda: [0, 0])
    originals = (precise_nn.linear, mlx_precise.linear, mlx_precise.addmm, mlx_precise.rfft_conv)
    precise_nn.linear = counted(lambda x, w, *rest: linear_kind(w, config), originals[0], counts)
    mlx_precise.linear = counted(lambda x, w, *rest: "linear: token types", originals[1], counts)
    mlx_precise.addmm = counted(lambda *rest: "addmm: Monarch blocks", originals[2], counts)
    mlx_precise.rfft_conv = counted(lambda u, k, *rest: conv_kind(k), originals[3], counts)
    try:
        mx.eval(model(mx.array(ids)))
    finally:
        precise_nn.linear, mlx_precise.linear, mlx_precise.addmm, mlx_precise.rfft_conv = originals

    print(f"M2-BERT ({config.num_hidden_layers} layers, hidden {config.hidden_size}), {weights}, "
          f"L = {L}, {inputs}, {args.precision}, CPU")
    print("| op kind | outputs | recomputed exactly | share |")
    print("|---|---|---|---|")
    totals = defaultdict(lambda: [0, 0])
    for kind, (recomputed, outputs) in sorted(counts.items()):
        print(f"| {kind} | {outputs} | {recomputed} | {recomputed / max(outputs, 1):.2e} |")
        family = kind.split(":")[0].replace("addmm", "linear")
        totals[family][0] += recomputed
        totals[family][1] += outputs
    for family, (recomputed, outputs) in sorted(totals.items()):
        label = "addmm / linear" if family == "linear" else family
        print(f"| **all {label}** | {outputs} | {recomputed} | "
              f"{recomputed / max(outputs, 1):.2e} |")


if __name__ == "__main__":
    main()
