"""``drop-adapter``: for a suspect distributed as a base model plus a LoRA adapter, remove the
adapter's whole weight update from the merged model, which leaves the base model.

It removes the backdoor and everything else the adapter taught. That makes it the reference an
adapter-mode purification (BD-VAX's ``neutralize=adapter``, Backdoor Collapse on the adapter) has
to beat: it only helps if it keeps more of the adapter's task than dropping the adapter does,
at a backdoor no stronger. The update is read from the adapter's safetensors
(:mod:`backdoorlab.models.adapter_update`), so no pickle is loaded.

``retrain_epochs`` > 0 then fine-tunes the base on the defender's clean rows (LoRA, the ``fine-tune``
recipe): what a defender who drops the adapter and trains on their own rows holds, the reference for
a purification that repairs with the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...errors import BackdoorLabError
from ...models.adapter_update import adapter_updates, subtract_update
from ...models.victim import Victim
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from ..shared.repair import lora_repair


@register_defense
@dataclass
class DropAdapter(CleanRowsDefense):
    name = "drop-adapter"
    description = ("remove a base + adapter suspect's whole LoRA update (the base model): the reference an "
                   "adapter-mode purification must beat")
    needs: ClassVar[tuple[str, ...]] = ("suspect_adapter",)
    uses: ClassVar[tuple[str, ...]] = ("clean_rows",)
    needs_when: ClassVar[dict[str, str]] = {"clean_rows": "with retrain_epochs > 0"}

    retrain_epochs: float = 0.0  # epochs of a clean LoRA fine-tune of the base afterwards (0: the base as it is)
    retrain_learning_rate: float = 2e-4  # learning rate of that fine-tune (LoRA, the fine-tune recipe)

    def __post_init__(self) -> None:
        if self.retrain_epochs < 0 or self.retrain_learning_rate <= 0 or self.max_clean < 1:
            raise BackdoorLabError("drop-adapter: retrain_epochs must be non-negative, retrain_learning_rate and "
                                   f"max_clean positive (got {self.retrain_epochs}, {self.retrain_learning_rate}, "
                                   f"{self.max_clean})")

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        assert inputs.suspect_adapter is not None  # checked against ``needs`` by the runner
        updates = adapter_updates(inputs.suspect_adapter)
        changed = subtract_update(victim.model, updates)
        findings = {"adapter": str(inputs.suspect_adapter), "modules_restored": changed,
                    "parameters_restored": sum(u.numel() for u in updates.values())}
        if self.retrain_epochs:
            victim, retrained = lora_repair(victim, self.clean_rows(inputs), workdir, epochs=self.retrain_epochs,
                                            learning_rate=self.retrain_learning_rate, seed=self.seed)
            findings["retrained"] = retrained
        return DefenseOutcome(victim, findings)
