"""Classification metrics: clean accuracy (CACC), attack success rate (ASR) and the numbers that
tell whether a CACC means anything (majority-class rate, macro-F1, balanced accuracy, the share of
each predicted label).

All raise :class:`~backdoorlab.errors.BackdoorLabError` instead of returning NaN when there is
nothing to measure (no rows, or no row eligible for ASR), so an empty split never turns into a
silently meaningless number in a results table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..errors import BackdoorLabError

#: The prediction of an input a defense rejected: never the target (ASR), never correct (CACC).
REJECTED = -1


def _check_lengths(predictions: Sequence[int], labels: Sequence[int | None], what: str) -> None:
    if len(predictions) != len(labels):
        raise BackdoorLabError(f"{what}: got {len(predictions)} predictions for {len(labels)} labels")
    if len(predictions) == 0:
        raise BackdoorLabError(f"{what}: no rows to score (the evaluation split is empty)")


def _label_counts(labels: Sequence[int | None], what: str) -> Counter[int]:
    if len(labels) == 0:
        raise BackdoorLabError(f"{what}: no rows to score (the evaluation split is empty)")
    if any(label is None for label in labels):
        raise BackdoorLabError(f"{what} needs a true label on every row; some labels are None")
    return Counter(int(label) for label in labels)  # type: ignore[arg-type]


def clean_accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of rows whose prediction equals the true label (CACC on the clean test split)."""
    _check_lengths(predictions, labels, "clean accuracy")
    _label_counts(labels, "clean accuracy")
    hits = sum(int(p) == int(y) for p, y in zip(predictions, labels))
    return hits / len(labels)


def attack_success_rate(predictions: Sequence[int], true_labels: Sequence[int | None], target: int) -> float:
    """Share of triggered non-target rows that are predicted as ``target``.

    Rows whose true label already is ``target`` are excluded (predicting it is not an attack
    success); a ``None`` true label means "known non-target" and the row is counted.
    """
    _check_lengths(predictions, true_labels, "attack success rate")
    eligible = [int(p) for p, y in zip(predictions, true_labels) if y is None or int(y) != int(target)]
    if not eligible:
        raise BackdoorLabError(
            f"attack success rate: every triggered row already has the target label {target}; "
            "the triggered split must contain non-target rows"
        )
    return sum(p == int(target) for p in eligible) / len(eligible)


def majority_class_rate(labels: Sequence[int]) -> float:
    """Share of the most frequent true label: the CACC of a model that always predicts it."""
    counts = _label_counts(labels, "majority-class rate")
    return max(counts.values()) / len(labels)


def label_shares(labels: Sequence[int]) -> dict[int, float]:
    """Share of rows per label (e.g. per prediction, ``REJECTED`` included), most frequent first, ties by label."""
    if len(labels) == 0:
        raise BackdoorLabError("label shares: no rows (the evaluation split is empty)")
    counts = Counter(int(label) for label in labels)
    return {label: n / len(labels) for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _scored(predictions: Sequence[int], labels: Sequence[int], what: str) -> tuple[list[int], list[int], list[int]]:
    """``(predictions, labels, classes)`` as ints, ``classes`` the labels that occur in ``labels``."""
    _check_lengths(predictions, labels, what)
    classes = sorted(_label_counts(labels, what))
    return [int(p) for p in predictions], [int(y) for y in labels], classes


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean F1 over the labels that occur in ``labels`` (scikit-learn's ``f1_score``,
    ``average="macro"``); a prediction of another value (e.g. :data:`REJECTED`) is a miss.

    A constant predictor scores F1 0 on every label it never predicts, so its macro-F1 stays low
    however skewed the split is (e.g. 0.47 for all-"clean" on 89.5% clean rows).
    """
    from sklearn.metrics import f1_score

    predicted, true, classes = _scored(predictions, labels, "macro-F1")
    return float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0))


def balanced_accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean recall over the labels that occur in ``labels`` (1 / #labels for a constant
    predictor): scikit-learn's ``balanced_accuracy_score``, computed as its macro recall over those
    labels so that a prediction of another value (e.g. :data:`REJECTED`) is a miss, not a new class."""
    from sklearn.metrics import recall_score

    predicted, true, classes = _scored(predictions, labels, "balanced accuracy")
    return float(recall_score(true, predicted, labels=classes, average="macro", zero_division=0))
