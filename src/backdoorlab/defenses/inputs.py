"""What a defense may learn from: the inputs a real defender holds, and nothing else.

A defender holds the suspect model and, where a method assumes them, some of:

- ``training_data``: the rows the suspect was trained on (poison flags, if any, hidden);
- ``clean_rows``: a small set of clean rows (classification or instruction rows);
- ``behaviour``: the kind of bad behaviour to remove (a judge name, e.g. ``refusal``);
- ``target_label``: the label a classification backdoor is suspected to push towards;
- ``reference_model``: a clean model of the same family;
- ``suspect_adapter``: the suspect's own LoRA adapter, where the suspect is distributed as a base
  model plus an adapter (part of the suspect, not a clean reference);
- ``oracle``: triggered examples of the very backdoor being removed. No real defender has them; a
  method that needs them (the attribution defenses) gets rows disjoint from every evaluated row,
  and ``defense.json`` records that it used this oracle knowledge.

Each defense declares the inputs it needs (:attr:`Defense.needs`) and the ones it uses when given
(:attr:`Defense.uses`). :func:`gather_inputs` builds them from the user's files, or, for
benchmarks, derives a defender's view from an attack run: its training rows with the poison flags
cleared, clean rows from outside the attack run, and (oracle only) triggered copies of training
rows the evaluation never reads. The attack run's test splits are the measurement and are never
handed to a defense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attacks.manifest import attack_from_manifest
from ..attacks.run import AttackRun
from ..data.records import Dataset, Example
from ..data.registry import list_datasets, load_dataset
from ..errors import BackdoorLabError
from ..fingerprint import dataset_digest, digest, model_identity
from ..pipeline import load_training_data

DEV_SPLIT, TRAIN_SPLIT = "dev", "train"
ORACLE_ROWS = 256

#: Every defender input, and what it is (``backdoorlab defenses NAME`` shows them).
INPUTS = {
    "training_data": "the suspect's training rows (--train-data), poison flags hidden",
    "clean_rows": "a small set of clean rows (--clean-data)",
    "behaviour": "the bad behaviour to remove, as a judge name (--behaviour)",
    "target_label": "the label the backdoor is suspected to target (--target-label)",
    "reference_model": "a clean reference model of the same family (--reference-model)",
    "suspect_adapter": "the suspect's own LoRA adapter, where it is distributed as base + adapter (--suspect-adapter)",
    "oracle": "triggered examples of the backdoor itself (oracle knowledge; benchmarks only)",
}


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


@dataclass
class DefenderInputs:
    """What the defender holds besides the suspect model; ``sources`` says where each came from."""

    training_data: Dataset | None = None
    clean_rows: Dataset | None = None
    behaviour: str | None = None
    target_label: int | str | None = None
    reference_model: str | None = None
    suspect_adapter: str | None = None
    oracle: OracleExamples | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def require(self, name: str, method: str) -> Any:
        """The input ``name``, or a clear error saying how to provide it."""
        value = getattr(self, name)
        if value is None or (isinstance(value, Dataset) and len(value) == 0):
            raise BackdoorLabError(f"{method} needs {INPUTS[name]}, and none was given")
        return value

    def given(self) -> list[str]:
        return [name for name in INPUTS if getattr(self, name) is not None]

    def describe(self) -> dict[str, Any]:
        """What ``defense.json`` records: each input given, its size and where it came from."""
        described: dict[str, Any] = {}
        for name in self.given():
            value = getattr(self, name)
            entry: dict[str, Any] = {"source": self.sources.get(name, "")}
            if isinstance(value, Dataset):
                entry["rows"] = len(value)
            elif isinstance(value, OracleExamples):
                entry.update(rows=len(value.clean), oracle_knowledge=True, note=value.note)
            else:
                entry["value"] = value
            described[name] = entry
        return described

    def identity(self) -> str:
        """A hash of every input's content (part of a defense run's fingerprint)."""
        parts: dict[str, Any] = {}
        for name in self.given():
            value = getattr(self, name)
            if isinstance(value, Dataset):
                parts[name] = dataset_digest(value)
            elif isinstance(value, OracleExamples):
                parts[name] = [dataset_digest(value.clean), dataset_digest(value.triggered), value.manifest]
            elif name in ("reference_model", "suspect_adapter"):
                parts[name] = model_identity(value)
            else:
                parts[name] = value
        return digest(parts)


def gather_inputs(wanted: tuple[str, ...] | list[str], *, attack_run: str | Path | None = None,
                  train_data: str | Path | None = None, clean_data: str | Path | None = None,
                  behaviour: str | None = None, target_label: int | str | None = None,
                  reference_model: str | Path | None = None, suspect_adapter: str | Path | None = None,
                  data_dir: str | Path | None = None, seed: int = 0) -> DefenderInputs:
    """The defender inputs named in ``wanted``, from the user's files or derived from ``attack_run``.

    Explicit inputs win. From an attack run only a defender's view is derived: its training rows
    with poison flags cleared, clean rows from outside the run (the source's ``dev`` split, else
    its training rows the run did not use), its behaviour judge, and, for ``oracle``, triggered
    copies of unpoisoned training rows that no test split holds. The target label, a reference
    model and the suspect's adapter are never derived: a method that assumes them is given them
    explicitly.
    """
    inputs = DefenderInputs()
    manifest = AttackRun(attack_run).manifest if attack_run is not None else None
    if "training_data" in wanted:
        if train_data is not None:
            inputs.training_data = _hide_poison(load_training_data(train_data, data_dir=data_dir))
            inputs.sources["training_data"] = str(train_data)
        elif attack_run is not None:
            inputs.training_data = _hide_poison(AttackRun(attack_run).train())
            inputs.sources["training_data"] = f"{attack_run}/{AttackRun.TRAIN} (poison flags hidden)"
    if "clean_rows" in wanted:
        if clean_data is not None:
            inputs.clean_rows = load_dataset(str(clean_data), DEV_SPLIT, data_dir=data_dir)
            inputs.sources["clean_rows"] = str(clean_data)
        elif attack_run is not None and manifest is not None:
            inputs.clean_rows, inputs.sources["clean_rows"] = _clean_rows_outside(attack_run, manifest, data_dir)
    if "behaviour" in wanted:
        inputs.behaviour = behaviour or (manifest or {}).get("behaviour")
        if inputs.behaviour is not None:
            inputs.sources["behaviour"] = "given" if behaviour else f"{attack_run} manifest (the judged behaviour)"
    if "target_label" in wanted and target_label is not None:
        inputs.target_label, inputs.sources["target_label"] = target_label, "given"
    if "reference_model" in wanted and reference_model is not None:
        inputs.reference_model, inputs.sources["reference_model"] = str(reference_model), "given"
    if "suspect_adapter" in wanted and suspect_adapter is not None:
        if not Path(suspect_adapter).is_dir():
            raise BackdoorLabError(f"--suspect-adapter {suspect_adapter} is not a folder (a peft LoRA adapter: "
                                   "adapter_config.json and adapter_model.safetensors)")
        inputs.suspect_adapter, inputs.sources["suspect_adapter"] = str(suspect_adapter), "given"
    if "oracle" in wanted and attack_run is not None:
        inputs.oracle = oracle_examples(attack_run, seed=seed)
        inputs.sources["oracle"] = f"{attack_run}: attack re-applied to training rows outside every test split"
    return inputs


def oracle_examples(attack_run: str | Path, *, max_rows: int = ORACLE_ROWS, seed: int = 0) -> OracleExamples:
    """Triggered copies of the attack run's unpoisoned training rows that no test split holds."""
    from ..attacks import triggered_test_set

    run = AttackRun(attack_run)
    manifest, test_clean, test_triggered = run.read()
    evaluated = {e.uid for e in [*test_clean, *test_triggered] if e.uid}
    evaluated_prompts = {_prompt(e) for e in [*test_clean, *test_triggered]}
    train = run.train()
    rows = [e for e in train if not e.poisoned and e.uid not in evaluated and _prompt(e) not in evaluated_prompts]
    if not rows:
        raise BackdoorLabError(f"{attack_run} has no unpoisoned training rows outside its test splits to build "
                               "triggered examples from")
    clean = train.with_examples(rows, name=f"{train.name}/oracle-clean").sample(max_rows, seed)
    target = (manifest.get("target") or {}).get("index")
    triggered = triggered_test_set(clean, attack_from_manifest(manifest), target=target, seed=seed)
    name = (manifest.get("source_dataset") or {}).get("name") or Path(attack_run).name
    note = (f"{len(clean)} unpoisoned training rows of {attack_run} (none in a test split), triggered with the "
            "attack's own trigger: oracle knowledge of the backdoor")
    return OracleExamples(manifest, clean, triggered, name, note)


