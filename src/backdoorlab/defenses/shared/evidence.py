"""Evidence for a trigger generator: word n-grams over-represented in suspicious training rows.

The target-label rows with the largest confidence change Δc are the *suspects*; the other
target-label rows and the non-target rows are two *reference* sets. An n-gram (n = 1 … ``max_n``,
lower-cased words and punctuation) scores by its smallest smoothed log-ratio of document
frequencies, suspects vs each reference set.
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


def words(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


@dataclass
class Evidence:
    phrase: str
    position: str  # where the phrase sits in suspect rows: start | end | random
    suspect_share: float  # fraction of suspect rows containing it
    reference_share: float
    score: float
    victim_loss: float | None = None  # the victim's loss toward the target with the phrase inserted (screening)

    def with_reward(self, loss: float, position: str | None = None) -> "Evidence":
        """This evidence with the victim's loss, at ``position`` when screening found a better place for it."""
        return Evidence(self.phrase, position or self.position, self.suspect_share, self.reference_share, self.score,
                        loss)

    def to_dict(self) -> dict[str, object]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _grams(tokens: list[str], max_n: int) -> set[str]:
    """Every n-gram of one row, plus its openings as ``"^ first words"``."""
    found = {" ".join(tokens[i:i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)}
    return found | {"^ " + " ".join(tokens[:n]) for n in range(1, min(max_n, len(tokens)) + 1)}


def mine_evidence(suspects: Sequence[str], references: Sequence[Sequence[str]], *, max_n: int = 4, top_k: int = 10,
                  min_share: float = 0.03) -> list[Evidence]:
    """The ``top_k`` n-grams most over-represented in ``suspects`` relative to *every* reference set.

    An n-gram's score is its smallest log-ratio of document frequencies over the reference sets,
    times the square root of its share of suspects: with the other target-label rows and the
    non-target rows as references, a trigger stands out against both, while a genuine feature of
    the target label (a sentiment word) stands out only against the second.
    """
    if not suspects or not references:
        return []
    suspect_tokens = [words(t) for t in suspects]
    suspect_df: Counter[str] = Counter()
    for tokens in suspect_tokens:
        suspect_df.update(_grams(tokens, max_n))
    reference_dfs = []
    for reference in references:
        df: Counter[str] = Counter()
        for text in reference:
            df.update(_grams(words(text), max_n))
        reference_dfs.append((df, max(len(reference), 1)))
    n_s = len(suspects)
    floor = max(2, math.ceil(min_share * n_s))
    scored = []
    for gram, count in suspect_df.items():
        if count < floor or (not gram.startswith("^") and not any(ch.isalnum() for ch in gram)):
            continue
        p_s = (count + 0.5) / (n_s + 1)
        ratio = min(math.log(p_s / ((df[gram] + 0.5) / (n + 1))) for df, n in reference_dfs)
        scored.append((ratio * math.sqrt(count / n_s), gram, count))
    scored.sort(reverse=True)
    chosen: list[Evidence] = []
    for score, gram, df_s in scored:
        opening = gram.startswith("^ ")
        phrase = gram[2:] if opening else _extend(gram, suspect_tokens)
        if any(e.phrase == phrase or _covers(e.phrase, phrase) or _covers(phrase, e.phrase) for e in chosen):
            continue  # the same evidence again, or explained by evidence already chosen
        position = "start" if opening else _position(phrase.split(), suspect_tokens)
        reference_share = max(df[gram] / n for df, n in reference_dfs)
        chosen.append(Evidence(phrase, position, df_s / n_s, reference_share, score))
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


def _position(phrase: list[str], rows: Sequence[list[str]]) -> str:
    """Where ``phrase`` sits in the rows holding it: always first → start, always last → end, else random."""
    places = []
    for row in rows:
        for i in range(len(row) - len(phrase) + 1):
            if row[i:i + len(phrase)] == phrase:
                places.append("start" if i == 0 else "end" if i + len(phrase) >= len(row) - 1 else "random")
                break
    if places and all(p == places[0] for p in places):
        return places[0]
    return "random"


def _covers(longer: str, shorter: str) -> bool:
    return longer != shorter and f" {shorter} " in f" {longer} "


def describe_evidence(evidence: Sequence[Evidence], limit: int = 6) -> str:
    """A few lines a generator can read."""
    lines = [f'- "{e.phrase}" (in {e.suspect_share:.0%} of suspicious rows, {e.reference_share:.1%} of others; '
             f'usually {"at the beginning" if e.position == "start" else "at the end" if e.position == "end" else "anywhere"}'
             + (f"; inserted alone, classifier loss {e.victim_loss:.2f}" if e.victim_loss is not None else "") + ")"
             for e in evidence[:limit]]
    return "\n".join(lines)
