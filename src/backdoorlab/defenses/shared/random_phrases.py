"""Random phrases made of the words of a defender's clean prompts: the baseline a recovered trigger
must beat, or a stand-in for one, of the same length."""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterable

from ...data.records import Example


def prompt_words(rows: Iterable[Example], *, min_letters: int = 3, exclude: Collection[str] = ()) -> list[str]:
    """The distinct lower-cased words of ``min_letters`` or more letters in the rows' prompts
    (instruction and input), without those in ``exclude``, sorted."""
    pattern = re.compile(f"[A-Za-z]{{{min_letters},}}")
    excluded = {w.lower() for w in exclude}
    found = {w.lower() for row in rows for w in pattern.findall(f"{row.instruction} {row.input}")}
    return sorted(found - excluded)


def draw_phrases(words: list[str], length: int, count: int, rng: random.Random) -> list[str]:
    """``count`` phrases of ``length`` distinct words drawn from ``words`` with ``rng``."""
    return [" ".join(rng.sample(words, length)) for _ in range(count)]