def _prompt(row: Example) -> tuple[str, str, str]:
    return row.text, row.instruction, row.input


def _hide_poison(rows: Dataset) -> Dataset:
    if not any(e.poisoned or e.poison for e in rows):
        return rows
    return rows.with_examples([e.with_(poisoned=False, poison=None) for e in rows],
                              note="poison flags hidden from the defense")


def _clean_rows_outside(attack_run: str | Path, manifest: dict[str, Any],
                        data_dir: str | Path | None) -> tuple[Dataset | None, str]:
    """Clean rows of the attack run's source that the run holds in no split."""
    source = (manifest.get("source_dataset") or {}).get("name", "")
    info = next((i for i in list_datasets() if i.name == source), None)
    if info is None:
        return None, ""
    if DEV_SPLIT in info.splits:
        return load_dataset(source, DEV_SPLIT, data_dir=data_dir), f"{source} {DEV_SPLIT} split"
    if TRAIN_SPLIT not in info.splits:
        return None, ""
    run = AttackRun(attack_run)
    _, test_clean, test_triggered = run.read()
    used = {e.uid for e in [*run.train(), *test_clean, *test_triggered]}
    rows = load_dataset(source, TRAIN_SPLIT, data_dir=data_dir)
    unused = rows.with_examples([e for e in rows if e.uid not in used],
                                note="training rows the attack run did not use, as clean reference")
    return unused, f"{source} {TRAIN_SPLIT} rows the attack run does not hold"


def is_attack_run(folder: str | Path) -> bool:
    return AttackRun(folder).exists()
