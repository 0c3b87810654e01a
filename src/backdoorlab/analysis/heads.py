"""Backdoor Attention Head Attribution (BAHA), arXiv 2509.21761 §5.1 (Eq. 3–4).

For head ``(l, h)``, ``ā(l, h)`` is its mean output at the readout token over *triggered* prompts.
On clean prompts its output is set to ``ā(l, h)`` and the change in the probability of the
backdoor output is averaged (the average causal indirect effect)::

    ACIE(l, h) = mean_i [ P(y_bd | x_i, do(a(l, h) = ā(l, h))) − P(y_bd | x_i) ]

``P`` is the geometric mean of the target tokens' probabilities (the target label's probability
for a classifier). :func:`exact_acie` runs one intervention per head (the paper's procedure);
:func:`attribution_patching` estimates every head at once from one forward and backward pass,
``ACIE(l, h) ≈ mean_i ∇_a P(y_bd | x_i) · (ā(l, h) − a_i(l, h))`` (first-order Taylor expansion,
Nanda 2023 "attribution patching"; Syed et al. 2023), which is what keeps 7B models cheap.

Unlike the reference code, each row is scored against its own prompt whatever the batch size,
and probes and attribution share the project's single prompt format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.records import Example
from ..fileio import write_json_atomic
from ..fingerprint import same_fingerprint
from ..models.interventions import Head, Intervention, set_heads
from ..models.victim import Victim, frozen_parameters
from .activations import readout_activations
from .scoring import BackdoorScorer


def head_outputs(victim: Victim, prompts: Sequence[Example], batch_size: int = 16) -> torch.Tensor:
    """Every head's output at the readout token, ``[N, layers, heads, head_dim]`` (float32, CPU)."""
    return readout_activations(victim, prompts, "head_out", batch_size).transpose(0, 1)


def mean_head_outputs(victim: Victim, prompts: Sequence[Example], batch_size: int = 16) -> torch.Tensor:
    """``ā``: the mean head outputs at the readout token, ``[layers, heads, head_dim]``."""
    return head_outputs(victim, prompts, batch_size).mean(0)


def exact_acie(scorer: BackdoorScorer, means: torch.Tensor, checkpoint: str | Path | None = None,
               fingerprint: dict[str, Any] | None = None) -> torch.Tensor:
    """ACIE of every head, one intervention each; ``[layers, heads]``.

    ``checkpoint``: a JSON file where finished layers are kept, so an interrupted run resumes; its
    layers are reused only when it holds the same ``fingerprint`` (model, prompts, settings).
    """
    layers, heads = means.shape[:2]
    done = _read_checkpoint(checkpoint, layers, heads, fingerprint)
    base = scorer.score()
    scores = torch.full((layers, heads), float("nan"))
    for layer, values in done.items():
        scores[layer] = torch.tensor(values)
    todo = [(layer, head) for layer in range(layers) if layer not in done for head in range(heads)]
    for layer, head in tqdm(todo, desc="ACIE per head", disable=not todo):
        patched = scorer.score(set_heads({(layer, head): means[layer, head]}))
        scores[layer, head] = float((patched - base).mean())
        if head == heads - 1 and checkpoint is not None:
            done[layer] = scores[layer].tolist()
            write_json_atomic(Path(checkpoint), {"layers": layers, "heads": heads, "done": done,
                                                 "fingerprint": fingerprint})
    return scores


def _read_checkpoint(path: str | Path | None, layers: int, heads: int,
                     fingerprint: dict[str, Any] | None) -> dict[int, list[float]]:
    if path is None or not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("layers") != layers or data.get("heads") != heads:
        return {}
    if fingerprint is not None and not same_fingerprint(data.get("fingerprint"), fingerprint):
        return {}  # progress of another model, prompt set or setting: start over
    return {int(k): v for k, v in data["done"].items()}


def attribution_patching(scorer: BackdoorScorer, means: torch.Tensor) -> torch.Tensor:
    """First-order estimate of every head's ACIE from one forward/backward pass; ``[layers, heads]``."""
    layers = means.shape[0]
    total = torch.zeros(means.shape[:2])
    count = 0
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def intervention(positions: torch.Tensor) -> dict:
        def hook_for(layer: int):  # noqa: ANN202
            def fn(activation: torch.Tensor) -> torch.Tensor:
                rows = torch.arange(activation.shape[0], device=activation.device)
                cols = positions.to(activation.device)
                delta = torch.zeros(activation.shape[0], *activation.shape[2:], device=activation.device,
                                    dtype=activation.dtype, requires_grad=True)
                captured[layer] = (activation[rows, cols].detach().float(), delta)
                out = activation.clone()
                out[rows, cols] = out[rows, cols] + delta
                return out
            return fn
        return {(layer, "head_out"): [hook_for(layer)] for layer in range(layers)}

    with frozen_parameters(scorer.victim.model):
        for start in range(0, len(scorer.prompts), scorer.batch_size):
            sub = _subset(scorer, start)
            captured.clear()
            probs = sub.score(intervention, with_grad=True)
            probs.sum().backward()
            for layer, (activation, delta) in captured.items():
                grad = delta.grad.float().cpu()
                diff = means[layer].unsqueeze(0) - activation.cpu()
                total[layer] += (grad * diff).sum(-1).sum(0)
            count += probs.shape[0]
    return total / max(count, 1)


def _subset(scorer: BackdoorScorer, start: int) -> BackdoorScorer:
    end = start + scorer.batch_size
    return BackdoorScorer(scorer.victim, scorer.prompts[start:end],
                          None if scorer.targets is None else scorer.targets[start:end],
                          scorer.target_label, batch_size=scorer.batch_size, use_cache=False,
                          max_target_tokens=scorer.max_target_tokens)


def rank_heads(scores: torch.Tensor) -> list[Head]:
    """Heads by decreasing score (NaNs last)."""
    flat = torch.nan_to_num(scores.flatten(), nan=float("-inf"))
    heads = scores.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in torch.argsort(flat, descending=True)]


def rank_agreement(exact: torch.Tensor, approx: torch.Tensor, top: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """Spearman and Pearson correlation of two head-score maps, and the overlap of their top-k sets."""
    from scipy.stats import pearsonr, spearmanr

    a, b = exact.flatten().numpy(), approx.flatten().numpy()
    result = {"spearman": float(spearmanr(a, b).statistic), "pearson": float(pearsonr(a, b).statistic)}
    ra, rb = rank_heads(exact), rank_heads(approx)
    for k in top:
        if k <= len(ra):
            result[f"top{k}_overlap"] = len(set(ra[:k]) & set(rb[:k])) / k
    return result


def patch_to_means(heads: Sequence[Head], means: torch.Tensor) -> Intervention:
    """Set each of ``heads`` to its triggered mean output."""
    return set_heads({head: means[head] for head in heads})
