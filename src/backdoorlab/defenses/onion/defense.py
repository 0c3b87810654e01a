"""ONION (Qi et al., "ONION: A Simple and Effective Defense Against Textual Backdoor Attacks",
EMNLP 2021, §3): delete the words that make a test input unusually disfluent, then classify.

For a text of words ``w_1..w_n`` (split on whitespace), the suspicion score of ``w_i`` is
``f_i = p_0 - p_i``: ``p_0`` is the text's perplexity under a causal LM (default: the packaged
SmolLM2-135M-Instruct, scoring plain text, no chat template) and ``p_i`` the perplexity with
``w_i`` removed. Words with ``f_i > t`` are removed. Every text and all its leave-one-out
variants are scored together in batched LM passes.

The threshold ``t``: ``threshold`` when given; else the ``threshold_percentile``-th percentile of
the suspicion scores of the clean reference rows' words, so that about ``100 - percentile`` % of
clean words get removed; else ``0``, the default bar of the ONION code and of OpenBackdoor's
``ONIONDefender``. Negative thresholds are allowed (the ONION code sweeps bars in [-100, 0]).
Only the first ``max_words`` words of a longer text are candidates (the rest are always kept, but
still count in the perplexities); one-word texts are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...errors import BackdoorLabError
from ...models.victim import Item, Victim
from ..base import DefenseOutcome, register_defense
from ..guard import Guard, register_guard
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from .lm_perplexity import PerplexityScorer

Scorer = Callable[[Sequence[str], int], torch.Tensor]  # (texts, batch_size) -> perplexity per text


def suspicion_scores(texts: Sequence[str], scorer: Scorer, batch_size: int = 32,
                     max_words: int = 64) -> list[torch.Tensor]:
    """Per text, ``f_i = p_0 - p_i`` for its first ``max_words`` words (empty for texts of < 2 words).

    All texts and their leave-one-out variants go to ``scorer`` in one list, scored in batches.
    """
    variants: list[str] = []
    counts: list[int] = []
    for text in texts:
        words = text.split()
        candidates = min(len(words), max_words) if len(words) > 1 else 0
        variants.append(" ".join(words))
        variants.extend(" ".join(words[:i] + words[i + 1:]) for i in range(candidates))
        counts.append(candidates)
    perplexity = scorer(variants, batch_size) if variants else torch.empty(0)
    scores, start = [], 0
    for count in counts:
        scores.append(perplexity[start] - perplexity[start + 1:start + 1 + count])
        start += 1 + count
    return scores


def remove_suspicious(text: str, scores: torch.Tensor, threshold: float) -> str:
    """``text`` without the words whose score is above ``threshold`` (nan scores never are)."""
    drop = set((scores > threshold).nonzero().flatten().tolist())
    return " ".join(w for i, w in enumerate(text.split()) if i not in drop)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise BackdoorLabError(f"onion threshold must be a finite number, got {threshold!r}")
    return float(threshold)


@register_guard
class OnionGuard(Guard):
    """Removes suspicious words from each input, then predicts with the classifier.

    The LM is loaded (onto the classifier's device) on first use and kept; ``scorer`` replaces it.
    """

    name: ClassVar[str] = "onion"

    def __init__(self, lm: str, threshold: float = 0.0, max_words: int = 64, scorer: Scorer | None = None) -> None:
        if not isinstance(max_words, int) or max_words < 1:
            raise BackdoorLabError(f"onion max_words must be a positive integer, got {max_words!r}")
        self.lm = str(lm)
        self.threshold = _check_threshold(threshold)
        self.max_words = max_words
        self._scorer = scorer

    def scorer(self, device: str | None = "auto") -> Scorer:
        if self._scorer is None:
            self._scorer = PerplexityScorer.load(self.lm, device=device)
        return self._scorer

    def suspicion(self, texts: Sequence[str], batch_size: int = 32, device: str | None = "auto") -> list[torch.Tensor]:
        return suspicion_scores(texts, self.scorer(device), batch_size, self.max_words)

    def purify(self, texts: Sequence[str], batch_size: int = 32, device: str | None = "auto") -> list[str]:
        """The texts with their suspicious words removed."""
        scores = self.suspicion(texts, batch_size, device)
        return [remove_suspicious(text, s, self.threshold) for text, s in zip(texts, scores)]

    def predict(self, victim: Victim, items: Sequence[Item], batch_size: int = 32) -> list[int]:
        if victim.is_generator:
            raise BackdoorLabError("the onion guard protects classifiers only")
        texts = self.purify(victim.prompts(items), batch_size, device=str(victim.device))
        return victim.predict(texts, batch_size)

    def state(self) -> dict[str, Any]:
        return {"lm": self.lm, "threshold": self.threshold, "max_words": self.max_words}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "OnionGuard":
        try:
            return cls(state["lm"], state["threshold"], state.get("max_words", 64))
        except (KeyError, TypeError) as error:
            raise BackdoorLabError(f"invalid onion guard state ({error!r}); run the defense again") from error


@register_defense
@dataclass
class Onion(CleanRowsDefense):
    """ONION: a guard that deletes outlier words (by LM perplexity) before classifying."""

    name: ClassVar[str] = "onion"
    description: ClassVar[str] = "remove words whose deletion lowers LM perplexity most (ONION), then classify"
    stage: ClassVar[str] = "inference"

    lm: str = "smollm2-135m-instruct"  # packaged name or folder of a causal LM
    threshold: float | None = None  # remove words with suspicion f_i > threshold
    threshold_percentile: float | None = None  # when threshold is None: percentile of clean words' f_i; None -> 0
    batch_size: int = 32  # LM sequences per forward pass
    max_words: int = 64  # only the first max_words words of a text are candidates

    def __post_init__(self) -> None:
        self._validate()  # bad options fail when the defense is built, before any model is loaded

    def _validate(self) -> None:
        if self.threshold is not None:
            _check_threshold(self.threshold)
            if self.threshold_percentile is not None:
                raise BackdoorLabError("give onion either threshold or threshold_percentile, not both")
        p = self.threshold_percentile
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100):
            raise BackdoorLabError(f"onion threshold_percentile must be a number in [0, 100], got {p!r}")
        for name in ("batch_size", "max_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BackdoorLabError(f"onion {name} must be a positive integer, got {value!r}")

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        self._validate()
        if victim.is_generator:
            raise BackdoorLabError("onion protects classifiers only; this model is a generator")
        clean = self.clean_rows(inputs)
        guard = OnionGuard(self.lm, 0.0, self.max_words)
        scores = guard.suspicion(victim.prompts(clean.examples), self.batch_size, device=str(victim.device))
        every = torch.cat(scores) if scores else torch.empty(0)
        if self.threshold is not None:
            guard.threshold, chosen = float(self.threshold), "given"
        elif self.threshold_percentile is not None:
            if not torch.isfinite(every).any():
                raise BackdoorLabError("no clean reference word could be scored; give onion a threshold instead")
            value = torch.nanquantile(every.double(), self.threshold_percentile / 100).item()
            guard.threshold, chosen = value, f"percentile {self.threshold_percentile:g} of clean words' suspicion"
        else:
            chosen = "default 0 (ONION/OpenBackdoor bar)"
        removed = [int((s > guard.threshold).sum()) for s in scores]
        findings = {"lm": self.lm, "threshold": guard.threshold, "threshold_from": chosen, "max_words": self.max_words,
                    "clean_rows": len(clean), "clean_words_scored": int(every.numel()),
                    "clean_words_removed": sum(removed), "clean_rows_changed": sum(r > 0 for r in removed)}
        return DefenseOutcome(victim, findings, guard=guard, model_changed=False)
