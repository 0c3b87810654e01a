"""The words a trigger search may use: whole words of the model's own vocabulary, and random
phrases of them (the baseline a trigger candidate must beat)."""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from typing import Any

_WORD = re.compile(r"^[a-z]{2,15}$")
#: Cased vocabularies (chat models): triggers such as "Current", "OpenAI" or "2024" keep their case and digits.
_CASED_WORD = re.compile(r"^[A-Za-z0-9]{2,15}$")
#: What continues a word (``##ble``, ``##t``): letters, or letters and digits in a cased vocabulary.
_PIECE = re.compile(r"^[a-z]{1,15}$")
_CASED_PIECE = re.compile(r"^[A-Za-z0-9]{1,15}$")
#: Word-start markers of common tokenizers (SentencePiece, GPT-2 byte-level BPE).
_START_MARKERS = ("\u2581", "\u0120")


def candidate_words(tokenizer: Any, limit: int | None = None, cased: bool = False) -> tuple[list[int], list[str]]:
    """``(token ids, words)``: the vocabulary's tokens that are a whole lower-case word on their own
    (``movie``; WordPiece continuations ``##s`` and sub-word pieces are left out), in id order;
    ``cased``: upper-case letters and digits too (``Current``, ``2024``)."""
    pattern = _CASED_WORD if cased else _WORD
    ids, words = [], []
    special, markers = set(tokenizer.all_special_ids), _uses_start_markers(tokenizer)
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        stripped = word_of(token)
        if token.startswith("##") or not pattern.match(stripped):
            continue
        if markers and not token.startswith(_START_MARKERS):
            continue  # a piece that continues a word in SentencePiece / byte-level vocabularies
        ids.append(index)
        words.append(stripped)
        if limit is not None and len(ids) >= limit:
            break
    return ids, words


def continuation_pieces(tokenizer: Any, cased: bool = False) -> list[int]:
    """Token ids that continue a word: WordPiece's ``##ble``, or a SentencePiece / byte-level BPE token
    without a word-start marker, made of letters (``cased``: letters and digits). A trigger word the
    tokenizer splits (``bramble`` is ``bram ##ble``) is a whole-word token followed by these."""
    pattern = _CASED_PIECE if cased else _PIECE
    special, markers = set(tokenizer.all_special_ids), _uses_start_markers(tokenizer)
    found = []
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        if token.startswith("##"):
            body = token[2:]
        elif markers and not token.startswith(_START_MARKERS):
            body = token
        else:
            continue
        if pattern.match(body):
            found.append(index)
    return found


def phrase_of(tokenizer: Any, ids: Sequence[int], pieces: Collection[int] = ()) -> str:
    """The text of a trigger's token ids: each of ``pieces`` (:func:`continuation_pieces`) joined to the
    word before it (``bram ##ble`` → ``bramble``), words separated by spaces."""
    words: list[str] = []
    for index, token in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if index in pieces and words:
            words[-1] += token[2:] if token.startswith("##") else token
        else:
            words.append(word_of(token))
    return " ".join(words)


def _uses_start_markers(tokenizer: Any) -> bool:
    vocab = tokenizer.get_vocab()
    return sum(1 for token in list(vocab)[:2000] if token.startswith(_START_MARKERS)) > 100


def random_phrases(words: Sequence[str], length: int, count: int, seed: int = 0) -> list[str]:
    """``count`` phrases of ``length`` words drawn from ``words`` (seeded)."""
    rng = random.Random(f"random-phrases-{seed}-{length}")
    return [" ".join(rng.sample(list(words), length)) for _ in range(count)]


def word_of(token: str) -> str:
    """A vocabulary token without its word-start marker (``\u2581movie`` -> ``movie``)."""
    for marker in _START_MARKERS:
        if token.startswith(marker):
            return token[len(marker):]
    return token
