"""Baselines that need no trigger knowledge: no defense, and clean fine-tuning.

- ``none``: the suspect model as it is, so benchmarks and the runner treat "no defense" like any
  other method.
- ``fine-tune``: continue training the suspect on clean reference rows (the classic fine-tuning
  defense, Liu et al., "Fine-Pruning", RAID 2018, §4; the fine-tuning baseline of Qi et al.'s
  OpenBackdoor). Backdoors often survive it; it is the floor the other defenses must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models.victim import Victim
from ..training import TrainConfig, train
from .base import Defense, DefenseOutcome, register_defense
from .data import ClassifierDefense
from .inputs import DefenderInputs


@register_defense
@dataclass
class NoDefense(Defense):
    name = "none"
    description = "no defense: the suspect model unchanged (the benchmark's reference row)"

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        return DefenseOutcome(victim, {}, model_changed=False)


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
