"""Token ids -> the text each token contributes, for showing contexts as running text.

Decoding each id on its own is not enough. A byte-level BPE (SmolLM2, GPT-2) can split one
character over several tokens ("日" is three byte tokens), and each of them alone decodes to
U+FFFD. SentencePiece-style decoders also drop a leading space when a token is decoded first.
So each token's piece is the text that appending it adds to the decoded sequence, with the
tokenizer's own decoder and a short look-back: a character goes to the token that completes it,
the tokens before it get "", and "".join(pieces) is the decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
# Enough earlier tokens to hold the start of any character (UTF-8 has at most 4 bytes) and any
# decoder state that spans tokens.
LOOKBACK = 8


def text_pieces(tokenizer: Any, ids: Sequence[int], lookback: int = LOOKBACK) -> list[str]:
    """One string per id: the text that token adds after ids[:i] (decoded, not BPE symbols:
    " point", not "Ġpoint"; "\\n", not "Ċ")."""
    ids = [int(t) for t in ids]
    windows: list[list[int]] = []
    for i in range(len(ids)):
        start = max(0, i - lookback)
        windows += [ids[start:i], ids[start : i + 1]]
    # One batched call: the fast tokenizers decode the whole list in Rust.
    texts = tokenizer.batch_decode(windows, clean_up_tokenization_spaces=False)
    pieces = []
    for i in range(len(ids)):
        before, after = _settled(texts[2 * i]), _settled(texts[2 * i + 1])
        if after.startswith(before):
            pieces.append(after[len(before) :])
        else:  # a decoder that rewrites earlier text: fall back to the token alone
            pieces.append(tokenizer.decode([ids[i]], clean_up_tokenization_spaces=False))
    return pieces


def _settled(text: str) -> str:
    """Text without the trailing U+FFFD of a character still waiting for its later bytes."""
    return text.rstrip(REPLACEMENT)


__all__ = ["text_pieces"]
