"""The short clean fine-tune that repairs a generator after a purification edited it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...data.records import Dataset
from ...models.victim import Victim
from ..fine_tune import CleanFineTune
from ..inputs import DefenderInputs


def lora_repair(victim: Victim, clean: Dataset, workdir: Path, *, epochs: float, learning_rate: float,
                seed: int) -> tuple[Victim, dict[str, Any]]:
    """``victim`` fine-tuned on ``clean`` with the ``fine-tune`` defense's LoRA recipe (merged); unchanged at
    0 epochs. The findings are the fine-tune's, with the epochs."""
    if epochs == 0:
        return victim, {"epochs": 0}
    tuner = CleanFineTune(method="lora", epochs=epochs, learning_rate=learning_rate, max_clean=len(clean), seed=seed)
    outcome = tuner.apply(victim, DefenderInputs(clean_rows=clean), workdir)
    return outcome.victim, {**outcome.findings, "epochs": epochs}
