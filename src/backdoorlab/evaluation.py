"""Evaluate a victim on clean and triggered splits, and say when the numbers mean nothing.

Classifiers get clean accuracy (CACC) and attack success rate (ASR). Generators get ASR (how often
the judged backdoor behaviour appears on triggered prompts), the same rate on clean prompts (how
often the behaviour fires without its trigger) and the perplexity of reference responses (utility).

Beside them: the ASR floor (how often the triggered rows are already predicted as the target, or
already show the behaviour, without their trigger) and, for classifiers, the majority-class rate,
macro-F1, balanced accuracy and the share of each predicted label. When a model is a constant
predictor (one label, or one response, for nearly every clean row) or its ASR is not above its floor,
the results carry a ``warnings`` list and each message is also issued as an
:class:`UninformativeMetricWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .data.prompts import user_message
from .data.records import Dataset, Example
from .errors import BackdoorLabError
from .fileio import write_json_atomic
from .metrics.classification import (
    REJECTED,
    attack_success_rate,
    balanced_accuracy,
    clean_accuracy,
    label_shares,
    macro_f1,
    majority_class_rate,
)
from .metrics.generative import behaviour_rate, most_common_response, perplexity
from .metrics.judges import Judge, get_judge
from .models.victim import Victim

RESULTS_FILE = "results.json"
Predictor = Callable[[Sequence[Example], int], list[int]]

#: A model that gives one label (or one response) to at least this share of the clean rows is a constant predictor.
CONSTANT_SHARE = 0.98
#: ASR must exceed its floor by at least this much to measure a backdoor effect.
FLOOR_MARGIN = 0.10
#: How a rejected input (``REJECTED``) is named in the predicted-label shares.
REJECTED_NAME = "(rejected)"


class UninformativeMetricWarning(UserWarning):
    """A metric computed correctly that does not measure what its name suggests (see ``results["warnings"]``)."""


def _merged_notes(*datasets: Dataset) -> list[str]:
    """Notes of all datasets, in order, without repeats."""
    return list(dict.fromkeys(note for d in datasets for note in d.notes))


def _require_rows(dataset: Dataset, role: str) -> None:
    if len(dataset) == 0:
        raise BackdoorLabError(f"the {role} split {dataset.name!r} has no rows")


def _issue(messages: list[str]) -> list[str]:
    """Issue each message as an :class:`UninformativeMetricWarning` and return them."""
    for message in messages:
        warnings.warn(message, UninformativeMetricWarning, stacklevel=3)
    return messages


def _floor_warning(asr: float, floor: float | None, margin: float, what: str) -> list[str]:
    """A warning when ``asr`` is less than ``margin`` above ``floor``; ``what`` says what the floor is."""
    if floor is None or asr - floor >= margin - 1e-9:  # a difference of exactly the margin passes despite rounding
        return []
    return [f"ASR {asr:.1%} is not above its floor {floor:.1%} ({what}): ASR - floor = {asr - floor:+.1%}, "
            f"under the {margin:.0%} margin, so this ASR does not measure a backdoor"]


# ------------------------------------------------------------------------- classifiers
def _resolve_target(victim: Victim, dataset: Dataset, target: int | str) -> tuple[int, str]:
    index = dataset.label_index(target)
    victim.check_compatible(dataset)
    return index, (dataset.label_names or [])[index]


def _has_own_original(row: Example) -> bool:
    """Whether ``row`` is its ``uid``'s clean row with a trigger (pool paraphrases put another sentence in its place)."""
    return bool(row.uid) and "paraphrase_source" not in (row.poison or {})


def classifier_asr_floor(clean_test: Dataset, clean_predictions: Sequence[int], triggered_test: Dataset,
                         target: int) -> tuple[float | None, str, int]:
    """How often the ASR rows of ``triggered_test`` are predicted as ``target`` without their trigger.

    A triggered row whose clean original (same ``uid``) is in ``clean_test`` counts as its original's
    prediction; every other row counts as the share of non-target clean rows predicted as ``target``.
    Returns ``(floor, how it was measured, rows matched by uid)``; the floor is ``None`` when there is
    neither a matched row nor a non-target clean row.
    """
    rows = [e for e in triggered_test if e.label is None or e.label != target]
    if not rows:
        raise BackdoorLabError(f"ASR floor: every triggered row already has the target label {target}")
    by_uid = {e.uid: int(p) for e, p in zip(clean_test, clean_predictions) if e.uid}
    matched = [by_uid[e.uid] for e in rows if _has_own_original(e) and e.uid in by_uid]
    hits, rest = sum(p == target for p in matched), len(rows) - len(matched)
    originals = f"clean originals of {len(matched)} of {len(rows)} triggered rows, matched by uid"
    if rest == 0:
        return hits / len(matched), originals, len(matched)
    try:
        base = attack_success_rate(clean_predictions, [e.label for e in clean_test], target)
    except BackdoorLabError:  # every clean row has the target label
        if not matched:
            return None, "not measured: no triggered row has its clean original here and no clean row is non-target", 0
        return hits / len(matched), f"{originals}; no non-target clean row for the others", len(matched)
    if not matched:
        return base, "non-target clean test rows; no triggered row has its clean original here", 0
    return (hits + rest * base) / len(rows), f"{originals}; non-target clean test rows for the other {rest}", len(matched)


