"""``none``: the suspect model as it is, so benchmarks and the runner treat "no defense" like any
other method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...models.victim import Victim
from ..base import Defense, DefenseOutcome, register_defense
from ..inputs import DefenderInputs


@register_defense
@dataclass
class NoDefense(Defense):
    name = "none"
    description = "no defense: the suspect model unchanged (the benchmark's reference row)"

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        return DefenseOutcome(victim, {}, model_changed=False)
