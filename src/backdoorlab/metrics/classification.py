"""Classification metrics: clean accuracy (CACC) and attack success rate (ASR).

Both raise :class:`~backdoorlab.errors.BackdoorLabError` instead of returning NaN when there is
nothing to measure (no rows, or no row eligible for ASR), so an empty split never turns into a
silently meaningless number in a results table.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BackdoorLabError

#: The prediction of an input a defense rejected: never the target (ASR), never correct (CACC).
REJECTED = -1


def _check_lengths(predictions: Sequence[int], labels: Sequence[int | None], what: str) -> None:
    if len(predictions) != len(labels):
        raise BackdoorLabError(f"{what}: got {len(predictions)} predictions for {len(labels)} labels")
    if len(predictions) == 0:
        raise BackdoorLabError(f"{what}: no rows to score (the evaluation split is empty)")


def clean_accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of rows whose prediction equals the true label (CACC on the clean test split)."""
    _check_lengths(predictions, labels, "clean accuracy")
    if any(label is None for label in labels):
        raise BackdoorLabError("clean accuracy needs a true label on every row; some labels are None")
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