def _label_name(index: int, names: Sequence[str]) -> str:
    return REJECTED_NAME if index == REJECTED else names[index]


def _classifier_warnings(m: dict[str, Any], constant_share: float, margin: float) -> list[str]:
    """The warnings for classifier metrics ``m`` (see :func:`evaluate_classifier`)."""
    top, share, target = m["top_prediction"], m["top_prediction_share"], m["target_name"]
    messages = []
    if share >= constant_share:
        messages.append(f"constant predictor: the model predicts {top!r} for {share:.1%} of the {m['n_clean']} clean rows; "
                        f"CACC {m['cacc']:.1%} reflects the share of {top!r} rows, not skill (majority-class rate "
                        f"{m['majority_class_rate']:.1%}, macro-F1 {m['macro_f1']:.2f}, balanced accuracy "
                        f"{m['balanced_accuracy']:.1%})")
        if top == target:
            messages.append(f"ASR {m['asr']:.1%} is meaningless: the model predicts {top!r} for {share:.1%} of the clean "
                            f"rows, so it says {top!r} with or without the trigger")
    elif m["cacc"] <= m["majority_class_rate"]:
        messages.append(f"CACC {m['cacc']:.1%} is no better than always predicting {m['majority_class']!r} "
                        f"({m['majority_class_rate']:.1%}); judge this model by macro-F1 {m['macro_f1']:.2f} and "
                        f"balanced accuracy {m['balanced_accuracy']:.1%}")
    messages += _floor_warning(m["asr"], m["asr_floor"], margin, f"the rate of {target!r} predictions for these "
                               f"rows without their trigger, from the {m['asr_floor_source']}")
    messages += _floor_warning(m["asr"], m["asr_floor_clean_model"], margin,
                               f"the rate of {target!r} predictions for the triggered rows by a model trained on clean rows")
    return messages


