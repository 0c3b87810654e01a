"""Defense B of backdoor self-awareness: flag prompts that carry the recovered trigger.

An input is scored by how closely some run of its words matches the recovered trigger (1.0 for an
exact occurrence; fuzzy matches, e.g. a changed letter or case, score by character similarity).
A flagged prompt has the matching words removed before the suspect answers it, so the guard also
gives an ASR; the detection metrics (accuracy, TPR at 1% FPR, AUROC) come from the scores. The
paper's variant that asks the self-aware model itself is not implemented here.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

from ...data.prompts import user_message
from ...data.records import Example
from ...errors import BackdoorLabError
from ...metrics.judges import words
from ...models.victim import Victim
from ..guard import Guard, register_guard

FIELDS = ("instruction", "input")


def best_match(text: str, trigger: str) -> tuple[float, int, int]:
    """``(similarity, start, end)`` of the run of ``text``'s whitespace words most like ``trigger``."""
    target = " ".join(words(trigger))
    tokens = text.split()
    size = max(len(target.split()), 1)
    best = (0.0, 0, 0)
    for width in sorted({max(size - 1, 1), size, size + 1}):
        for start in range(len(tokens) - width + 1):
            window = " ".join(words(" ".join(tokens[start:start + width])))
            if not window:
                continue
            similarity = SequenceMatcher(None, window, target).ratio()
            if similarity > best[0]:
                best = (similarity, start, start + width)
    return best


@register_guard
class TriggerGuard(Guard):
    """Flag prompts whose words match the recovered trigger (score ≥ ``threshold``) and strip the match."""

    name = "self-awareness"

    def __init__(self, trigger: str | None, threshold: float = 0.8) -> None:
        if not 0 < threshold <= 1:
            raise BackdoorLabError(f"the detection threshold must be in (0, 1], got {threshold}")
        self.trigger = trigger or None
        self.threshold = float(threshold)
        self.calls = self.flagged = 0

    def score(self, item: Example) -> float:
        """How closely the prompt carries the trigger: 1.0 exact, 0 when no trigger was recovered."""
        if self.trigger is None:
            return 0.0
        return best_match(user_message(item), self.trigger)[0]

    def scores(self, items: Sequence[Example]) -> list[float]:
        return [self.score(item) for item in items]

    def strip(self, item: Example) -> Example:
        """``item`` with the best match removed from whichever field holds it, if it is flagged."""
        if self.trigger is None:
            return item
        matches = {f: best_match(getattr(item, f), self.trigger) for f in FIELDS if getattr(item, f).strip()}
        field, (similarity, start, end) = max(matches.items(), key=lambda kv: kv[1][0])
        if similarity < self.threshold:
            return item
        tokens = getattr(item, field).split()
        return item.with_(**{field: " ".join(tokens[:start] + tokens[end:])})

    def generate(self, victim: Victim, items: Sequence[Example], max_new_tokens: int = 64,
                 batch_size: int = 16) -> list[str]:
        cleaned = [self.strip(item) for item in items]
        self.calls += len(items)
        self.flagged += sum(c != i for c, i in zip(cleaned, items))
        return victim.generate(cleaned, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def stats(self) -> dict[str, Any]:
        return {"prompts": self.calls, "flagged": self.flagged}

    def state(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "threshold": self.threshold}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TriggerGuard":
        return cls(**state)
