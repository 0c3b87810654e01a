"""The multiple-choice clean-utility sets in ``<data dir>/utility/``, as lm-evaluation-harness prompts.

Each question becomes one ``(context, continuation)`` pair per choice; a model's utility is how
often the gold choice's continuation is the most likely one. Prompts are raw text (no chat
template) and follow lm-evaluation-harness's zero-shot task definitions as closely as the files
allow; the target delimiter between context and choice is one space (:data:`DELIMITER`):

- ``arc_easy``, ``arc_challenge``: ``"Question: {q}\\nAnswer:" + " " + choice``.
- ``boolq``: ``"{passage}\\nQuestion: {q}?\\nAnswer:" + " " + "no"/"yes"`` (the file's
  ``"Passage: "`` prefix is removed to match the harness).
- ``piqa``: ``"Question: {goal}\\nAnswer:" + " " + solution``.
- ``openbookqa``: ``question_stem + " " + choice``.
- ``hellaswag``: ``context + " " + ending`` (the files' leading space of each ending is the
  delimiter). The harness capitalises the first word after the activity's first sentences; the
  file keeps it in lower case, which cannot be undone reliably, so that one word can differ.
- ``winogrande``: partial scoring, ``context_option + " " + continuation``: the two choices are
  the two contexts, and only the shared continuation is scored.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError, unknown_name
from .readers import read_jsonl, require_fields
from .registry import DATA_DIR_HINT, resolve_data_dir

DELIMITER = " "
FOLDER = "utility"


@dataclass(frozen=True)
class TaskFormat:
    """How one file's ``query`` becomes the harness's context: drop ``strip_prefix``, add ``suffix``."""

    strip_prefix: str = ""
    suffix: str = ""
    partial: bool = False  # WinoGrande layout: several contexts, one shared continuation


UTILITY_TASKS: dict[str, TaskFormat] = {
    "arc_easy": TaskFormat(suffix="\nAnswer:"),
    "arc_challenge": TaskFormat(suffix="\nAnswer:"),
    "boolq": TaskFormat(strip_prefix="Passage: ", suffix="\nAnswer:"),
    "piqa": TaskFormat(suffix="Answer:"),
    "openbookqa": TaskFormat(),
    "winogrande": TaskFormat(partial=True),
    "hellaswag": TaskFormat(),
}


@dataclass(frozen=True)
class Question:
    """One multiple-choice item: per choice a context and the continuation scored after it.

    ``lengths`` are the characters that ``acc_norm`` divides by: the choice text without the
    delimiter (as lm-evaluation-harness does), or for partial scoring the shared continuation.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    lengths: tuple[int, ...]

    @property
    def num_choices(self) -> int:
        return len(self.contexts)


def check_tasks(tasks: Iterable[str]) -> list[str]:
    """The task names as a list; a clear error for an empty list or an unknown name."""
    names = list(tasks)
    if not names:
        raise BackdoorLabError(f"no utility tasks given; choose from {', '.join(UTILITY_TASKS)}")
    for name in names:
        if name not in UTILITY_TASKS:
            raise unknown_name("utility task", name, UTILITY_TASKS)
    return names


def task_file(name: str, data_dir: str | Path | None = None) -> Path:
    """``<data dir>/utility/<name>.jsonl``; a clear error when the folder or file is missing."""
    check_tasks([name])
    path = resolve_data_dir(data_dir) / FOLDER / f"{name}.jsonl"
    if not path.is_file():
        raise BackdoorLabError(f"utility task file {path} does not exist; {DATA_DIR_HINT}")
    return path


def to_question(name: str, row: dict[str, Any], where: str) -> Question:
    """Turn one file row of task ``name`` into a :class:`Question` (``where`` names it in errors)."""
    layout = UTILITY_TASKS[name]
    if layout.partial:
        contexts = [str(c) for c in row["context_options"]]
        continuation = str(row["continuation"]).strip()
        continuations = [DELIMITER + continuation] * len(contexts)
        lengths = [len(continuation)] * len(contexts)
    else:
        query = str(row["query"]).removeprefix(layout.strip_prefix) + layout.suffix
        choices = [str(c).lstrip() for c in row["choices"]]
        contexts = [query] * len(choices)
        continuations = [DELIMITER + c for c in choices]
        lengths = [len(c) for c in choices]
    gold = row["gold"]
    if len(contexts) < 2:
        raise BackdoorLabError(f"{where}: a multiple-choice row needs at least 2 choices, found {len(contexts)}")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(contexts):
        raise BackdoorLabError(f"{where}: gold must be a choice index 0..{len(contexts) - 1}, found {gold!r}")
    if not all(contexts) or not all(lengths):
        raise BackdoorLabError(f"{where}: a context or choice is empty")
    return Question(tuple(contexts), tuple(continuations), gold, tuple(lengths))


def load_utility_task(name: str, data_dir: str | Path | None = None) -> list[Question]:
    """All questions of task ``name`` in file order."""
    path = task_file(name, data_dir)
    rows = read_jsonl(path)
    fields = ["context_options", "continuation", "gold"] if UTILITY_TASKS[name].partial else ["query", "choices", "gold"]
    require_fields(path, rows, fields)
    return [to_question(name, row, f"{path}: row {number}") for number, row in enumerate(rows, start=1)]


def subsample(questions: Sequence[Question], max_rows: int | None, seed: int = 0) -> list[Question]:
    """``max_rows`` questions drawn without replacement with ``seed`` (all when ``None`` or too many)."""
    if max_rows is not None and max_rows < 1:
        raise BackdoorLabError(f"max_rows must be at least 1 (or None for every row), got {max_rows}")
    if max_rows is None or max_rows >= len(questions):
        return list(questions)
    return random.Random(seed).sample(list(questions), max_rows)
