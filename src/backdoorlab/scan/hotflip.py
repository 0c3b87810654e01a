"""A gradient-guided search for the few tokens that push a model toward an output (HotFlip,
Ebrahimi et al. 2018; the per-position swap ranking of GCG, Zou et al. 2023).

The caller says how a trigger of token ids is scored: ``loss(batch of triggers) -> [n]`` (lower is
better) and ``gradient(trigger) -> [length, hidden]``, the gradient of that loss with respect to the
trigger's input embeddings. Each step ranks every allowed token at every position by the first-order
change of the loss, ``(E[v] - E[t_j]) · g_j``, scores the ``top_k`` best swaps per position exactly and
keeps the best trigger; the search stops when no swap lowers the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]
GradientFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SearchResult:
    ids: list[int]
    loss: float
    steps: int


def hotflip_search(loss: LossFn, gradient: GradientFn, embeddings: torch.Tensor, allowed: Sequence[int],
                   start: Sequence[int], *, steps: int = 8, top_k: int = 16,
                   continuations: Sequence[int] = ()) -> SearchResult:
    """The trigger (token ids, the length of ``start``) with the lowest ``loss`` found from ``start``.

    ``embeddings`` is the model's input embedding matrix ``[vocab, hidden]``; only ``allowed`` ids
    are tried, and ``continuations`` (word pieces) too at every position but the first."""
    known = set(allowed)
    tried = list(allowed) + [c for c in dict.fromkeys(continuations) if c not in known]
    allowed_ids = torch.tensor(tried, dtype=torch.long, device=embeddings.device)
    table = embeddings[allowed_ids].float()
    opening = torch.zeros(len(tried), dtype=torch.bool, device=embeddings.device)
    opening[:len(allowed)] = True  # a piece cannot open a trigger
    current = torch.tensor(list(start), dtype=torch.long, device=embeddings.device)
    best = float(loss(current.unsqueeze(0))[0])
    done = 0
    for done in range(1, steps + 1):
        grad = gradient(current).float()  # [length, hidden]
        change = table @ grad.T - (embeddings[current].float() * grad).sum(-1)  # [tried, length]
        change[~opening, 0] = float("inf")
        picks = (-change).topk(min(top_k, len(tried)), dim=0).indices  # best swaps per position
        trials = []
        for position in range(len(current)):
            for pick in picks[:, position]:
                if position == 0 and not opening[pick]:
                    continue
                trial = current.clone()
                trial[position] = allowed_ids[pick]
                if not torch.equal(trial, current):
                    trials.append(trial)
        if not trials:
            break
        batch = torch.stack(trials)
        losses = loss(batch)
        index = int(losses.argmin())
        if float(losses[index]) >= best:
            break
        best, current = float(losses[index]), batch[index]
    return SearchResult(current.tolist(), best, done)
