"""The defender's reference for a classifier scan: what a model that never saw the poison does with a
phrase.

A label's own vocabulary moves a clean model as much as the suspect ("awful" toward negative,
"islamist" toward World), so a trigger search over the suspect alone keeps finding it. Given a
declared clean or pretrained model (``reference``; for a fine-tuned encoder, the pretrained model it
started from), the scan makes a clean stand-in for the suspect from the defender's clean rows,
labelled by the suspect's own predictions on them (the rows hold no trigger, so there the suspect
behaves as a clean model would):

- ``fine-tune`` (default): the reference fine-tuned on those rows, a small clean twin that learns
  the labels' words as the suspect did;
- ``probe``: a linear probe on the reference's frozen, mean-pooled last-layer features (cheaper;
  measured weaker: on SST-2 it misses sentiment words the suspect reacts to).

A phrase that moves the suspect and the stand-in alike is the label's own vocabulary; a trigger moves
the suspect alone. The stand-in reads text, so it needs no shared tokenizer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from ..models.loading import load_victim
from ..models.victim import Victim

#: How the stand-in is made from the reference (module docstring).
REFERENCE_FITS = ("fine-tune", "probe")
#: Fine-tuning the stand-in: epochs over the defender's rows, and the learning rate.
FINE_TUNE_EPOCHS, FINE_TUNE_LR = 5.0, 2e-4
#: Inverse regularisation of the probe (scikit-learn's ``C``).
PROBE_C = 1.0


class Reference:
    """The clean stand-in: label probabilities of texts under the suspect's labels."""

    def __init__(self, model: Victim, num_labels: int, batch_size: int = 32, probe: object | None = None,
                 classes: Sequence[int] = ()) -> None:
        self.model, self.num_labels, self.batch_size = model, num_labels, batch_size
        self.probe, self.classes = probe, list(classes)

    @classmethod
    def fit(cls, reference: str | Path, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str], *,
            how: str = "fine-tune", device: str = "auto", allow_pickle: bool = False, batch_size: int = 32,
            seed: int = 0) -> "Reference":
        """Load ``reference`` (a packaged name or a folder; safetensors unless ``allow_pickle``) and make the
        stand-in from ``texts`` labelled ``labels`` (the suspect's predictions)."""
        if how not in REFERENCE_FITS:
            raise BackdoorLabError(f"reference_fit must be one of {', '.join(REFERENCE_FITS)}; got {how!r}")
        present = sorted(set(labels))
        if len(present) < 2:
            raise BackdoorLabError("the scan's reference needs clean rows the suspect puts in at least two labels; "
                                   f"it predicts only label {present[0] if present else '-'} on these rows")
        with torch.random.fork_rng(devices=[]):  # a new head is drawn from the seed, not from what ran before
            torch.manual_seed(seed)
            model = load_victim(reference, kind="classifier", label_names=list(label_names), device=device,
                                allow_pickle=allow_pickle)
        if how == "probe":
            return cls._probe(model, texts, labels, len(label_names), batch_size, seed)
        return cls(_fine_tuned(model, texts, labels, label_names, seed), len(label_names), batch_size)

    @classmethod
    def _probe(cls, model: Victim, texts: Sequence[str], labels: Sequence[int], num_labels: int, batch_size: int,
               seed: int) -> "Reference":
        from sklearn.linear_model import LogisticRegression

        found = cls(model, num_labels, batch_size, classes=sorted(set(labels)))
        probe = LogisticRegression(C=PROBE_C, max_iter=2000, random_state=seed)
        probe.fit(found.features(texts), np.asarray(labels))
        found.probe = probe
        return found

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The reference's mean-pooled last-layer states, L2-normalised (sentence-embedding style)."""
        states = self.model.hidden_states(list(texts), self.batch_size, position="mean")[-1]
        return torch.nn.functional.normalize(states, dim=-1).numpy()

    def label_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, num_labels]`` probabilities (a probe gives 0 to a label no clean row was predicted as)."""
        if self.probe is None:
            return self.model.label_probs(list(texts), batch_size=64)
        found = self.probe.predict_proba(self.features(texts))  # type: ignore[attr-defined]
        full = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        full[:, self.classes] = found
        return torch.from_numpy(full)

    def losses(self, texts: Sequence[str], label: int) -> torch.Tensor:
        """Cross-entropy toward ``label`` per text."""
        return -torch.log(self.label_probs(texts)[:, label].clamp_min(1e-6))


def _fine_tuned(model: Victim, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str],
                seed: int) -> Victim:
    from ..training import TrainConfig, train

    rows = Dataset("the scan's reference rows", "classification",
                   [Example(text=t, label=int(label), uid=f"reference-{i}") for i, (t, label) in
                    enumerate(zip(texts, labels))], label_names=list(label_names),
                   source="the defender's clean rows, labelled by the suspect")
    config = TrainConfig(method="full", epochs=FINE_TUNE_EPOCHS, learning_rate=FINE_TUNE_LR, batch_size=16, seed=seed,
                         device=str(model.device), save_steps=10**9)
    with tempfile.TemporaryDirectory(prefix="scan-reference-") as folder:
        return train(model, rows, Path(folder) / "reference", config)
