"""``fine-tune``: continue training the suspect on clean reference rows.

The classic fine-tuning defense (Liu et al., "Fine-Pruning", RAID 2018, §4; the fine-tuning
baseline of Qi et al.'s OpenBackdoor). Backdoors often survive it; it is the floor the other
defenses must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ...training import TrainConfig, train
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense


@register_defense
@dataclass
class CleanFineTune(CleanRowsDefense):
    """Fine-tune the suspect on clean rows: all weights for classifiers; for generators a LoRA adapter
    (merged afterwards) on the response tokens, as BackdoorLLM's DefenseBox fine-tuning baseline does."""

    name = "fine-tune"
    description = "fine-tune the suspect model on clean reference rows (classifiers: all weights; generators: LoRA)"
    method: str | None = None  # full | lora; default: full for classifiers, lora for generators
    epochs: float = 2.0
    learning_rate: float | None = None  # default: 2e-5 (full), 2e-4 (lora)
    batch_size: int = 16
    max_length: int | None = None  # tokens per row; default: the suspect model's own limit

    def __post_init__(self) -> None:
        if self.method not in (None, "full", "lora"):
            raise BackdoorLabError(f"fine-tune method must be full or lora, got {self.method!r}")

    def training_rows(self, victim: Victim, clean: Dataset, inputs: DefenderInputs) -> Dataset:
        """The rows the suspect is fine-tuned on: the clean rows (subclasses add to them)."""
        return clean

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        clean = self.training_rows(victim, self.clean_rows(inputs), inputs)
        method = self.method or ("lora" if victim.is_generator else "full")
        learning_rate = self.learning_rate or (2e-4 if method == "lora" else 2e-5)
        config = TrainConfig(method=method, epochs=self.epochs, learning_rate=learning_rate,
                             batch_size=self.batch_size, max_length=self.max_length or victim.max_length, seed=self.seed)
        tuned = train(victim, clean, workdir / "fine-tune", config, reuse=True)
        return DefenseOutcome(tuned, {"clean_rows": len(clean), "clean_source": clean.source, "method": method,
                                      "learning_rate": learning_rate})
