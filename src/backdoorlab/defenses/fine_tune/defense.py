"""``fine-tune``: continue training the suspect on clean reference rows.

The classic fine-tuning defense (Liu et al., "Fine-Pruning", RAID 2018, §4; the fine-tuning
baseline of Qi et al.'s OpenBackdoor). Backdoors often survive it; it is the floor the other
defenses must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...models.victim import Victim
from ...training import TrainConfig, train
from ..base import Defense, DefenseOutcome, register_defense
from ..shared.classifier import ClassifierDefense
from ..inputs import DefenderInputs


@register_defense
@dataclass
class CleanFineTune(ClassifierDefense):
    name = "fine-tune"
    description = "fine-tune the suspect model on clean reference rows"
    epochs: float = 2.0
    learning_rate: float = 2e-5
    batch_size: int = 16

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        clean = self.clean_rows(inputs)
        config = TrainConfig(method="full", epochs=self.epochs, learning_rate=self.learning_rate,
                             batch_size=self.batch_size, seed=self.seed)
        tuned = train(victim, clean, workdir / "fine-tune", config, reuse=True)
        return DefenseOutcome(tuned, {"clean_rows": len(clean), "clean_source": clean.source})
