"""Example records and in-memory datasets shared by every stage of the pipeline.

One record type serves classification (``text`` + ``label``) and instruction tuning
(``instruction`` + ``input`` + ``response``). ``poisoned`` says whether an attack touched the row
and ``poison`` says how (attack name, trigger, behaviour, original label or response).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import BackdoorLabError
from ..fileio import atomic_directory, write_json_atomic, write_jsonl_atomic

Task = Literal["classification", "generation"]


@dataclass(frozen=True)
class Example:
    """One data row.

    Classification rows use ``text`` and ``label`` (an index into the dataset's ``label_names``;
    ``None`` when the true label is unknown, e.g. a paraphrased test row known only to be
    non-target). Generative rows use ``instruction``, optional ``input`` and ``response``.
    """

    text: str = ""
    label: int | None = None
    instruction: str = ""
    input: str = ""
    response: str = ""
    poisoned: bool = False
    poison: dict[str, Any] | None = None
    uid: str = ""

    @property
    def is_generative(self) -> bool:
        return bool(self.instruction) and not self.text

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None, False) or k == "label"}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Example":
        known = {f: row[f] for f in cls.__dataclass_fields__ if f in row}
        return cls(**known)

    def with_(self, **changes: Any) -> "Example":
        """Return a copy with ``changes`` applied (records are immutable)."""
        return replace(self, **changes)


@dataclass
class Dataset:
    """A named, ordered list of examples plus what is needed to interpret them."""

    name: str
    task: Task
    examples: list[Example]
    label_names: list[str] | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task not in ("classification", "generation"):
            raise BackdoorLabError(f"dataset task must be 'classification' or 'generation', got {self.task!r}")
        if self.task == "classification" and not self.label_names:
            raise BackdoorLabError(f"classification dataset {self.name!r} needs label_names")

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def num_labels(self) -> int:
        return len(self.label_names or [])

    def label_index(self, label: int | str) -> int:
        """Resolve a label given as an index or a name; raise a clear error if it is not in the set."""
        names = self.label_names or []
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            lowered = [n.lower() for n in names]
            if label.lower() in lowered:
                return lowered.index(label.lower())
        else:
            index = int(label)
            if 0 <= index < len(names):
                return index
        choices = ", ".join(f"{i}={n}" for i, n in enumerate(names))
        raise BackdoorLabError(f"label {label!r} is not in the label set of {self.name!r} ({choices})")

    def with_examples(self, examples: Sequence[Example], name: str | None = None, note: str | None = None) -> "Dataset":
        """Return a dataset with the same metadata and different rows."""
        notes = self.notes + ([note] if note else [])
        return Dataset(name or self.name, self.task, list(examples), self.label_names, self.source, notes)

    def sample(self, n: int | None, seed: int = 0) -> "Dataset":
        """Return ``n`` rows drawn without replacement with ``seed`` (all rows if ``n`` is None or too big)."""
        if n is None or n >= len(self):
            return self
        rows = random.Random(seed).sample(self.examples, n)
        return self.with_examples(rows, note=f"subsampled to {n} rows with seed {seed}")

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``dataset.json`` (metadata) and ``data.jsonl`` (rows) into ``folder`` atomically."""
        with atomic_directory(folder, overwrite=overwrite) as tmp:
            self.save_into(tmp)
        return Path(folder)

    def save_into(self, folder: Path) -> None:
        """Write the two files into an existing folder (each file atomically)."""
        meta = {"name": self.name, "task": self.task, "label_names": self.label_names,
                "source": self.source, "notes": self.notes, "rows": len(self)}
        write_jsonl_atomic(folder / "data.jsonl", [e.to_dict() for e in self.examples])
        write_json_atomic(folder / "dataset.json", meta)

    @classmethod
    def load(cls, folder: str | Path) -> "Dataset":
        """Read a folder written by :meth:`save`."""
        folder = Path(folder)
        meta_path, rows_path = folder / "dataset.json", folder / "data.jsonl"
        if not meta_path.is_file() or not rows_path.is_file():
            raise BackdoorLabError(f"{folder} is not a saved dataset (needs dataset.json and data.jsonl)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        from .readers import read_jsonl

        rows = [Example.from_dict(r) for r in read_jsonl(rows_path)]
        return cls(meta["name"], meta["task"], rows, meta.get("label_names"), meta.get("source", ""), meta.get("notes", []))
