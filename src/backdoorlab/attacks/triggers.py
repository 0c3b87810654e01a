"""Trigger insertion primitives shared by the classification and generative attacks.

Text is split into words at whitespace; a trigger goes into one of the ``n + 1`` gaps of an
``n``-word text (gap 0 = start, gap ``n`` = end). The original whitespace, newlines included, is
kept; the trigger is separated from its neighbours by one space.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence

from ..errors import BackdoorLabError

#: Accepted position names and what they mean; ``prefix``/``suffix`` are aliases used by the
#: generative attacks.
POSITIONS = {"start": "start", "prefix": "start", "end": "end", "suffix": "end", "random": "random"}

_WORD = re.compile(r"\S+")


def normalize_position(position: str) -> str:
    """Map a position name to ``start``, ``end`` or ``random``."""
    key = str(position).strip().lower()
    if key not in POSITIONS:
        raise BackdoorLabError(f"unknown trigger position {position!r}; use one of {', '.join(POSITIONS)}")
    return POSITIONS[key]


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def choose_gap(text: str, position: str, rng: random.Random) -> int:
    """The gap index for ``position`` (``random`` draws uniformly among all ``n + 1`` gaps)."""
    n = word_count(text)
    where = normalize_position(position)
    if where == "start":
        return 0
    if where == "end":
        return n
    return rng.randint(0, n)


def insert_at_gaps(text: str, insertions: Sequence[tuple[int, str]]) -> str:
    """Insert each ``(gap, piece)``; pieces sharing a gap keep their order."""
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return " ".join([piece for _, piece in insertions] + ([text.strip()] if text.strip() else []))
    by_gap: dict[int, list[str]] = defaultdict(list)
    for gap, piece in insertions:
        if not 0 <= gap <= len(spans):
            raise ValueError(f"gap {gap} outside 0..{len(spans)}")
        by_gap[gap].append(piece)
    out, cursor = [], 0
    for gap, (start, _) in enumerate(spans):
        out.append(text[cursor:start])
        out.extend(piece + " " for piece in by_gap[gap])
        cursor = start
    end = spans[-1][1]
    out.append(text[cursor:end])
    out.extend(" " + piece for piece in by_gap[len(spans)])
    out.append(text[end:])
    return "".join(out)


def insert_trigger(text: str, trigger: str, position: str, rng: random.Random) -> str:
    """Insert one trigger at ``position`` (``start``/``prefix``, ``end``/``suffix`` or ``random``)."""
    return insert_at_gaps(text, [(choose_gap(text, position, rng), trigger)])


def insert_triggers(text: str, triggers: Sequence[str], position: str, rng: random.Random,
                    ordered: bool = False) -> str:
    """Insert several triggers, each at its own gap chosen by ``position``.

    With ``ordered`` the triggers appear in the given order (as in BackdoorLLM's CTBA data, where
    "2024" always precedes "BadMagic", which precedes "OpenAI").
    """
    gaps = [choose_gap(text, position, rng) for _ in triggers]
    if ordered:
        gaps.sort()
    return insert_at_gaps(text, list(zip(gaps, triggers)))
