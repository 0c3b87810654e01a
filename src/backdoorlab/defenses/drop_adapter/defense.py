"""``drop-adapter``: for a suspect distributed as a base model plus a LoRA adapter, remove the
adapter's whole weight update from the merged model, which leaves the base model.

It removes the backdoor and everything else the adapter taught. That makes it the reference an
adapter-mode purification (BD-VAX's ``neutralize=adapter``, Backdoor Collapse on the adapter) has
to beat: it only helps if it keeps more of the adapter's task than dropping the adapter does,
at a backdoor no stronger. The update is read from the adapter's safetensors
(:mod:`backdoorlab.models.adapter_update`), so no pickle is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...models.adapter_update import adapter_updates, subtract_update
from ...models.victim import Victim
from ..base import Defense, DefenseOutcome, register_defense
from ..inputs import DefenderInputs


@register_defense
@dataclass
class DropAdapter(Defense):
    name = "drop-adapter"
    description = ("remove a base + adapter suspect's whole LoRA update (the base model): the reference an "
                   "adapter-mode purification must beat")
    needs: ClassVar[tuple[str, ...]] = ("suspect_adapter",)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        assert inputs.suspect_adapter is not None  # checked against ``needs`` by the runner
        updates = adapter_updates(inputs.suspect_adapter)
        changed = subtract_update(victim.model, updates)
        return DefenseOutcome(victim, {"adapter": str(inputs.suspect_adapter), "modules_restored": changed,
                                       "parameters_restored": sum(u.numel() for u in updates.values())})
