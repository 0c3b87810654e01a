"""Backdoor probes, arXiv 2509.21761 §4 ("Backdoor Probe").

Per layer, the feature of a prompt is the residual stream at the readout token as attention reads
it (``attn_in``: after the input norm in pre-norm decoders; the block input in post-norm
encoders). Positives are triggered prompts, negatives their clean originals. Each layer gets an
MLP probe (one hidden layer of 100 units) and an RBF-kernel SVM (scikit-learn), both behind a
standard scaler; accuracy is measured on held-out *pairs* (a prompt and its triggered copy are
always on the same side of the split, so a probe cannot match a test prompt to its own twin).
The transfer matrix applies the MLP probe trained at layer ``i`` to the features of layer ``j``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.records import Example
from ..errors import BackdoorLabError
from ..models.victim import Victim
from .activations import readout_activations


def stream_features(victim: Victim, prompts: Sequence[Example], point: str = "attn_in",
                    batch_size: int = 16) -> torch.Tensor:
    """``point`` activations at the readout token for every layer: ``[layers, N, hidden]``."""
    return readout_activations(victim, prompts, point, batch_size)


@dataclass
class ProbeResult:
    """Held-out accuracy per layer (``mlp``, ``svm``) and the MLP transfer matrix ``[train, test]``."""

    mlp: list[float]
    svm: list[float]
    transfer: list[list[float]]
    train_pairs: int
    test_pairs: int

    def to_dict(self) -> dict:
        best = int(np.argmax(self.mlp))
        return {"mlp_accuracy": self.mlp, "svm_accuracy": self.svm, "transfer": self.transfer,
                "train_pairs": self.train_pairs, "test_pairs": self.test_pairs,
                "best_layer": best, "best_mlp_accuracy": self.mlp[best], "best_svm_accuracy": max(self.svm)}


def _probe(kind: str, seed: int):  # noqa: ANN202
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model = (MLPClassifier(hidden_layer_sizes=(100,), max_iter=500, random_state=seed) if kind == "mlp"
             else SVC(kernel="rbf", gamma="scale"))
    return make_pipeline(StandardScaler(), model)


def train_probes(clean: torch.Tensor, triggered: torch.Tensor, test_fraction: float = 0.3,
                 seed: int = 0) -> ProbeResult:
    """Fit and score the probes on features ``[layers, N, hidden]`` of aligned clean/triggered prompts."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    layers, pairs = clean.shape[:2]
    if triggered.shape[:2] != (layers, pairs):
        raise BackdoorLabError("clean and triggered features must be aligned (same layers and prompts)")
    if not 0 < test_fraction < 1:
        raise BackdoorLabError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = list(range(pairs))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(pairs * test_fraction))
    if pairs - n_test < 2:
        raise BackdoorLabError(f"{pairs} prompt pairs are too few to train and test a probe; use at least 4")
    test_idx, train_idx = order[:n_test], order[n_test:]

    def split(layer: int, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.cat([clean[layer, idx], triggered[layer, idx]]).numpy()
        y = np.array([0] * len(idx) + [1] * len(idx))
        return x, y

    mlp_acc, svm_acc, mlps = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for layer in tqdm(range(layers), desc="probes", leave=False):
            x_train, y_train = split(layer, train_idx)
            x_test, y_test = split(layer, test_idx)
            mlp = _probe("mlp", seed).fit(x_train, y_train)
            svm = _probe("svm", seed).fit(x_train, y_train)
            mlp_acc.append(float(mlp.score(x_test, y_test)))
            svm_acc.append(float(svm.score(x_test, y_test)))
            mlps.append(mlp)
    tests = [split(layer, test_idx) for layer in range(layers)]
    transfer = [[float(mlps[i].score(*tests[j])) for j in range(layers)] for i in range(layers)]
    return ProbeResult(mlp_acc, svm_acc, transfer, len(train_idx), n_test)
