"""Style and syntax hypotheses for BadLLM-TG: paraphrase pools probed on the suspect (ours).

For a Stylebkd or Synbkd trigger the generator's action G (§2.4) is a paraphrase into the
attacker's style or syntactic template; a 135M local generator cannot write one, and no phrase
mined from the rows carries it. The defender can instead hold *paraphrase pools*: rows it owns,
rewritten by any paraphraser it can run (a style-transfer model, SCPN, a larger LLM), one pool per
hypothesis, in StyleBkd's file format (``sentence<TAB>label``, the label of the source row; see
:func:`backdoorlab.attacks.paraphrase.save_paraphrase_pool`). Each pool is a candidate pattern
whose rewrites are already made:

- **identification**: a pool's rows of labels other than l are scored by the suspect's mean
  probability of l, like an inserted phrase (:mod:`.label_screening`);
- **reward**: its rows of labels other than ŷ are scored by the search's reward (loss toward ŷ,
  flip rate), and the best pool that flips ``min_flip_rate`` of them is the recovered pattern;
- **adversarial training**: that pool's rows, each with its own label, are G(D) in Eq. 9.

The pool's rows must not be the rows the suspect was trained or is tested on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...data.records import Dataset, Example
from ...data.registry import load_data_file
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ..shared.label_screening import InsertionScore


@dataclass
class PoolScore:
    pool: str  # the pool's file
    label: int
    probability: float  # mean probability of ``label`` on the pool's rows of other labels
    flip_rate: float
    loss: float
    rows: int  # pool rows scored

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "label": self.label, "probability": round(self.probability, 4),
                "flip_rate": round(self.flip_rate, 4), "loss": round(self.loss, 4), "rows": self.rows}


def load_pools(paths: Sequence[str], num_labels: int) -> dict[str, Dataset]:
    """Each pool file as a dataset, checked to be labelled with the suspect's labels."""
    pools = {}
    for path in paths:
        if not Path(path).expanduser().exists():
            raise BackdoorLabError(f"paraphrase pool {path} does not exist; give files of rows you paraphrased "
                                   "(sentence<TAB>label, or text/label JSONL)")
        pool = load_data_file(path, task="classification")
        labels = {e.label for e in pool}
        if None in labels or not labels <= set(range(num_labels)):
            raise BackdoorLabError(f"paraphrase pool {path} has labels {sorted(map(str, labels))}; the suspect's "
                                   f"labels are 0..{num_labels - 1}")
        pools[str(path)] = pool
    return pools


def score_pool(victim: Victim, name: str, pool: Dataset, label: int, *, rows: int = 24, seed: int = 0) -> PoolScore:
    """The suspect's answers toward ``label`` on up to ``rows`` pool rows whose own label differs."""
    others = [e for e in pool if e.label != label]
    if not others:
        return PoolScore(name, label, 0.0, 0.0, math.inf, 0)
    chosen: list[Example] = random.Random(seed).sample(others, min(rows, len(others)))
    score = InsertionScore.of(victim, [e.text for e in chosen], label)
    return PoolScore(name, label, score.probability, score.flip_rate, score.loss, len(chosen))


def score_pools(victim: Victim, pools: dict[str, Dataset], labels: Sequence[int], *, rows: int = 24,
                seed: int = 0) -> list[PoolScore]:
    """:func:`score_pool` for every pool toward every label in ``labels``."""
    return [score_pool(victim, name, pool, label, rows=rows, seed=seed) for label in labels
            for name, pool in pools.items()]


def pool_lookalikes(pool_texts: Sequence[str], training_texts: Sequence[str], *, rounds: int = 2, folds: int = 5,
                    seed: int = 0) -> list[bool]:
    """Which training rows read like the pool: the poisoned rows of a style or syntax attack.

    A character 2–4-gram TF-IDF logistic regression separates the pool's rows from the training
    rows; each training row is scored by a fit that did not see it (``folds``-fold cross-fitting,
    so a poisoned row is never learnt as "ordinary" itself), and rows scored at least 0.5 are
    flagged. Each further round refits without the rows flagged so far as "ordinary" (``rounds``
    in all). The caller drops flagged target-label rows before retraining (the pool's counterpart
    of ``drop_triggered``).
    """
    import numpy as np
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    flagged = np.zeros(len(training_texts), dtype=bool)
    if not pool_texts or not training_texts:
        return flagged.tolist()
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform([*pool_texts, *training_texts])
    pool, rows = features[:len(pool_texts)], features[len(pool_texts):]
    fold_of = np.random.default_rng(seed).permutation(len(training_texts)) % max(2, folds)
    for _ in range(rounds):
        scores = np.zeros(len(training_texts))
        for fold in np.unique(fold_of):
            ordinary = rows[(fold_of != fold) & ~flagged]
            labels = [1] * pool.shape[0] + [0] * ordinary.shape[0]
            model = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
            model.fit(vstack([pool, ordinary]), labels)
            scores[fold_of == fold] = model.predict_proba(rows[fold_of == fold])[:, 1]
        flagged = scores >= 0.5
    return flagged.tolist()