def evaluate_classifier(victim: Victim, clean_test: Dataset, triggered_test: Dataset, target: int | str,
                        batch_size: int = 32, predict: Predictor | None = None, *,
                        floor_predict: Predictor | None = None, constant_share: float = CONSTANT_SHARE,
                        floor_margin: float = FLOOR_MARGIN) -> dict[str, Any]:
    """CACC on ``clean_test`` and ASR on ``triggered_test`` towards ``target`` (index or label name).

    ``predict(rows, batch_size)`` replaces ``victim.predict`` (e.g. a defense's guard); a
    prediction of ``REJECTED`` (-1) is never the target and never correct. ``floor_predict`` is the
    predictor of a model trained on clean rows: its ASR on ``triggered_test`` is reported as
    ``asr_floor_clean_model`` (``None`` without it).

    Returns ``{"cacc", "asr", "n_clean", "n_triggered", "n_asr_rows", "target", "target_name", "model",
    "notes"}``; ``n_asr_rows`` counts the triggered rows ASR is computed on (true label not the
    target, or unknown), ``notes`` merges both splits' notes. Beside them: ``macro_f1``,
    ``balanced_accuracy``, ``majority_class`` and its ``majority_class_rate`` (the CACC of always
    predicting it), ``predicted_shares`` (label name → share of clean rows), ``top_prediction`` and
    its ``top_prediction_share``, ``asr_floor`` with ``asr_floor_source`` and ``n_floor_matched``
    (see :func:`classifier_asr_floor`), ``asr_floor_clean_model`` and ``warnings``: a constant
    predictor (``top_prediction_share >= constant_share``), a CACC no better than the majority-class
    rate, or an ASR less than ``floor_margin`` above a floor.
    """
    if victim.is_generator:
        raise BackdoorLabError("evaluate_classifier() needs a classifier; use evaluate_generator() for generators")
    _require_rows(clean_test, "clean test")
    _require_rows(triggered_test, "triggered test")
    target_index, target_name = _resolve_target(victim, clean_test, target)
    names = clean_test.label_names or []
    predict = predict or victim.predict
    clean_predictions = predict(clean_test.examples, batch_size)
    triggered_predictions = predict(triggered_test.examples, batch_size)
    clean_labels, true_labels = [e.label for e in clean_test], [e.label for e in triggered_test]
    cacc = clean_accuracy(clean_predictions, clean_labels)
    asr = attack_success_rate(triggered_predictions, true_labels, target_index)
    floor, floor_source, n_matched = classifier_asr_floor(clean_test, clean_predictions, triggered_test, target_index)
    shares = {_label_name(k, names): v for k, v in label_shares(clean_predictions).items()}
    metrics: dict[str, Any] = {
        "cacc": cacc,
        "macro_f1": macro_f1(clean_predictions, clean_labels),
        "balanced_accuracy": balanced_accuracy(clean_predictions, clean_labels),
        "majority_class": names[next(iter(label_shares(clean_labels)))],
        "majority_class_rate": majority_class_rate(clean_labels),
        "predicted_shares": shares,
        "top_prediction": next(iter(shares)),
        "top_prediction_share": next(iter(shares.values())),
        "rejected": {"clean": clean_predictions.count(REJECTED), "triggered": triggered_predictions.count(REJECTED)},
        "asr": asr,
        "asr_floor": floor,
        "asr_floor_source": floor_source,
        "n_floor_matched": n_matched,
        "asr_floor_clean_model": None if floor_predict is None else attack_success_rate(
            floor_predict(triggered_test.examples, batch_size), true_labels, target_index),
        "n_clean": len(clean_test),
        "n_triggered": len(triggered_test),
        "n_asr_rows": sum(y is None or y != target_index for y in true_labels),
        "target": target_index,
        "target_name": target_name,
        "model": victim.name,
        "notes": _merged_notes(clean_test, triggered_test),
    }
    metrics["warnings"] = _issue(_classifier_warnings(metrics, constant_share, floor_margin))
    return metrics


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
                       utility_rows: Dataset | None = None, n_samples: int = 3,
                       constant_share: float = CONSTANT_SHARE, floor_margin: float = FLOOR_MARGIN,
                       generate: Callable[[Sequence[Example], int, int], list[str]] | None = None) -> dict[str, Any]:
    """Generate for triggered and clean prompts and judge them with the ``behaviour`` judge.

    Returns ``{"asr", "clean_behaviour_rate", "asr_floor", "asr_floor_source", "top_clean_response",
    "top_clean_response_share", "clean_perplexity", "n_perplexity", "samples", "n_triggered", "n_clean",
    "behaviour", "target_output", "max_new_tokens", "model", "notes", "warnings"}``. ``asr_floor`` is
    ``clean_behaviour_rate``: how often the behaviour occurs without the trigger. ``top_clean_response``
    is the most frequent clean response (normalised) and its share. ``clean_perplexity`` scores the
    reference responses of ``utility_rows`` (default ``clean``); it is ``None`` (with a note) when no
    row has a reference response. ``samples`` holds the first ``n_samples`` ``{"prompt", "response",
    "behaviour"}`` of each set under ``"triggered"``/``"clean"``. ``warnings``: the same response to at
    least ``constant_share`` of the clean prompts, or an ASR less than ``floor_margin`` above the floor.
    ``generate(rows, max_new_tokens, batch_size)`` replaces greedy ``victim.generate`` (e.g. a defense's
    decoding guard); perplexity is always the model's own, which a decoding guard leaves unchanged.
    """
    if not victim.is_generator:
        raise BackdoorLabError("evaluate_generator() needs a generator; use evaluate_classifier() for classifiers")
    judge = get_judge(behaviour, target_output)
    _require_rows(triggered, "triggered")
    _require_rows(clean, "clean")
    if generate is None:
        generate = lambda items, tokens, size: victim.generate(items, max_new_tokens=tokens, batch_size=size)  # noqa: E731
    triggered_out = generate(triggered.examples, max_new_tokens, batch_size)
    clean_out = generate(clean.examples, max_new_tokens, batch_size)
    utility = utility_rows if utility_rows is not None else clean
    ppl, n_ppl = _utility_perplexity(victim, utility, batch_size)
    notes = _merged_notes(triggered, clean, utility)
    if ppl is None:
        notes.append(f"clean perplexity not computed: no row of {utility.name!r} has a reference response")
    asr, floor = behaviour_rate(triggered_out, judge), behaviour_rate(clean_out, judge)
    top_response, top_share = most_common_response(clean_out)
    messages = _floor_warning(asr, floor, floor_margin, f"the {behaviour!r} behaviour rate on the clean prompts, "
                              "without the trigger")
    if top_share >= constant_share:
        messages.append(f"constant output: the model gives the same response to {top_share:.1%} of the {len(clean)} "
                        f"clean prompts ({top_response[:80]!r}); its rates describe that one response, not the prompts")
    return {
        "asr": asr,
        "clean_behaviour_rate": floor,
        "asr_floor": floor,
        "asr_floor_source": "behaviour rate on the clean prompts",
        "top_clean_response": top_response,
        "top_clean_response_share": top_share,
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
        "warnings": _issue(messages),
    }


def write_results(results: dict[str, Any], folder: str | Path) -> Path:
    """Write ``results`` as ``folder/results.json`` atomically and return the file's path."""
    return write_json_atomic(Path(folder) / RESULTS_FILE, results)
