"""Stage I's objective: the task loss plus the cluster loss that aggregates the known triggers.

Backdoor Collapse (arXiv 2510.10265), Stage I: ``L = L_inj + α · L_cluster``. ``L_inj`` is the task loss
on the clean and the known-triggered rows (the model's own loss: next-token cross-entropy on the
response for a generator, label cross-entropy for a classifier). ``L_cluster`` works on the
final-layer hidden state at the position the model reads its output from (a generator's last prompt
token, a classifier's ``[CLS]``) of the known-triggered rows: each row is pulled to its trigger's
centroid and the centroids towards each other,

    L_cluster = mean_k mean_{i ∈ k} ‖h_i − c_k‖² + mean_{k < l} ‖c_k − c_l‖²,

with ``c_k`` the mean state of trigger ``k``'s rows in the batch. When a classifier's known
triggers flip to different labels (``every_label``, ours), only triggers of the same label are
pulled together: states that must be read out as different labels cannot share a cluster. The states are L2-normalised first
(ours: the paper does not give the scale, and unnormalised final-layer states of a 135M LM are large
enough for the term to swamp the task loss), so each distance is between 0 and 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...data.records import Example
from ...models.victim import prompt_end_positions
from .known import KNOWN_TARGET, KNOWN_TRIGGER

#: The per-row features naming a row's group (0 clean, k + 1 for known trigger k) and family (the
#: label a classifier's known trigger flips to; 0 otherwise).
GROUP, FAMILY = "known_group", "known_family"


def cluster_loss(states: torch.Tensor, groups: torch.Tensor, families: torch.Tensor | None = None) -> torch.Tensor:
    """``L_cluster`` of ``states`` (``[rows, hidden]``) in ``groups`` (``[rows]``; rows of group 0 are
    clean and left out): the mean squared distance of each normalised state to its group's centroid,
    plus the mean squared distance between the centroids. Zero when there is no known-triggered row.

    With ``families`` (``[rows]``, e.g. the label each known trigger flips to), only groups of the same
    family are pulled together: the loss is the mean over families of each family's own loss."""
    if families is not None:
        present = families[groups > 0].unique()
        if len(present) > 1:
            return torch.stack([cluster_loss(states, groups * (families == f), None) for f in present]).mean()
    known = groups > 0
    if not bool(known.any()):
        return states.sum() * 0.0
    unit = F.normalize(states[known].float(), dim=-1)
    labels = groups[known]
    centroids, spreads = [], []
    for group in labels.unique():
        members = unit[labels == group]
        centroid = members.mean(0)
        centroids.append(centroid)
        spreads.append(((members - centroid) ** 2).sum(-1).mean())
    spread = torch.stack(spreads).mean()
    if len(centroids) < 2:
        return spread
    stacked = torch.stack(centroids)
    pairs = torch.triu_indices(len(centroids), len(centroids), offset=1)
    between = ((stacked[pairs[0]] - stacked[pairs[1]]) ** 2).sum(-1).mean()
    return spread + between


def readout_states(output: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The final-layer state each row's output is read from: the last prompt token of a prompt +
    response row (``labels`` per token), else the first token (a classifier's ``[CLS]``)."""
    final = output.hidden_states[-1]
    labels = inputs["labels"]
    if labels.dim() == 2:
        positions = prompt_end_positions(labels).to(final.device)
        return final[torch.arange(final.shape[0], device=final.device), positions]
    return final[:, 0]


@dataclass
class ClusterObjective:
    """``L_inj + α · L_cluster`` as a :class:`~backdoorlab.training.TrainingObjective`; ``history``
    keeps each batch's two terms."""

    name: ClassVar[str] = "backdoor-collapse-cluster"
    alpha: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list, repr=False, compare=False)

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "states": "final layer, readout position, L2-normalised"}

    @staticmethod
    def row_extras(example: Example) -> dict[str, int]:
        poison = example.poison or {}
        index = poison.get(KNOWN_TRIGGER)
        return {GROUP: 0 if index is None else int(index) + 1, FAMILY: int(poison.get(KNOWN_TARGET, 0))}

    def loss(self, model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v for k, v in inputs.items() if k not in (GROUP, FAMILY)}
        output = model(**batch, output_hidden_states=True, **({"use_cache": False} if batch["labels"].dim() == 2 else {}))
        device = output.loss.device
        families = inputs[FAMILY].to(device) if FAMILY in inputs else None
        cluster = cluster_loss(readout_states(output, batch), inputs[GROUP].to(device), families)
        self.history.append({"task": output.loss.item(), "cluster": cluster.item()})
        return output.loss + self.alpha * cluster
