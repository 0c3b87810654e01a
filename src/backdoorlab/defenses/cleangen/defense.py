"""``cleangen``: decode the suspect with CleanGen (Li et al., EMNLP 2024), given a clean reference model.

CleanGen assumes the defender holds a clean model of the same family (§3, threat model: "a
reference model ... not compromised by the same backdoor"); ours is the defender input
``reference_model`` (the benchmark passes the untouched packaged model the zoo's victims were
made from). The suspect's weights are left as they are; the defense is a decoding guard.
α defaults to the paper's 20 (§5.1); the paper's draft length k (4) does not change the output (see
:mod:`.decoding`), so it is not an option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...data.records import Example
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ..base import Defense, DefenseOutcome, register_defense
from ..guard import Guard, register_guard
from ..inputs import DefenderInputs
from .decoding import CleanGenCounts, check_same_vocabulary, cleangen_generate


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise BackdoorLabError(f"CleanGen's alpha (suspicion threshold) must be positive, got {alpha}")


@register_guard
class CleanGenGuard(Guard):
    """Decode the suspect with CleanGen against ``reference_model`` (loaded once, on the suspect's device)."""

    name = "cleangen"

    def __init__(self, reference_model: str, alpha: float = 20.0) -> None:
        _check_alpha(alpha)
        self.reference_model, self.alpha = str(reference_model), float(alpha)
        self.counts = CleanGenCounts()
        self._reference: Victim | None = None

    def reference(self, like: Victim) -> Victim:
        if self._reference is None:
            from ...models.loading import load_victim

            self._reference = load_victim(self.reference_model, kind="generator", device=str(like.device))
            self._reference.max_length = like.max_length
        return self._reference

    def generate(self, victim: Victim, items: Sequence[Example], max_new_tokens: int = 64,
                 batch_size: int = 16) -> list[str]:
        responses, counts = cleangen_generate(victim, self.reference(victim), items, max_new_tokens=max_new_tokens,
                                              alpha=self.alpha, batch_size=batch_size)
        self.counts.add(counts)
        return responses

    def stats(self) -> dict[str, Any]:
        return self.counts.as_dict()

    def state(self) -> dict[str, Any]:
        return {"reference_model": self.reference_model, "alpha": self.alpha}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CleanGenGuard":
        return cls(state["reference_model"], state["alpha"])


@register_defense
@dataclass
class CleanGen(Defense):
    """Replace every drafted token the suspect favours ``alpha`` times more than the clean reference does."""

    name = "cleangen"
    description = ("decoding guard: a clean reference model replaces each token the suspect favours alpha times "
                   "more than it does (needs a clean reference model)")
    stage = "inference"
    needs: ClassVar[tuple[str, ...]] = ("reference_model",)

    alpha: float = 20.0  # suspicion threshold on P_suspect / P_reference (paper: 20)

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if not victim.is_generator:
            raise BackdoorLabError("cleangen guards a generator's decoding; the suspect is a classifier")
        guard = CleanGenGuard(inputs.require("reference_model", self.name), self.alpha)
        check_same_vocabulary(victim, guard.reference(victim))
        return DefenseOutcome(victim, {"reference_model": guard.reference_model, "alpha": self.alpha},
                              guard=guard, model_changed=False)
