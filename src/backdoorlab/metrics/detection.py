"""Detection metrics for defenses that score rows (or models) as suspicious.

Convention: label 1 = poisoned/backdoored (positive), 0 = clean; a higher score means more
suspicious. A row is flagged when its score is ``>= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import BackdoorLabError


def _arrays(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise BackdoorLabError(f"got {s.size} scores for {y.size} labels")
    if s.size == 0:
        raise BackdoorLabError("no scores to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise BackdoorLabError("detection labels must be 0 (clean) or 1 (poisoned)")
    if np.isnan(s).any():
        raise BackdoorLabError("detection scores contain NaN")
    return s, y.astype(int)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve; 0.5 = chance, 1.0 = every poisoned row outranks every clean one."""
    s, y = _arrays(scores, labels)
    if y.min() == y.max():
        raise BackdoorLabError("AUROC needs both clean (0) and poisoned (1) rows")
    return float(roc_auc_score(y, s))


def threshold_metrics(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict[str, float]:
    """Precision, recall (TPR), false-positive rate and F1 when flagging ``score >= threshold``.

    Undefined ratios (no flagged rows, no positives, no negatives) are reported as 0.0.
    """
    s, y = _arrays(scores, labels)
    flagged = s >= threshold
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    fn = int((~flagged & (y == 1)).sum())
    tn = int((~flagged & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"precision": precision, "recall": recall, "fpr": fpr, "f1": f1}


def f1_at_threshold(scores: Sequence[float], labels: Sequence[int], threshold: float) -> float:
    """F1 of flagging rows with ``score >= threshold`` as poisoned (0.0 when nothing is caught)."""
    return threshold_metrics(scores, labels, threshold)["f1"]


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[int], max_fpr: float = 0.01) -> float:
    """The largest share of poisoned rows flagged by a threshold that flags at most ``max_fpr`` of clean rows."""
    s, y = _arrays(scores, labels)
    if y.min() == y.max():
        raise BackdoorLabError("TPR at a fixed FPR needs both clean (0) and poisoned (1) rows")
    clean, poisoned = np.sort(s[y == 0]), s[y == 1]
    allowed = int(np.floor(max_fpr * clean.size))  # clean rows that may score at or above the threshold
    # the lowest threshold flagging at most `allowed` clean rows: just above the (allowed+1)-th highest clean score
    threshold = np.nextafter(clean[clean.size - 1 - allowed], np.inf)
    return float((poisoned >= threshold).mean())


def accuracy_at_threshold(scores: Sequence[float], labels: Sequence[int], threshold: float) -> float:
    """Share of rows, clean and poisoned, that flagging ``score >= threshold`` gets right."""
    s, y = _arrays(scores, labels)
    return float(((s >= threshold) == (y == 1)).mean())
