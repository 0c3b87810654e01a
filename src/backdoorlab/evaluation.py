"""Evaluate a victim on clean and triggered splits.

Classifiers get clean accuracy (CACC) and attack success rate (ASR). Generators get ASR (how often
the judged backdoor behaviour appears on triggered prompts), the same rate on clean prompts (how
often the behaviour fires without its trigger) and the perplexity of reference responses (utility).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .data.prompts import user_message
from .data.records import Dataset, Example
from .errors import BackdoorLabError
from .fileio import write_json_atomic
from .metrics.classification import REJECTED, attack_success_rate, clean_accuracy
from .metrics.generative import behaviour_rate, perplexity
from .metrics.judges import Judge, get_judge
from .models.victim import Victim

RESULTS_FILE = "results.json"
Predictor = Callable[[Sequence[Example], int], list[int]]


def _merged_notes(*datasets: Dataset) -> list[str]:
    """Notes of all datasets, in order, without repeats."""
    return list(dict.fromkeys(note for d in datasets for note in d.notes))


def _require_rows(dataset: Dataset, role: str) -> None:
    if len(dataset) == 0:
        raise BackdoorLabError(f"the {role} split {dataset.name!r} has no rows")


# ------------------------------------------------------------------------- classifiers
def _resolve_target(victim: Victim, dataset: Dataset, target: int | str) -> tuple[int, str]:
    index = dataset.label_index(target)
    victim.check_compatible(dataset)
    return index, (dataset.label_names or [])[index]


def evaluate_classifier(victim: Victim, clean_test: Dataset, triggered_test: Dataset, target: int | str,
                        batch_size: int = 32, predict: Predictor | None = None) -> dict[str, Any]:
    """CACC on ``clean_test`` and ASR on ``triggered_test`` towards ``target`` (index or label name).

    ``predict(rows, batch_size)`` replaces ``victim.predict`` (e.g. a defense's guard); a
    prediction of ``REJECTED`` (-1) is never the target and never correct.

    Returns ``{"cacc", "asr", "n_clean", "n_triggered", "n_asr_rows", "target", "target_name", "model",
    "notes"}``; ``n_asr_rows`` counts the triggered rows ASR is computed on (true label not the
    target, or unknown), ``notes`` merges both splits' notes.
    """
    if victim.is_generator:
        raise BackdoorLabError("evaluate_classifier() needs a classifier; use evaluate_generator() for generators")
    _require_rows(clean_test, "clean test")
    _require_rows(triggered_test, "triggered test")
    target_index, target_name = _resolve_target(victim, clean_test, target)
    predict = predict or victim.predict
    clean_predictions = predict(clean_test.examples, batch_size)
    triggered_predictions = predict(triggered_test.examples, batch_size)
    true_labels = [e.label for e in triggered_test]
    return {
        "cacc": clean_accuracy(clean_predictions, [e.label for e in clean_test]),
        "rejected": {"clean": clean_predictions.count(REJECTED), "triggered": triggered_predictions.count(REJECTED)},
        "asr": attack_success_rate(triggered_predictions, true_labels, target_index),
        "n_clean": len(clean_test),
        "n_triggered": len(triggered_test),
        "n_asr_rows": sum(y is None or y != target_index for y in true_labels),
        "target": target_index,
        "target_name": target_name,
        "model": victim.name,
        "notes": _merged_notes(clean_test, triggered_test),
    }


# -------------------------------------------------------------------------- generators
def _samples(examples: Sequence[Example], responses: Sequence[str], judge: Judge, n: int) -> list[dict[str, Any]]:
    return [{"prompt": user_message(e), "response": r, "behaviour": bool(judge(r))}
            for e, r in zip(examples[:n], responses[:n])]


def _utility_perplexity(victim: Victim, rows: Dataset, batch_size: int) -> tuple[float | None, int]:
    """Perplexity of the rows' reference responses; ``(None, 0)`` when no row has one."""
    scored = [e for e in rows if e.response.strip()]
    if not scored:
        return None, 0
    return perplexity(victim.response_logprobs(scored, batch_size=batch_size)), len(scored)


def evaluate_generator(victim: Victim, triggered: Dataset, clean: Dataset, behaviour: str, *,
                       target_output: str | None = None, max_new_tokens: int = 48, batch_size: int = 16,
                       utility_rows: Dataset | None = None, n_samples: int = 3) -> dict[str, Any]:
    """Generate for triggered and clean prompts and judge them with the ``behaviour`` judge.

    Returns ``{"asr", "clean_behaviour_rate", "clean_perplexity", "n_perplexity", "samples",
    "n_triggered", "n_clean", "behaviour", "target_output", "max_new_tokens", "model", "notes"}``.
    ``clean_perplexity`` scores the reference responses of ``utility_rows`` (default ``clean``);
    it is ``None`` (with a note) when no row has a reference response. ``samples`` holds the first
    ``n_samples`` ``{"prompt", "response", "behaviour"}`` of each set under ``"triggered"``/``"clean"``.
    """
    if not victim.is_generator:
        raise BackdoorLabError("evaluate_generator() needs a generator; use evaluate_classifier() for classifiers")
    judge = get_judge(behaviour, target_output)
    _require_rows(triggered, "triggered")
    _require_rows(clean, "clean")
    triggered_out = victim.generate(triggered.examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    clean_out = victim.generate(clean.examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    utility = utility_rows if utility_rows is not None else clean
    ppl, n_ppl = _utility_perplexity(victim, utility, batch_size)
    notes = _merged_notes(triggered, clean, utility)
    if ppl is None:
        notes.append(f"clean perplexity not computed: no row of {utility.name!r} has a reference response")
    return {
        "asr": behaviour_rate(triggered_out, judge),
        "clean_behaviour_rate": behaviour_rate(clean_out, judge),
        "clean_perplexity": ppl,
        "n_perplexity": n_ppl,
        "samples": {"triggered": _samples(triggered.examples, triggered_out, judge, n_samples),
                    "clean": _samples(clean.examples, clean_out, judge, n_samples)},
        "n_triggered": len(triggered),
        "n_clean": len(clean),
        "behaviour": behaviour,
        "target_output": target_output,
        "max_new_tokens": max_new_tokens,
        "model": victim.name,
        "notes": notes,
    }


def write_results(results: dict[str, Any], folder: str | Path) -> Path:
    """Write ``results`` as ``folder/results.json`` atomically and return the file's path."""
    return write_json_atomic(Path(folder) / RESULTS_FILE, results)
