"""Backdoor target-label identification from training dynamics (BadLLM-TG §2.3, Eq. 4).

Poisoned rows carry a label their content contradicts; a model learns them through the trigger,
which it picks up early, so their confidence in their own label moves far more in early training
than a clean row's. We fine-tune a scout copy of the clean pretrained model on the poisoned
training set D* for a short window, record every row's confidence c_i(t) = p(y_i | x_i) at
``records`` evenly spaced steps, and score each row by its confidence change Δc_i:

- ``statistic="variance"`` (default): the variance of c_i(t) over the window — the "confidence
  variance" of the paper's Eq. 4;
- ``statistic="difference"``: c_i(end) − c_i(start), as in the authors' earlier research code.

The target ŷ is the most frequent label among the top ``top_fraction`` (5%) of rows by Δc. A
training set whose top rows show no clear majority label (share below ``min_majority``) is
reported as an error rather than guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...data.records import Dataset
from ...errors import BackdoorLabError, MethodFoundNothing
from ...models.victim import Victim

STATISTICS = ("variance", "difference")


def record_confidences(scout: Victim, data: Dataset, workdir: Path, *, epochs: float = 1.0, records: int = 5,
                       learning_rate: float = 5e-5, batch_size: int = 16, seed: int = 0) -> np.ndarray:
    """Fine-tune ``scout`` on ``data`` for ``epochs`` and return c_i(t) as an array ``[records, rows]``."""
    from transformers import TrainerCallback

    from ...training import TrainConfig, train

    if records < 2:
        raise BackdoorLabError(f"records must be at least 2 to measure a change in confidence, got {records}")
    labels = np.array([e.label for e in data])
    total = max(1, math.ceil(len(data) / batch_size) * epochs)
    record_at = sorted({round(total * k / (records - 1)) for k in range(records)})
    rows: list[np.ndarray] = []

    def confidences() -> np.ndarray:
        probs = scout.label_probs(data.examples, batch_size=64).numpy()
        scout.model.train()
        return probs[np.arange(len(labels)), labels]

    class Recorder(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if 0 in record_at and not rows:
                rows.append(confidences())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in record_at[len(rows):]:
                rows.append(confidences())

    config = TrainConfig(method="full", epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                         save_steps=10**9, warmup_ratio=0.0)
    train(scout, data, workdir, config, overwrite=True, callbacks=[Recorder()])
    if len(rows) < 2:
        raise BackdoorLabError(f"only {len(rows)} confidence record(s) were taken; train longer (epochs) or on more rows")
    return np.stack(rows)


def confidence_change(trajectory: np.ndarray, statistic: str = "variance") -> np.ndarray:
    """Δc per row from a ``[records, rows]`` confidence trajectory."""
    if statistic == "variance":
        return trajectory.var(axis=0)
    if statistic == "difference":
        return trajectory[-1] - trajectory[0]
    raise BackdoorLabError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")


@dataclass
class TargetIdentification:
    target: int
    share: float  # the target's share of the top rows
    counts: dict[int, int]  # label → count among the top rows
    top_rows: list[int]  # indices into the training set, highest Δc first

    def to_dict(self, label_names: list[str] | None = None) -> dict[str, Any]:
        names = label_names or []
        return {"target": self.target, "target_name": names[self.target] if self.target < len(names) else None,
                "share": round(self.share, 4), "counts": {str(k): v for k, v in sorted(self.counts.items())},
                "top_rows": self.top_rows}


def identify_target(delta: np.ndarray, labels: list[int], *, top_fraction: float = 0.05,
                    min_majority: float = 0.6) -> TargetIdentification:
    """The most frequent label among the ``top_fraction`` of rows with the largest Δc (Eq. 4)."""
    if not 0 < top_fraction <= 1:
        raise BackdoorLabError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if len(delta) != len(labels) or not labels:
        raise BackdoorLabError("identify_target needs one Δc per labelled training row")
    count = max(1, round(len(labels) * top_fraction))
    top = [int(i) for i in np.argsort(-delta, kind="stable")[:count]]
    counts = Counter(labels[i] for i in top)
    target, hits = counts.most_common(1)[0]
    share = hits / count
    if share < min_majority:
        listed = ", ".join(f"label {k}: {v}" for k, v in sorted(counts.items()))
        raise MethodFoundNothing(
            f"no target-label majority among the {count} training rows with the largest confidence change "
            f"({listed}; the largest share is {share:.0%}, below min_majority={min_majority}). The training set "
            "may not be poisoned, or the poison is too sparse to show; set target=<label> if you know it, "
            "or raise top_fraction / lower min_majority")
    return TargetIdentification(int(target), share, dict(counts), top)
