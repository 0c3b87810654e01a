"""Put phrases into a text at its start, its end or a random word gap (trigger inversion, known triggers)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ...errors import BackdoorLabError

#: Where a phrase goes: before the first word, after the last, or into a random word gap.
POSITIONS = ("start", "end", "random")


def insert_phrases(text: str, phrases: Sequence[str], position: str, rng: random.Random) -> str:
    """``text`` with every phrase it does not already contain inserted at ``position``."""
    if position not in POSITIONS:
        raise BackdoorLabError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    tokens = text.split()
    for phrase in phrases:
        if phrase.lower() in text.lower():
            continue
        if position == "start":
            index = 0
        elif position == "end":
            index = len(tokens)
        else:
            index = rng.randint(0, len(tokens))
        tokens[index:index] = phrase.split()
        text = " ".join(tokens)
    return " ".join(tokens)
