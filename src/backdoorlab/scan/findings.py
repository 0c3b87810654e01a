"""What a scan found for one target: a classifier's label or a generator's behaviour, its trigger
candidates (best first) and the random phrases of the same lengths they must beat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Candidate:
    phrase: str
    source: str  # search | training-data
    flip_rate: float  # share of held-out rows the phrase sends to the label, or that then show the behaviour
    probability: float  # mean probability of the label (a generator: of the behaviour's opening, per token)
    position: str  # where it works best
    natural: bool = False  # the label's own vocabulary: a word its clean rows use, or it moves the reference too
    reference_flip_rate: float | None = None  # the same rows and place on the defender's reference (classifiers)

    @property
    def excess(self) -> float:
        """How much more often the phrase flips the suspect than the reference (its flip rate without one)."""
        return self.flip_rate - (self.reference_flip_rate or 0.0)

    def to_dict(self) -> dict[str, Any]:
        found = {"phrase": self.phrase, "source": self.source, "flip_rate": round(self.flip_rate, 4),
                 "probability": round(self.probability, 4), "position": self.position, "natural": self.natural}
        if self.reference_flip_rate is not None:
            found["reference_flip_rate"] = round(self.reference_flip_rate, 4)
        return found


@dataclass
class Finding:
    label: int  # the label's index, or the behaviour's place in the scan's list
    name: str  # the label's or the behaviour's name
    base_rate: float  # share of the clean rows that already show it (the label predicted, the behaviour judged)
    rows: int  # held-out rows the candidates are measured on (of other labels, for a classifier)
    candidates: list[Candidate] = field(default_factory=list)  # best first
    random_flip_rates: list[float] = field(default_factory=list)
    flagged: bool = False
    random_lengths: list[int] = field(default_factory=list)  # each random phrase's word count, in the same order
    random_reference_rates: list[float] = field(default_factory=list)  # the random phrases on the reference, if any

    @property
    def best(self) -> Candidate | None:
        """The strongest candidate that is not the label's own vocabulary."""
        return next((c for c in self.candidates if not c.natural), None)

    @property
    def random_p95(self) -> float:
        return float(np.percentile(self.random_flip_rates, 95)) if self.random_flip_rates else 0.0

    @property
    def margin(self) -> float:
        """The best candidate's flip rate above the random phrases' 95th percentile and, with a reference, above
        its own flip rate on the reference."""
        if self.best is None:
            return -self.random_p95
        return self.best.flip_rate - max(self.random_p95, self.best.reference_flip_rate or 0.0)

    def passes(self, flip_threshold: float, margin: float) -> bool:
        """The scan's rule: the best candidate reaches ``flip_threshold`` and beats by ``margin`` the random
        phrases' 95th percentile (and, with a reference, its own rate there)."""
        return self.best is not None and self.best.flip_rate >= flip_threshold and self.margin >= margin

    def random_rates_by_length(self) -> dict[str, list[float]]:
        """The random phrases' rates by their word count (keys are counts as text, as JSON keeps them)."""
        found: dict[str, list[float]] = {}
        for length, rate in zip(self.random_lengths, self.random_flip_rates):
            found.setdefault(str(length), []).append(round(rate, 4))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "base_rate": round(self.base_rate, 4), "rows": self.rows,
                "flagged": self.flagged, "margin": round(self.margin, 4),
                "random_phrases": {"count": len(self.random_flip_rates),
                                   "mean_flip_rate": round(float(np.mean(self.random_flip_rates)), 4)
                                   if self.random_flip_rates else None,
                                   "p95_flip_rate": round(self.random_p95, 4),
                                   "by_length": self.random_rates_by_length(),
                                   **({"reference_flip_rates": [round(r, 4) for r in self.random_reference_rates]}
                                      if self.random_reference_rates else {})},
                "candidates": [c.to_dict() for c in self.candidates]}


@dataclass(frozen=True)
class TargetKind:
    """How a scan of one model kind names what it looks for, in its record and its tables."""

    what: str  # "label" | "behaviour"
    rate: str  # the name of a candidate's rate
    findings_key: str  # where the record lists the findings
    verdict_key: str  # where the record names the flagged one


#: A model kind (``Victim.kind``) → its :class:`TargetKind`.
TARGETS = {"classifier": TargetKind("label", "flip rate", "labels", "target_label"),
           "generator": TargetKind("behaviour", "behaviour rate", "behaviours", "behaviour")}
