"""The figures of a zoo victim and of the untouched model, measured on the same rows.

ASR, clean-prompt behaviour rate and clean perplexity come from
:func:`backdoorlab.pipeline.ensure_evaluation` on the victim's attack run; task accuracy is zero-shot
multiple-choice accuracy (:func:`backdoorlab.metrics.utility.evaluate_utility`), kept in a JSON
file with a fingerprint like every cached result.

The untouched model is measured through a copy of the base model saved with the victims' token
limit: a saved model scores reference responses up to twice its training ``max_length``, so the
copy makes both perplexities cover the same tokens of the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.registry import resolve_data_dir
from ..errors import BackdoorLabError
from ..fileio import write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, file_digest, make_fingerprint, model_identity, read_if_current
from ..models.victim import read_victim_file
from .quality import FIGURES

UTILITY_SEED = 0


def untouched_copy(base_model: str, max_length: int, folder: Path) -> Path:
    """``folder``: the base model's weights saved unchanged, with ``max_length`` as its token limit;
    saved again when the base model changed since."""
    from ..models.loading import load_victim

    identity = model_identity(base_model)
    if folder.is_dir() and read_victim_file(folder).get("copy_of") == identity:
        return folder
    victim = load_victim(base_model, device="cpu")
    victim.max_length = max_length
    victim.save(folder, overwrite=True, extra={"copy_of": identity})
    return folder


def _utility_files(tasks: tuple[str, ...], data_dir: str | None) -> dict[str, str]:
    folder = resolve_data_dir(data_dir) / "utility"
    return {task: file_digest(path) for task in tasks for path in [folder / f"{task}.jsonl"] if path.is_file()}


def ensure_task_accuracy(model: str | Path, tasks: tuple[str, ...], rows: int, out: Path, *,
                         data_dir: str | None = None) -> dict[str, Any] | None:
    """Zero-shot accuracy of ``model`` on ``rows`` questions (seed :data:`UTILITY_SEED`) of each of
    ``tasks``, kept in ``out`` and reused while its fingerprint is current; ``None`` without tasks."""
    if not tasks:
        return None
    expected = make_fingerprint("zoo-utility", code=[__name__], model=model_identity(model), tasks=list(tasks), max_rows=rows,
                                seed=UTILITY_SEED, files=_utility_files(tasks, data_dir))
    cached = read_if_current(out, expected)
    if cached is not None:
        return cached
    from ..metrics.utility import evaluate_utility
    from ..models.loading import load_victim

    victim = load_victim(model)
    result = evaluate_utility(victim, tasks, max_rows=rows, seed=UTILITY_SEED, data_dir=data_dir)
    result = {**result, "model": str(model), FINGERPRINT_KEY: expected}
    write_json_atomic(out, result)
    return result


def figures(evaluation: dict[str, Any], utility: dict[str, Any] | None) -> dict[str, Any]:
    """The zoo's figures (:data:`FIGURES`) from an evaluation's results and a task-accuracy result."""
    metrics = evaluation.get("metrics")
    if not isinstance(metrics, dict):
        raise BackdoorLabError("an evaluation result has no metrics; delete it and build the zoo again")
    values = {key: metrics.get(key) for key in FIGURES if key != "task_accuracy"}
    values["task_accuracy"] = None if utility is None else utility["average"]["acc"]
    values["n_triggered"], values["n_clean"] = metrics.get("n_triggered"), metrics.get("n_clean")
    return values
