"""Head ablation, arXiv 2509.21761 §5.2: remove the top-k attributed heads and watch the backdoor.

A head is removed by zeroing its output at the readout token (the last prompt token during
prefill for generators, ``[CLS]`` for classifiers), which removes its contribution to the
residual stream there. ``mode="mean"`` sets it to its clean mean output instead (mean ablation),
which keeps the stream's scale. A random-heads curve is the control the paper's figure omits.
Ablating at every position and decoding step (``everywhere``) is what removing the heads from the
weights does (``defend --method head-ablation``); tokens generated after the first can otherwise
still read the trigger through the ablated heads.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import BackdoorLabError
from ..models.interventions import Head, Intervention, scale_heads, set_heads
from .effects import backdoor_rate, clean_utility
from .subject import AnalysisSubject

ABLATION_MODES = ("zero", "mean")


def ablate(heads: Sequence[Head], mode: str = "zero", clean_means: torch.Tensor | None = None,
           everywhere: bool = False) -> Intervention | None:
    """The intervention removing ``heads`` (``None`` when there are none); ``everywhere`` (zero
    ablation only): at every position and decoding step, not just the readout token."""
    if not heads:
        return None
    if everywhere and mode != "zero":
        raise BackdoorLabError("ablation at every position is zero ablation (mode='zero')")
    if mode == "zero":
        return scale_heads(heads, 0.0, everywhere=everywhere)
    if mode == "mean":
        if clean_means is None:
            raise BackdoorLabError("mean ablation needs the clean mean head outputs")
        return set_heads({head: clean_means[head] for head in heads})
    raise BackdoorLabError(f"unknown ablation mode {mode!r}; use one of {', '.join(ABLATION_MODES)}")


def default_ks(total_heads: int, max_fraction: float = 0.10, points: int = 8) -> list[int]:
    """0 … ``max_fraction`` of all heads, about ``points`` values, always including 0 and the max."""
    top = max(1, round(total_heads * max_fraction))
    return sorted({round(top * i / (points - 1)) for i in range(points)})


def random_ranking(layers: int, heads: int, seed: int = 0) -> list[Head]:
    ranking = [(layer, head) for layer in range(layers) for head in range(heads)]
    random.Random(seed).shuffle(ranking)
    return ranking


def ablation_curve(subject: AnalysisSubject, ranking: Sequence[Head], ks: Sequence[int], *, mode: str = "zero",
                   clean_means: torch.Tensor | None = None, everywhere: bool = False, max_new_tokens: int = 32,
                   batch_size: int = 16) -> list[dict[str, Any]]:
    """ASR on triggered prompts and clean utility with the top-``k`` heads of ``ranking`` removed
    (at the readout token, or ``everywhere``)."""
    _, triggered, _ = subject.asr_rows()
    total = subject.victim.spec.total_heads
    points = []
    for k in tqdm(ks, desc="ablation", leave=False):
        if not 0 <= k <= len(ranking):
            raise BackdoorLabError(f"cannot ablate {k} heads; the ranking has {len(ranking)}")
        intervention = ablate(list(ranking[:k]), mode, clean_means, everywhere)
        points.append({"k": k, "fraction": k / total,
                       "asr": backdoor_rate(subject, triggered, intervention, max_new_tokens=max_new_tokens,
                                            batch_size=batch_size),
                       **clean_utility(subject, intervention, batch_size)})
    return points
