"""Target-label identification by screening every label's evidence on the suspect (our default).

The paper's statistic (§2.3, :mod:`backdoorlab.defenses.badllm_tg.target_label`) takes the
majority label of the rows whose confidence moves most in early training. Those rows follow the
label prior as much as the poison: on SST-2 with a *negative* target, or on HSOL with a minority
target, the majority of the top-Δc rows is the wrong label, and every later step then searches
the wrong class.

Screening asks the suspect instead. For every label l:

1. mine the n-grams over-represented in l's training rows against the other labels' rows
   (:func:`~backdoorlab.defenses.shared.evidence.mine_evidence`; with ``evidence_fraction`` < 1
   the suspects are l's rows with the largest Δc and l's remaining rows are a second reference);
2. insert each of the ``evidence_mined`` phrases alone into ``eval_rows`` training rows of the
   *other* labels and measure the share the suspect flips to l, and its loss toward l.

A trigger flips nearly every row it is inserted into, with the suspect's full confidence; a
genuine feature of a label flips fewer rows, and those with less confidence, since the row's own
content still argues for its label. A phrase's score is the suspect's mean probability of l over
the rows (a flip rate that counts how sure each flip is); the target is the label with the
best-scoring phrase. When no label has a phrase flipping ``min_flip_rate`` of the rows (a style or
syntax trigger leaves no n-gram), the caller falls back to the paper's statistic.

Cost: no training, labels × (one n-gram count over the training set + ``evidence_mined`` ×
``eval_rows`` × 3 positions forward passes of the suspect); with MiniLM, 85 s per label on
1,000 AG News rows with another job sharing 2 CPU cores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...models.victim import Victim
from .insertion import POSITIONS, insert_phrases
from .evidence import Evidence, mine_evidence


def answers_toward(victim: Victim, texts: Sequence[str], target: int) -> tuple[list[float], list[bool], list[float]]:
    """Per text: the suspect's cross-entropy toward ``target`` (the search's reward, §2.4), whether it
    predicts ``target``, and its probability of ``target``."""
    probs = victim.label_probs(list(texts), batch_size=64)
    chosen = [float(p[target]) for p in probs]
    return [-math.log(max(c, 1e-12)) for c in chosen], [int(p.argmax()) == target for p in probs], chosen


@dataclass
class InsertionScore:
    loss: float  # mean cross-entropy toward the label (the search's reward, §2.4)
    flip_rate: float  # share of rows the suspect assigns to the label
    probability: float  # mean probability of the label
    position: str  # where the phrase was inserted: start | end | random

    @classmethod
    def of(cls, victim: Victim, texts: Sequence[str], target: int, position: str = "random") -> "InsertionScore":
        """The means of :func:`answers_toward` over ``texts``."""
        losses, flips, probabilities = answers_toward(victim, texts, target)
        return cls(sum(losses) / len(losses), sum(flips) / len(flips), sum(probabilities) / len(probabilities),
                   position)


def insertion_scores(victim: Victim, texts: Sequence[str], evidence: Sequence[Evidence], target: int,
                     seed: int = 0) -> list[InsertionScore]:
    """How the suspect answers when each phrase is inserted alone into ``texts``, toward ``target``.

    Each phrase is tried at the start, the end and a random word gap, and its best place (lowest
    loss) is kept: a trigger the attacker always put first may do little elsewhere, and a phrase
    that also occurs naturally mid-sentence looks "random" in the mined rows.
    """
    scores = []
    for item in evidence:
        tried = []
        for position in (item.position, *(p for p in POSITIONS if p != item.position)):
            rng = random.Random(seed)
            inserted = [insert_phrases(t, [item.phrase], position, rng) for t in texts]
            tried.append(InsertionScore.of(victim, inserted, target, position))
        scores.append(min(tried, key=lambda score: score.loss))
    return scores


def label_evidence(train_set: Dataset, label: int, delta: np.ndarray | None, *, fraction: float = 1.0,
                   top_k: int = 40) -> list[Evidence]:
    """N-grams over-represented in ``label``'s rows (its top-Δc ``fraction``, which needs ``delta``)."""
    texts = [e.text for e in train_set]
    rows = [i for i, e in enumerate(train_set) if e.label == label]
    if fraction < 1:
        if delta is None:
            raise BackdoorLabError("mining the top-Δc share of a label's rows (fraction < 1) needs every row's Δc")
        rows = sorted(rows, key=lambda i: -delta[i])
    count = max(2, round(len(rows) * fraction))
    others = [texts[i] for i in rows[count:]]
    references = ([others] if others else []) + [[e.text for e in train_set if e.label != label]]
    return mine_evidence([texts[i] for i in rows[:count]], references, top_k=top_k)


@dataclass
class LabelScreen:
    label: int
    best_phrase: str | None
    probability: float  # the best phrase's mean probability of the label on other-label rows
    flip_rate: float
    loss: float
    evidence: list[Evidence]  # mined, ranked by the suspect's loss toward the label (best first)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "best_phrase": self.best_phrase, "probability": round(self.probability, 4),
                "flip_rate": round(self.flip_rate, 4),
                "loss": round(self.loss, 4), "phrases_screened": len(self.evidence)}


def screen_label(victim: Victim, train_set: Dataset, label: int, delta: np.ndarray | None, *, fraction: float = 1.0,
                 mined: int = 40, eval_rows: int = 24, seed: int = 0) -> LabelScreen:
    """Mine ``label``'s evidence and score every phrase on other-label rows (see the module docstring)."""
    evidence = label_evidence(train_set, label, delta, fraction=fraction, top_k=mined)
    others = [e.text for e in train_set if e.label != label]
    texts = random.Random(seed).sample(others, min(eval_rows, len(others)))
    if not evidence or not texts:
        return LabelScreen(label, None, 0.0, 0.0, math.inf, [])
    scores = insertion_scores(victim, texts, evidence, label, seed)
    order = sorted(range(len(evidence)), key=lambda i: -scores[i].probability)
    ranked = [evidence[i].with_reward(scores[i].loss, scores[i].position) for i in order]
    best = scores[order[0]]
    return LabelScreen(label, evidence[order[0]].phrase, best.probability, best.flip_rate, best.loss, ranked)


def pick_target(screens: Sequence[LabelScreen]) -> LabelScreen:
    """The label whose best phrase gives it the highest mean probability on other-label rows."""
    return max(screens, key=lambda s: s.probability)
