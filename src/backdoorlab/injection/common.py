"""What every injection method shares: options, the run folder, the data checks and the summary.

A run folder holds ``model/`` (the backdoored model, written atomically with
:meth:`~backdoorlab.models.victim.Victim.save`), ``inject.json`` (what went in and came out) and,
for methods that train, ``checkpoints/``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from ..fileio import fresh_directory, write_json_atomic
from ..manifest import environment_info
from ..models.loading import load_victim
from ..models.victim import Victim
from ..options import build
from ..reuse import claim_folder
from ..training import CHECKPOINT_DIR, MODEL_DIR

__all__ = ["CHECKPOINT_DIR", "INJECT_FILE", "MODEL_DIR", "check_run_folder", "config_from_options", "first_trigger",
           "finish_run", "poisoned_rows", "victim_for"]

INJECT_FILE = "inject.json"
ConfigT = TypeVar("ConfigT")


def config_from_options(config_class: type[ConfigT], options: Mapping[str, Any] | None, method: str) -> ConfigT:
    """Build ``config_class`` from ``options`` through the shared option check (names and types)."""
    return build(config_class, options, f"injection method {method!r}")


def check_run_folder(out: str | Path, overwrite: bool, fingerprint: Mapping[str, Any] | None = None) -> Path:
    """Refuse a run folder whose ``model/`` exists unless ``overwrite`` (which starts a fresh folder);
    with a ``fingerprint``, claim the folder so that checkpoints of another run are never resumed."""
    out = Path(out)
    if overwrite:
        fresh_directory(out)
    elif (out / MODEL_DIR).exists():
        raise BackdoorLabError(f"{out / MODEL_DIR} already exists; pass overwrite=True (--overwrite) to inject again")
    if fingerprint is not None:
        claim_folder(out, fingerprint, "an injection run")
    return out


def victim_for(model: str | Path | Victim, kind: str, device: str, dtype: str = "float32") -> Victim:
    """``model`` itself if it is a :class:`Victim`, else the model loaded as ``kind`` (``"auto"`` allowed)."""
    if isinstance(model, Victim):
        return model
    return load_victim(model, kind=kind, device=device, dtype=dtype)


def poisoned_rows(dataset: Dataset, method: str) -> list[Example]:
    """The dataset's poisoned rows; a clear error if there are none."""
    if len(dataset) == 0:
        raise BackdoorLabError(f"dataset {dataset.name!r} is empty")
    rows = [e for e in dataset if e.poisoned and e.poison]
    if not rows:
        raise BackdoorLabError(f"{method} injection needs an attack-run training set, but {dataset.name!r} has no "
                               "poisoned rows; poison it first (backdoorlab.attacks.poison_dataset)")
    return rows


def first_trigger(example: Example) -> str:
    """The trigger text of a poisoned row (the first one for multi-trigger attacks)."""
    trigger = (example.poison or {}).get("trigger")
    if isinstance(trigger, (list, tuple)):
        trigger = trigger[0] if trigger else None
    if not isinstance(trigger, str) or not trigger.strip():
        raise BackdoorLabError(f"poisoned row {example.uid or '?'} records no trigger text (poison['trigger'] is "
                               f"{(example.poison or {}).get('trigger')!r})")
    return trigger


def finish_run(victim: Victim, out: Path, overwrite: bool, method: str, config: Any, dataset: Dataset,
               started: float, results: Mapping[str, Any]) -> Path:
    """Save the model (LoRA merged, atomically) and ``inject.json``; return the run folder."""
    summary = {
        "method": method,
        "base_model": victim.name,
        "kind": victim.kind,
        "dataset": {"name": dataset.name, "rows": len(dataset), "source": dataset.source, "notes": dataset.notes,
                    "poisoned_rows": sum(e.poisoned for e in dataset)},
        "config": asdict(config) if is_dataclass(config) else config,
        **results,
        "seconds": round(time.time() - started, 1),
        "environment": environment_info(),
    }
    victim.save(out / MODEL_DIR, overwrite=overwrite, extra={"injection": INJECT_FILE})
    write_json_atomic(out / INJECT_FILE, summary)
    return out
