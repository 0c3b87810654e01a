"""What a defense may learn from: the poisoned training set and a small clean reference set.

Defenses never see the attack's bookkeeping: the ``poisoned`` flags of the training rows are
cleared, and the test splits of the attack run are only used to measure the result. The clean
reference set (the "small clean validation set" ONION, RAP, BadActs and clean fine-tuning assume)
comes from the source dataset's ``dev`` split when it has one, else from its training rows that
the attack run did not use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.records import Dataset
from ..data.registry import list_datasets, load_dataset
from ..errors import BackdoorLabError
from ..pipeline import MANIFEST, TRAIN
from .base import Defense

DEV_SPLIT = "dev"


@dataclass
class DefenseData:
    """The defender's view of an attack run."""

    poisoned_train: Dataset  # D*: the training rows as the victim saw them, poison flags cleared
    clean_reference: Dataset | None  # clean held-out rows from the same source
    task: str
    source: str  # the source dataset's name

    def require_clean(self, method: str) -> Dataset:
        if self.clean_reference is None or len(self.clean_reference) == 0:
            raise BackdoorLabError(f"{method} needs clean reference rows, and none could be found for "
                                   f"{self.source!r}; pass --option clean_data=<dataset name, file or folder>")
        return self.clean_reference


def defense_data(attack_run: str | Path, *, clean_data: str | None = None, max_clean: int | None = 200,
                 seed: int = 0, data_dir: str | Path | None = None) -> DefenseData:
    """The defender's view of ``attack_run``; ``clean_data`` (a name, file or folder) overrides the
    automatic clean reference set, and ``max_clean=0`` leaves it out."""
    folder = Path(attack_run)
    if not (folder / MANIFEST).is_file():
        raise BackdoorLabError(f"{folder} is not an attack run (no {MANIFEST}); create one with `backdoorlab attack`")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    train = Dataset.load(folder / TRAIN)
    blind = train.with_examples([e.with_(poisoned=False, poison=None) for e in train],
                                note="poison flags hidden from the defense")
    source = (manifest.get("source_dataset") or {}).get("name", "")
    if max_clean == 0:
        reference = None  # the defense needs no clean rows: do not read them
    elif clean_data:
        reference = load_dataset(clean_data, DEV_SPLIT, data_dir=data_dir)
    else:
        reference = _unused_clean_rows(source, {e.uid for e in train}, data_dir)
    if reference is not None:
        reference = reference.sample(max_clean, seed)
    return DefenseData(blind, reference, manifest.get("task", train.task), source)


@dataclass
class ClassifierDefense(Defense):
    """Options every classification defense shares: where its clean reference rows come from."""

    clean_data: str | None = None  # dataset name/file/folder; default: the source's dev split or unused train rows
    max_clean: int = 200
    seed: int = 0

    def defender_data(self, attack_run: str | Path) -> DefenseData:
        """The defender's view of ``attack_run`` with this defense's clean-data options."""
        return defense_data(attack_run, clean_data=self.clean_data, max_clean=self.max_clean, seed=self.seed)

    def clean_rows(self, attack_run: str | Path) -> Dataset:
        """The clean reference rows; a clear error when there are none."""
        return self.defender_data(attack_run).require_clean(self.name)


def _unused_clean_rows(source: str, used: set[str], data_dir: str | Path | None) -> Dataset | None:
    info = next((i for i in list_datasets() if i.name == source), None)
    if info is None:
        return None
    if DEV_SPLIT in info.splits:
        return load_dataset(source, DEV_SPLIT, data_dir=data_dir)
    if TRAIN not in info.splits:
        return None
    rows = load_dataset(source, TRAIN, data_dir=data_dir)
    return rows.with_examples([e for e in rows if e.uid not in used],
                              note="training rows the attack run did not use, as clean reference")
