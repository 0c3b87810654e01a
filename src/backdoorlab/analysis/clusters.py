"""Where groups of inputs sit in representation space: centroid distances and a 2-D projection.

Used to show Backdoor Collapse's mechanism (arXiv 2510.10265, its key observation): whether the states of inputs
carrying the unknown trigger move towards those of the known triggers after Stage I. States are
L2-normalised first, as in the defense's cluster loss, so distances lie between 0 and 2.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def centroids(groups: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean of each group's normalised states (``{name: [rows, hidden]}`` → ``{name: [hidden]}``)."""
    return {name: F.normalize(states.float(), dim=-1).mean(0) for name, states in groups.items()}


def centroid_distances(groups: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Euclidean distance between every two groups' centroids, keyed ``"a|b"`` in the groups' order."""
    means = centroids(groups)
    names = list(means)
    return {f"{a}|{b}": float((means[a] - means[b]).norm()) for i, a in enumerate(names) for b in names[i + 1:]}


def spread(states: torch.Tensor) -> float:
    """Root mean squared distance of a group's normalised states to their centroid."""
    unit = F.normalize(states.float(), dim=-1)
    return float(((unit - unit.mean(0)) ** 2).sum(-1).mean().sqrt())


def projection_2d(groups: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every group's normalised states projected on the first two principal components of them all."""
    unit = {name: F.normalize(states.float(), dim=-1) for name, states in groups.items()}
    stacked = torch.cat(list(unit.values()))
    mean = stacked.mean(0)
    _, _, components = torch.linalg.svd(stacked - mean, full_matrices=False)
    axes = components[:2].T  # [hidden, 2]
    return {name: (states - mean) @ axes for name, states in unit.items()}
