"""Turn raw rows (dicts read from TSV/CSV/JSON files) into :class:`Example` records.

Every conversion error names the file and the 1-based data row, so a malformed benchmark or user
file is fixed in one step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError
from .records import Example, Task

#: Column names accepted for the text of a classification row, in order of preference.
TEXT_FIELDS = ("sentence", "text")
#: Accepted spellings of a generative row: JSON field -> Example field.
INSTRUCTION_FIELDS = {"instruction": "instruction", "input": "input", "output": "response", "response": "response"}
#: Rows with only ``input`` and ``output`` (BkdAttr style): the input is the user turn.
INPUT_OUTPUT_FIELDS = {"input": "instruction", "output": "response", "response": "response"}

_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Collapse runs of whitespace (and backslashes used as line breaks) into single spaces."""
    return _SPACES.sub(" ", text.replace("\\", " ")).strip()


def _where(path: str | Path, number: int) -> str:
    return f"{path}: row {number}"


def string_field(path: str | Path, number: int, row: Mapping[str, Any], key: str) -> str:
    """The string in ``row[key]``; a clear error when it is missing or not a string."""
    if key not in row:
        raise BackdoorLabError(f"{_where(path, number)} lacks field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise BackdoorLabError(f"{_where(path, number)}: field {key!r} must be text, got {type(value).__name__}")
    return value


def parse_label(path: str | Path, number: int, value: Any, label_names: Sequence[str], base: int = 0) -> int | None:
    """Resolve a label cell (integer, integer-like text or label name) to a 0-based index.

    ``base`` is the number the file uses for the first label (1 for AG News). ``None`` (JSON null)
    means the label is unknown and stays ``None``.
    """
    if value is None:
        return None
    index: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value - base
    elif isinstance(value, float) and value.is_integer():
        index = int(value) - base
    elif isinstance(value, str):
        cell = value.strip()
        if cell.lstrip("-").isdigit():
            index = int(cell) - base
        else:
            lowered = [n.lower() for n in label_names]
            if cell.lower() in lowered:
                return lowered.index(cell.lower())
    if index is None or not 0 <= index < len(label_names):
        choices = ", ".join(f"{i + base}={n}" for i, n in enumerate(label_names))
        raise BackdoorLabError(f"{_where(path, number)}: label {value!r} is not one of {choices}")
    return index


def classification_example(path: str | Path, number: int, text: Any, label: Any,
                           label_names: Sequence[str], base: int = 0) -> Example:
    """A classification row; text is whitespace-normalised, the label validated against ``label_names``."""
    if not isinstance(text, str):
        raise BackdoorLabError(f"{_where(path, number)}: text must be a string, got {type(text).__name__}")
    return Example(text=clean_text(text), label=parse_label(path, number, label, label_names, base))


def generation_example(path: str | Path, number: int, row: Mapping[str, Any], fields: Mapping[str, str],
                       poison: Mapping[str, Any] | None = None) -> Example:
    """A generative row: ``fields`` maps JSON keys to Example fields; text is kept verbatim.

    Keys listed in ``fields`` but absent from the row are skipped (e.g. a missing ``input``).
    ``poison`` (when given) marks the row as poisoned and is stored on it.
    """
    values = {target: string_field(path, number, row, key) for key, target in fields.items() if key in row}
    return Example(**values, poisoned=poison is not None, poison=dict(poison) if poison else None)


# ----------------------------------------------------------------------------- user files


def detect_task(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Task:
    """Guess the task of a user file from its first row's fields."""
    first = rows[0]
    if "label" in first and any(f in first for f in TEXT_FIELDS):
        return "classification"
    if "instruction" in first or ("input" in first and ("output" in first or "response" in first)):
        return "generation"
    raise BackdoorLabError(
        f"{path}: cannot tell the task from fields {', '.join(sorted(first)) or '(none)'}; use "
        "sentence/text + label (classification) or instruction/input/output or input/output (generation)"
    )


def infer_label_names(path: str | Path, labels: Sequence[Any]) -> list[str]:
    """Label names for a file that does not say: ``0..max`` for integer labels, else the sorted names."""
    present = [v.strip() if isinstance(v, str) else v for v in labels if v is not None]
    if not present:
        raise BackdoorLabError(f"{path}: no row has a label; pass the label names explicitly")
    if all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.isdigit() for v in present):
        return [str(i) for i in range(max(int(v) for v in present) + 1)]
    if all(isinstance(v, str) and not v.lstrip("-").isdigit() for v in present):
        return sorted(set(present))
    raise BackdoorLabError(f"{path}: labels mix numbers and names (or are negative); pass the label names explicitly")


_PASSTHROUGH_TYPES = {"poisoned": bool, "poison": dict, "uid": str}


def _passthrough(path: str | Path, number: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``poisoned``/``poison``/``uid`` values of a row, type-checked."""
    kept = {}
    for key, kind in _PASSTHROUGH_TYPES.items():
        if row.get(key) is None:
            continue
        if not isinstance(row[key], kind):
            raise BackdoorLabError(f"{_where(path, number)}: field {key!r} must be {kind.__name__}")
        kept[key] = row[key]
    return kept


def user_examples(path: str | Path, rows: Sequence[Mapping[str, Any]], task: Task | None,
                  label_names: Sequence[str] | None) -> tuple[Task, list[Example], list[str] | None]:
    """Convert the rows of a user file; returns ``(task, examples, label_names)``."""
    if not rows:
        raise BackdoorLabError(f"{path}: the file holds no rows")
    task = task or detect_task(path, rows)
    if task == "classification":
        names = list(label_names) if label_names else infer_label_names(path, [r.get("label") for r in rows])
        examples = []
        for number, row in enumerate(rows, start=1):
            key = next((f for f in TEXT_FIELDS if f in row), None)
            if key is None or "label" not in row:
                raise BackdoorLabError(f"{_where(path, number)} needs a sentence (or text) field and a label field")
            example = classification_example(path, number, row[key], row["label"], names)
            examples.append(example.with_(**_passthrough(path, number, row)))
        return task, examples, names
    if task == "generation":
        examples = []
        for number, row in enumerate(rows, start=1):
            fields = INSTRUCTION_FIELDS if "instruction" in row else INPUT_OUTPUT_FIELDS
            if "instruction" not in row and "input" not in row:
                raise BackdoorLabError(f"{_where(path, number)} needs an instruction (or input) field")
            examples.append(generation_example(path, number, row, fields).with_(**_passthrough(path, number, row)))
        return task, examples, None
    raise BackdoorLabError(f"task must be 'classification' or 'generation', got {task!r}")
