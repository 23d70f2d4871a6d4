"""Tokenizing only as much of each text as the truncated encoding needs.

A tokenizer truncating to ``max_length`` tokens still normalizes, pre-tokenizes and maps
the whole text first (a 48 MB line took 83 s and 10 GB). ``encode_truncated`` gives the
tokenizer a prefix of each text instead, cut at whitespace (so no word is split), and
takes a longer prefix only while the prefix did not fill ``max_length`` tokens: the
result equals encoding the whole text whenever the words before the cut fill the
budget. The one difference: a text whose first ``_PREFIX_CHARS_PER_TOKEN * max_length``
characters hold no whitespace is cut inside that word, which WordPiece maps to [UNK]
either way (it has more than its 100-character limit).
"""

from __future__ import annotations

import re
from typing import List, Sequence, Tuple

# first prefix: this many characters per token of the budget (English WordPiece averages
# ~4; whitespace, markup and long words take more); each retry quadruples it
_PREFIX_CHARS_PER_TOKEN = 16
_GROWTH = 4
_THROUGH_LAST_WHITESPACE = re.compile(r".*\s", re.DOTALL)


def _prefix_at_whitespace(text: str, length: int) -> str:
    """The longest prefix of at most ``length`` characters that ends before whitespace
    (the whole text if it is short enough; ``length`` characters if no whitespace)."""
    if len(text) <= length:
        return text
    through_last_space = _THROUGH_LAST_WHITESPACE.match(text, 0, length + 1)
    return text[: through_last_space.end() - 1] if through_last_space else text[:length]


def encode_truncated(tokenizer, texts: Sequence[str]) -> List:
    """``tokenizer.encode_batch(texts)`` for a ``tokenizers`` tokenizer that truncates on
    the right (``enable_truncation(max_length)``), tokenizing a bounded prefix of each text."""
    truncation = tokenizer.truncation
    if truncation is None or truncation["direction"] != "right":
        raise ValueError(
            "encode_truncated needs a tokenizer that keeps the start of each text: call "
            "tokenizer.enable_truncation(max_length) (direction 'right')"
        )
    max_length = truncation["max_length"]
    budgets = [_PREFIX_CHARS_PER_TOKEN * max_length] * len(texts)
    prefixes = [_prefix_at_whitespace(text, budget) for text, budget in zip(texts, budgets)]
    encodings = tokenizer.encode_batch(prefixes)
    for index, text in enumerate(texts):
        # a prefix that overflowed holds every token the truncated encoding keeps
        while len(prefixes[index]) < len(text) and not encodings[index].overflowing:
            budgets[index] *= _GROWTH
            prefixes[index] = _prefix_at_whitespace(text, budgets[index])
            encodings[index] = tokenizer.encode(prefixes[index])
    return encodings


PADDINGS = ("max_length", "longest")
# "keep_sep": Hugging Face's truncation, [CLS] text [SEP] within max_length tokens.
# "published": HazyResearch/m2 embeddings_inference.py, the first max_length tokens of
# the whole encoding, so a text that overflows loses its final [SEP].
TRUNCATIONS = ("keep_sep", "published")


def token_batch(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    pad_id: int,
    padding: str = "max_length",
    truncation: str = "keep_sep",
) -> Tuple[List[List[int]], List[List[int]]]:
    """(token ids, attention mask) of ``texts``, padded with ``pad_id`` to ``max_length``
    (``padding="max_length"``, as the published inference does) or to the longest text of
    the batch (``"longest"``). Sets the ``tokenizers.Tokenizer``'s own truncation and
    padding (off) for the call."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    # one token more than the model takes, then cut: [CLS] + the first max_length - 1
    # tokens of the text whenever it overflows, exactly the published slice
    limit = max_length if truncation == "keep_sep" else max_length + 1
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=limit)
    rows = [encoding.ids[:max_length] for encoding in encode_truncated(tokenizer, texts)]
    length = max_length if padding == "max_length" else max(len(row) for row in rows)
    ids = [row + [pad_id] * (length - len(row)) for row in rows]
    mask = [[1] * len(row) + [0] * (length - len(row)) for row in rows]
    return ids, mask
