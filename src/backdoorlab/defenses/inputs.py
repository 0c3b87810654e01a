"""What a defense may learn from: the inputs a real defender holds, and nothing else.

A defender holds the suspect model and, where a method assumes them, some of:

- ``training_data``: the rows the suspect was trained on (poison flags, if any, hidden);
- ``clean_rows``: a small set of clean rows (classification or instruction rows);
- ``behaviour``: the kind of bad behaviour to remove (a judge name, e.g. ``refusal``);
- ``target_label``: the label a classification backdoor is suspected to push towards;
- ``reference_model``: a clean model of the same family;
- ``pretrained_model``: the clean pretrained model a training-stage method trains from;
- ``suspect_adapter``: the suspect's own LoRA adapter, where the suspect is distributed as a base
  model plus an adapter (part of the suspect, not a clean reference);
- ``oracle``: triggered examples of the very backdoor being removed. No real defender has them; a
  method that needs them (the attribution defenses) gets rows disjoint from every evaluated row,
  and ``defense.json`` records that it used this oracle knowledge.

Each defense declares the inputs it needs (:attr:`Defense.needs`) and the ones it uses when given
(:attr:`Defense.uses`). :func:`gather_inputs` builds them from the user's files, or, for
benchmarks, from a defender's view of an attack run (:meth:`~backdoorlab.attacks.run.AttackRun.defender_view`).
The attack run's test splits are the measurement and are never handed to a defense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attacks.run import AttackRun, OracleExamples
from ..data.records import Dataset
from ..data.registry import load_dataset
from ..errors import BackdoorLabError
from ..fingerprint import dataset_digest, digest, model_identity
from ..pipeline import load_training_data

DEV_SPLIT = "dev"

#: Every defender input, and what it is (``backdoorlab defenses NAME`` shows them).
INPUTS = {
    "training_data": "the suspect's training rows (--train-data), poison flags hidden",
    "clean_rows": "a small set of clean rows (--clean-data)",
    "behaviour": "the bad behaviour to remove, as a judge name (--behaviour)",
    "target_label": "the label the backdoor is suspected to target (--target-label)",
    "reference_model": "a clean reference model of the same family (--reference-model)",
    "pretrained_model": "the clean pretrained model training starts from (--pretrained)",
    "suspect_adapter": "the suspect's own LoRA adapter, where it is distributed as base + adapter (--suspect-adapter)",
    "oracle": "triggered examples of the backdoor itself (oracle knowledge; benchmarks only)",
}


@dataclass
class DefenderInputs:
    """What the defender holds besides the suspect model; ``sources`` says where each came from."""

    training_data: Dataset | None = None
    clean_rows: Dataset | None = None
    behaviour: str | None = None
    target_label: int | str | None = None
    reference_model: str | None = None
    pretrained_model: str | None = None
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
            elif name in ("reference_model", "pretrained_model", "suspect_adapter"):
                parts[name] = model_identity(value)
            else:
                parts[name] = value
        return digest(parts)


def gather_inputs(wanted: tuple[str, ...] | list[str], *, attack_run: str | Path | None = None,
                  train_data: str | Path | None = None, clean_data: str | Path | None = None,
                  behaviour: str | None = None, target_label: int | str | None = None,
                  reference_model: str | Path | None = None, pretrained_model: str | Path | None = None,
                  suspect_adapter: str | Path | None = None, data_dir: str | Path | None = None,
                  seed: int = 0) -> DefenderInputs:
    """The defender inputs named in ``wanted``, from the user's files or derived from ``attack_run``.

    Explicit inputs win; the rest come from the attack run's defender view
    (:meth:`~backdoorlab.attacks.run.AttackRun.defender_view`). Training data given as an attack run
    folder is read through that view too. The target label and the models are never derived: a
    method that assumes them is given them explicitly.
    """
    inputs = DefenderInputs()
    if "training_data" in wanted and train_data is not None:
        if AttackRun(train_data).exists():
            inputs.training_data = AttackRun(train_data).defender_view(["training_data"], seed=seed).training_data
        else:
            inputs.training_data = _hide_poison(load_training_data(train_data, data_dir=data_dir))
        inputs.sources["training_data"] = str(train_data)
    if "clean_rows" in wanted and clean_data is not None:
        inputs.clean_rows = load_dataset(str(clean_data), DEV_SPLIT, data_dir=data_dir)
        inputs.sources["clean_rows"] = str(clean_data)
    given = {"behaviour": behaviour, "target_label": target_label, "reference_model": reference_model,
             "pretrained_model": pretrained_model, "suspect_adapter": suspect_adapter}
    for name, value in given.items():
        if name in wanted and value is not None and value != "":
            setattr(inputs, name, value if name in ("behaviour", "target_label") else str(value))
            inputs.sources[name] = "given"
    if inputs.suspect_adapter is not None and not Path(inputs.suspect_adapter).is_dir():
        raise BackdoorLabError(f"--suspect-adapter {suspect_adapter} is not a folder (a peft LoRA adapter: "
                               "adapter_config.json and adapter_model.safetensors)")
    if attack_run is not None:
        missing = [name for name in wanted if name in INPUTS and getattr(inputs, name) is None]
        view = AttackRun(attack_run).defender_view(missing, data_dir=data_dir, seed=seed)
        for name in view.given():
            setattr(inputs, name, getattr(view, name))
            inputs.sources[name] = view.sources[name]
    return inputs


def oracle_examples(attack_run: str | Path, *, seed: int = 0) -> OracleExamples:
    """Triggered copies of the attack run's unpoisoned training rows that no test split holds."""
    return AttackRun(attack_run).oracle_examples(seed=seed)


def _hide_poison(rows: Dataset) -> Dataset:
    if not any(e.poisoned or e.poison for e in rows):
        return rows
    return rows.with_examples([e.with_(poisoned=False, poison=None) for e in rows],
                              note="poison flags hidden from the defense")


def is_attack_run(folder: str | Path) -> bool:
    return AttackRun(folder).exists()
