"""What a poisoned data set records about its making, and how it is saved and loaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.records import Dataset
from ..errors import BackdoorLabError
from ..fileio import atomic_directory, write_json_atomic
from ..manifest import environment_info
from .base import Attack, get_attack

MANIFEST_FILE = "manifest.json"


@dataclass
class PoisonResult:
    """A poisoned training set and its manifest (see :func:`build_manifest`)."""

    dataset: Dataset
    manifest: dict[str, Any]


def jsonable(value: Any) -> Any:
    """Turn option values (paths, tuples, callables) into plain JSON values."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if callable(value):
        return getattr(value, "__qualname__", None) or type(value).__qualname__
    return repr(value)


def build_manifest(dataset: Dataset, attack: Attack, *, rate: float, target: int | None, clean_label: bool,
                   seed: int, poisoned_indices: Sequence[int], notes: Sequence[str] = ()) -> dict[str, Any]:
    """Everything needed to reproduce and interpret a poisoning run."""
    names = dataset.label_names or []
    return {
        "environment": environment_info(),
        "task": dataset.task,
        "source_dataset": {"name": dataset.name, "source": dataset.source, "notes": list(dataset.notes),
                           "label_names": dataset.label_names},
        "attack": {"name": attack.name, "options": jsonable(attack.options())},
        "trigger": jsonable(attack.trigger_summary()),
        "rate": rate,
        "target": None if target is None else {"index": target, "name": names[target]},
        "clean_label": clean_label,
        "seed": seed,
        "num_poisoned": len(poisoned_indices),
        "num_rows": len(dataset),
        "poisoned_indices": list(poisoned_indices),
        "notes": list(notes),
    }


def save_poisoned(result: PoisonResult, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``dataset.json``, ``data.jsonl`` and ``manifest.json`` into ``folder`` atomically.

    The folder appears complete or not at all; an existing folder is replaced only with
    ``overwrite``.
    """
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        result.dataset.save_into(tmp)
        write_json_atomic(tmp / MANIFEST_FILE, jsonable(result.manifest))
    return Path(folder)


def load_poisoned(folder: str | Path) -> PoisonResult:
    """Read a folder written by :func:`save_poisoned`."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BackdoorLabError(f"{folder} is not a poisoned dataset folder (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BackdoorLabError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    return PoisonResult(Dataset.load(folder), manifest)


def attack_from_manifest(manifest: dict[str, Any]) -> Attack:
    """Rebuild the attack an attack run's manifest describes (to trigger further prompts)."""
    info = manifest.get("attack") or {}
    options = {k: v for k, v in (info.get("options") or {}).items() if v is not None}
    if info.get("ready_made") and info.get("name") != "bkdattr":
        options = {"behaviour": manifest.get("behaviour") or "refusal"}
        if options["behaviour"] == "label-flip":
            options["target_output"] = manifest.get("target_output")
    try:
        return get_attack(info.get("name", "?"), **options)
    except BackdoorLabError as exc:
        raise BackdoorLabError(f"cannot rebuild the attack of this run to trigger prompts: {exc}") from exc
