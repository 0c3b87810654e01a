"""The attack-run folder: the only code that knows its layout.

An attack run holds ``train/`` (the poisoned training set), ``test-clean/`` and ``test-triggered/``
(each a saved :class:`~backdoorlab.data.records.Dataset`) and ``manifest.json`` (source data,
attack, trigger, rate, target, seed, behaviour, test source). The folder appears complete or not
at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.records import Dataset
from ..errors import BackdoorLabError
from ..fileio import atomic_directory, write_json_atomic
from .manifest import MANIFEST_FILE


class AttackRun:
    """An attack-run folder; reading a part of it that is missing raises a clear error."""

    TRAIN, TEST_CLEAN, TEST_TRIGGERED = "train", "test-clean", "test-triggered"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"AttackRun({str(self.folder)!r})"

    @classmethod
    def write(cls, folder: str | Path, train: Dataset, clean: Dataset, triggered: Dataset,
              manifest: dict[str, Any], *, overwrite: bool = False) -> AttackRun:
        """Write the three splits and the manifest into ``folder`` atomically (``overwrite``: replace it)."""
        if len(triggered) == 0:
            raise BackdoorLabError("the triggered test set is empty (no test rows outside the target label?)")
        with atomic_directory(folder, overwrite=overwrite) as tmp:
            for name, data in ((cls.TRAIN, train), (cls.TEST_CLEAN, clean), (cls.TEST_TRIGGERED, triggered)):
                (tmp / name).mkdir()
                data.save_into(tmp / name)
            write_json_atomic(tmp / MANIFEST_FILE, manifest)
        return cls(folder)

    @classmethod
    def split_sizes(cls, train: Dataset, clean: Dataset, triggered: Dataset) -> dict[str, int]:
        """The manifest's ``splits`` entry: each split's name and row count."""
        return {cls.TRAIN: len(train), cls.TEST_CLEAN: len(clean), cls.TEST_TRIGGERED: len(triggered)}

    def exists(self) -> bool:
        """Whether the folder holds an attack run (its manifest and training rows)."""
        return (self.folder / MANIFEST_FILE).is_file() and (self.folder / self.TRAIN).is_dir()

    @property
    def manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST_FILE
        if not path.is_file():
            raise BackdoorLabError(f"{self.folder} is not an attack run (no {MANIFEST_FILE}); "
                                   "create one with `backdoorlab attack`")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BackdoorLabError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None

    def train(self) -> Dataset:
        """The poisoned training rows, poison flags included (the attacker's view)."""
        return Dataset.load(self.folder / self.TRAIN)

    def test_clean(self) -> Dataset:
        return Dataset.load(self.folder / self.TEST_CLEAN)

    def test_triggered(self) -> Dataset:
        return Dataset.load(self.folder / self.TEST_TRIGGERED)

    def read(self) -> tuple[dict[str, Any], Dataset, Dataset]:
        """``(manifest, clean test, triggered test)``."""
        manifest = self.manifest
        return manifest, self.test_clean(), self.test_triggered()
