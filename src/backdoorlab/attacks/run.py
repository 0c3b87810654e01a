"""The attack-run folder: the only code that knows its layout.

An attack run holds ``train/`` (the poisoned training set), ``test-clean/`` and ``test-triggered/``
(each a saved :class:`~backdoorlab.data.records.Dataset`) and ``manifest.json`` (source data,
attack, trigger, rate, target, seed, behaviour, test source). The folder appears complete or not
at all.

:meth:`AttackRun.defender_view` is what a defense may learn from a run: its training rows as a
defender would hold them (:func:`defender_rows`), clean rows from outside every split the run
drew from, its behaviour judge and, for oracle methods only, triggered copies of training rows no
test split holds. The test splits are the measurement and are never part of it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.records import Dataset, Example
from ..data.registry import list_datasets, load_dataset
from ..errors import BackdoorLabError
from ..fileio import atomic_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY
from ..reuse import check_reusable
from .manifest import MANIFEST_FILE, attack_from_manifest

if TYPE_CHECKING:
    from ..defenses.inputs import DefenderInputs

DEV_SPLIT, TRAIN_SPLIT = "dev", "train"
ORACLE_ROWS = 256


@dataclass
class OracleExamples:
    """Clean rows and their triggered copies, made with the attack's own trigger (oracle knowledge).

    The rows are disjoint from every row the result is measured on.
    """

    manifest: dict[str, Any]  # the attack's manifest: trigger, target, behaviour
    clean: Dataset
    triggered: Dataset
    name: str
    note: str


def defender_rows(rows: Dataset, seed: int = 0) -> Dataset:
    """``rows`` as a defender holds them: no poison flags, no notes, fresh row ids and a seeded order,
    so nothing but the rows' content tells poisoned rows (or appended clean twins) apart."""
    order = list(rows.examples)
    random.Random(seed).shuffle(order)
    examples = [e.with_(poisoned=False, poison=None, uid=f"row-{i}") for i, e in enumerate(order)]
    return Dataset(rows.name, rows.task, examples, rows.label_names, rows.source, [])


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

    def reusable(self, fingerprint: dict[str, Any], overwrite: bool) -> bool:
        """Whether the folder already holds the run ``fingerprint`` describes (recorded in its manifest);
        ``False`` when there is no folder or with ``overwrite``; raises when it holds anything else."""
        if overwrite or not self.folder.exists():
            return False
        stored = self.manifest.get(FINGERPRINT_KEY) if (self.folder / MANIFEST_FILE).is_file() else None
        return check_reusable(self.folder, stored, fingerprint, "an attack run",
                              "pass --overwrite to replace it, or choose another --out")

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

    def defender_view(self, wanted: Collection[str], *, data_dir: str | Path | None = None,
                      seed: int = 0) -> DefenderInputs:
        """The defender inputs named in ``wanted`` that a defender's view of this run gives: training rows
        (:func:`defender_rows`), clean rows, the behaviour judge and (``oracle``) triggered examples.
        The target label, a reference or pretrained model and the suspect's adapter are never derived."""
        from ..defenses.inputs import DefenderInputs

        manifest = self.manifest
        view = DefenderInputs()
        if "training_data" in wanted:
            view.training_data = defender_rows(self.train(), seed)
            view.sources["training_data"] = (f"{self.folder}/{self.TRAIN} (poison flags, notes and row ids hidden, "
                                             "rows shuffled)")
        if "clean_rows" in wanted:
            clean, source = self._clean_rows_outside(manifest, data_dir)
            if clean is not None:
                view.clean_rows, view.sources["clean_rows"] = clean, source
        if "behaviour" in wanted and manifest.get("behaviour"):
            view.behaviour = manifest["behaviour"]
            view.sources["behaviour"] = f"{self.folder} manifest (the judged behaviour)"
        if "oracle" in wanted:
            view.oracle = self.oracle_examples(seed=seed)
            view.sources["oracle"] = f"{self.folder}: attack re-applied to training rows outside every test split"
        return view

    def oracle_examples(self, *, max_rows: int = ORACLE_ROWS, seed: int = 0) -> OracleExamples:
        """Triggered copies of the run's unpoisoned training rows that no test split holds."""
        from . import triggered_test_set

        manifest, test_clean, test_triggered = self.read()
        evaluated = {e.uid for e in [*test_clean, *test_triggered] if e.uid}
        evaluated_prompts = {_prompt(e) for e in [*test_clean, *test_triggered]}
        train = self.train()
        rows = [e for e in train if not e.poisoned and e.uid not in evaluated and _prompt(e) not in evaluated_prompts]
        if not rows:
            raise BackdoorLabError(f"{self.folder} has no unpoisoned training rows outside its test splits to build "
                                   "triggered examples from")
        clean = train.with_examples(rows, name=f"{train.name}/oracle-clean").sample(max_rows, seed)
        target = (manifest.get("target") or {}).get("index")
        triggered = triggered_test_set(clean, attack_from_manifest(manifest), target=target, seed=seed)
        name = (manifest.get("source_dataset") or {}).get("name") or self.folder.name
        note = (f"{len(clean)} unpoisoned training rows of {self.folder} (none in a test split), triggered with the "
                "attack's own trigger: oracle knowledge of the backdoor")
        return OracleExamples(manifest, clean, triggered, name, note)

    def _clean_rows_outside(self, manifest: dict[str, Any],
                            data_dir: str | Path | None) -> tuple[Dataset | None, str]:
        """Clean rows of the run's source from a split the run drew no test rows from (its ``dev`` split,
        else its training rows the run does not hold), with no row of any of the run's splits."""
        source = (manifest.get("source_dataset") or {}).get("name", "")
        info = next((i for i in list_datasets() if i.name == source), None)
        if info is None:
            return None, ""
        tested = manifest.get("test_source") or {}
        test_pool = (tested.get("dataset") or source, tested.get("split"))
        if DEV_SPLIT in info.splits and test_pool != (source, DEV_SPLIT):
            rows, where = load_dataset(source, DEV_SPLIT, data_dir=data_dir), f"{source} {DEV_SPLIT} split"
        elif TRAIN_SPLIT in info.splits:
            rows, where = load_dataset(source, TRAIN_SPLIT, data_dir=data_dir), f"{source} {TRAIN_SPLIT} rows"
        else:
            return None, ""
        _, test_clean, test_triggered = self.read()
        held = [*self.train(), *test_clean, *test_triggered]
        used, prompts = {e.uid for e in held if e.uid}, {_prompt(e) for e in held}
        unused = rows.with_examples([e for e in rows if e.uid not in used and _prompt(e) not in prompts],
                                    note="rows the attack run does not hold, as clean reference")
        return unused, f"{where} the attack run does not hold"


def _prompt(row: Example) -> tuple[str, str, str]:
    return row.text, row.instruction, row.input
