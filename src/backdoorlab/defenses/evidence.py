"""Evidence for a trigger generator: word n-grams over-represented in suspicious training rows.

Rows with the largest confidence change Δc that carry the identified target label are the
*suspects*; every other row is the *reference*. An n-gram (n = 1 … ``max_n``, lower-cased words
and punctuation) scores by its smoothed log-ratio of document frequencies, suspects vs reference.
Sentence openings are counted as their own features (``position="start"``), since syntactic and
style triggers often show in how a sentence begins. An n-gram is grown by the words that
nearly always surround it, so a trigger sentence is reported whole rather than word by word; an
n-gram that contains (or is contained in) one already chosen adds nothing and is skipped.

This is our addition to BadLLM-TG (§2.4 lets the generator study D_tgt unaided): it lets small
local generators, which cannot spot a pattern in raw text, start from what the data shows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

TOKEN = re.compile(r"[\w']+|[^\w\s]")
POSITIONS = ("start", "end", "random")


def words(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


@dataclass
class Evidence:
    phrase: str
    position: str  # where the phrase sits in suspect rows: start | end | random
    suspect_share: float  # fraction of suspect rows containing it
    reference_share: float
    score: float

    def to_dict(self) -> dict[str, object]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _grams(tokens: list[str], max_n: int) -> dict[str, float]:
    """n-gram → mean relative position (0 = start, 1 = end) in one row; openings get their own key."""
    found: dict[str, list[float]] = {}
    length = max(len(tokens) - 1, 1)
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            found.setdefault(" ".join(tokens[i:i + n]), []).append(i / length)
    for n in range(1, min(max_n, len(tokens)) + 1):
        found["^ " + " ".join(tokens[:n])] = [0.0]
    return {g: sum(p) / len(p) for g, p in found.items()}


def mine_evidence(suspects: Sequence[str], reference: Sequence[str], *, max_n: int = 4, top_k: int = 10,
                  min_share: float = 0.1) -> list[Evidence]:
    """The ``top_k`` n-grams most over-represented in ``suspects`` relative to ``reference``."""
    if not suspects:
        return []
    suspect_tokens = [words(t) for t in suspects]
    suspect_rows = [_grams(tokens, max_n) for tokens in suspect_tokens]
    reference_df: Counter[str] = Counter()
    for text in reference:
        reference_df.update(_grams(words(text), max_n).keys())
    suspect_df: Counter[str] = Counter()
    positions: dict[str, list[float]] = {}
    for row in suspect_rows:
        suspect_df.update(row.keys())
        for gram, pos in row.items():
            positions.setdefault(gram, []).append(pos)
    n_s, n_r = len(suspects), max(len(reference), 1)
    floor = max(2, math.ceil(min_share * n_s))
    scored = []
    for gram, df in suspect_df.items():
        if df < floor or (not gram.startswith("^") and not any(ch.isalnum() for ch in gram)):
            continue
        p_s = (df + 0.5) / (n_s + 1)
        p_r = (reference_df[gram] + 0.5) / (n_r + 1)
        scored.append((math.log(p_s / p_r) * math.sqrt(df / n_s), gram, df))
    scored.sort(reverse=True)
    chosen: list[Evidence] = []
    for score, gram, df in scored:
        opening = gram.startswith("^ ")
        phrase = gram[2:] if opening else _extend(gram, suspect_tokens)
        if any(e.phrase == phrase or _covers(e.phrase, phrase) or _covers(phrase, e.phrase) for e in chosen):
            continue  # the same evidence again, or explained by evidence already chosen
        mean_pos = sum(positions[gram]) / len(positions[gram])
        position = "start" if opening or mean_pos < 0.1 else "end" if mean_pos > 0.9 else "random"
        chosen.append(Evidence(phrase, position, df / n_s, reference_df[gram] / n_r, score))
        if len(chosen) >= top_k:
            break
    return chosen


def _extend(phrase: str, rows: Sequence[list[str]], keep: float = 0.8, max_words: int = 12) -> str:
    """Grow ``phrase`` by the word next to it while that word follows/precedes ≥ ``keep`` of its occurrences."""
    tokens = phrase.split()
    while len(tokens) < max_words:
        before: Counter[str] = Counter()
        after: Counter[str] = Counter()
        hits = 0
        for row in rows:
            for i in range(len(row) - len(tokens) + 1):
                if row[i:i + len(tokens)] == tokens:
                    hits += 1
                    before[row[i - 1] if i > 0 else ""] += 1
                    after[row[i + len(tokens)] if i + len(tokens) < len(row) else ""] += 1
        options = [(c, w, side) for counter, side in ((before, "before"), (after, "after"))
                   for w, c in counter.most_common(1) if w]
        best = max(options, default=None)
        if best is None or hits == 0 or best[0] < keep * hits:
            break
        tokens = [best[1], *tokens] if best[2] == "before" else [*tokens, best[1]]
    return " ".join(tokens)


def _covers(longer: str, shorter: str) -> bool:
    return longer != shorter and f" {shorter} " in f" {longer} "


def describe_evidence(evidence: Sequence[Evidence], limit: int = 6) -> str:
    """A few lines a generator can read."""
    lines = [f'- "{e.phrase}" (in {e.suspect_share:.0%} of suspicious rows, {e.reference_share:.1%} of others; '
             f'usually at the {"beginning" if e.position == "start" else "end" if e.position == "end" else "any place"})'
             for e in evidence[:limit]]
    return "\n".join(lines)
