"""The defender's inputs for tests that call ``Defense.apply`` directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backdoorlab.defenses.inputs import INPUTS, DefenderInputs, gather_inputs, is_attack_run


def defender_view(attack_run: str | Path, **given: Any) -> DefenderInputs:
    """Every defender input derivable from ``attack_run`` (none if it is not one), plus ``given``."""
    if not is_attack_run(attack_run):
        return DefenderInputs(**given)
    return gather_inputs(tuple(INPUTS), attack_run=attack_run, **given)
