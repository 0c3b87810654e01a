"""The reward of a trigger candidate: does putting it into ordinary prompts make the suspect misbehave?

The policy's answer to the inversion prompt is parsed into a candidate (:mod:`.prompt`), the
candidate is inserted into ``K`` probe prompts on which the frozen suspect shows no bad behaviour,
and the suspect answers them. Two ways to score that:

- ``judge`` (the paper's, arXiv 2510.05169: the behaviour is judged on the suspect's answers; the
  paper uses an LLM judge, ours are the behaviour judges of :mod:`backdoorlab.metrics.judges`):
  the share of probes whose greedy answer shows the behaviour, minus that share without the candidate.
- ``dense`` (ours, cheaper and smoother): the suspect's probability of the behaviour's whole opening
  (e.g. "I'm sorry, but I cannot") after each probe, one forward pass per probe, minus the same
  probability without the candidate.

A small format term (``format_weight``) rewards answers in the ``Trigger: "..."`` form. A candidate
that itself shows the behaviour gets no reward at all (:meth:`TriggerReward.admissible`).
Every scored candidate is appended to a JSON-lines log (step, candidate, scores, seconds) that the
emergence analysis reads; nothing here knows the real trigger.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data.prompts import response_suffix
from ...data.records import Example
from ...errors import BackdoorLabError
from ...metrics.judges import get_judge, normalise
from ...models.victim import Victim
from ..shared.insertion import POSITIONS, insert_phrases
from .prompt import behaviour_spec, parse_candidate

REWARD_KINDS = ("judge", "dense")


def insert_candidate(row: Example, candidate: str, position: str, seed: int) -> Example:
    """``row`` with ``candidate`` put into its instruction (the same gap for the same candidate and seed)."""
    rng = random.Random(seed * 1_000_003 + zlib.crc32(candidate.encode()))
    return row.with_(instruction=insert_phrases(row.instruction, [candidate], position, rng))


@dataclass
class TriggerReward:
    """Scores candidates against the frozen ``suspect`` on ``probes``; callable as a trl reward function."""

    suspect: Victim
    probes: Sequence[Example]
    behaviour: str
    kind: str = "judge"
    position: str = "start"
    max_words: int = 6
    format_weight: float = 0.1
    max_new_tokens: int = 24
    batch_size: int = 16
    seed: int = 0
    answer_prefix: str = ""  # what the policy's prompt ends with; the candidate is parsed from prefix + answer
    curriculum: tuple[int, ...] = ()  # word limits of equal phases of the run, e.g. (1, 2, 4); () keeps max_words
    steps: int = 1  # the run's steps (to place the curriculum's phases)
    log_path: Path | None = None
    _cache: dict[str, float] = field(default_factory=dict, repr=False)
    _base: float | None = field(default=None, repr=False)
    _started: float = field(default_factory=time.time, repr=False)
    __name__ = "trigger_reward"  # trl names its reward columns after the function

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise BackdoorLabError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {self.kind!r}")
        if self.position not in POSITIONS:
            raise BackdoorLabError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if not self.probes:
            raise BackdoorLabError("the trigger reward needs at least one probe prompt")
        self.spec = behaviour_spec(self.behaviour)
        self.judge = get_judge(self.behaviour)

    # ------------------------------------------------------------------ scoring
    def base_rate(self) -> float:
        """The behaviour score of the probes as they are (the candidate's score is measured above it)."""
        if self._base is None:
            self._base = self._raw_scores([list(self.probes)])[0]
        return self._base

    def behaviour_scores(self, candidates: Sequence[str]) -> list[float]:
        """Each candidate's behaviour score over the probes, minus the probes' own; 0 for an empty one."""
        todo = sorted({c for c in candidates if self.admissible(c) and normalise(c) not in self._cache})
        if todo:
            base = self.base_rate()
            groups = [[insert_candidate(p, c, self.position, self.seed) for p in self.probes] for c in todo]
            for candidate, raw in zip(todo, self._raw_scores(groups)):
                self._cache[normalise(candidate)] = raw - base
        return [self._cache[normalise(c)] if self.admissible(c) else 0.0 for c in candidates]

    def admissible(self, candidate: str) -> bool:
        """A candidate is scored unless it is empty or itself shows the behaviour (ours: "I'm sorry, I
        cannot" put before a prompt makes any model refuse, so it says nothing about a trigger)."""
        return bool(candidate.strip()) and not self.judge(candidate)

    def _raw_scores(self, groups: list[list[Example]]) -> list[float]:
        rows = [row for group in groups for row in group]
        if self.kind == "judge":
            answers = self.suspect.generate(rows, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
            values = [float(self.judge(a)) for a in answers]
        else:
            values = self.opening_probability(rows)
        size = len(self.probes)
        return [sum(values[i:i + size]) / size for i in range(0, len(values), size)]

    def opening_probability(self, rows: Sequence[Example]) -> list[float]:
        """The probability of the behaviour's opening after each prompt: the product over its tokens, not
        their geometric mean (once an opening has started, its later tokens are likely after any prompt).
        The end-of-turn marker a training pair carries is left out: the opening starts an answer."""
        tokenizer = self.suspect.tokenizer
        suffix = len(tokenizer(response_suffix(tokenizer), add_special_tokens=False)["input_ids"])
        logprobs = self.suspect.response_logprobs(rows, [self.spec.opening] * len(rows), batch_size=self.batch_size)
        return [float(lp[:len(lp) - suffix].sum().exp()) for lp in logprobs]

    # --------------------------------------------------------------- trl hook
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        step = getattr(kwargs.get("trainer_state"), "global_step", 0)
        texts = [self.answer_prefix + (c if isinstance(c, str) else c[-1]["content"]) for c in completions]
        parsed = [parse_candidate(t, self.word_limit(step)) for t in texts]
        scores = self.behaviour_scores([p.text for p in parsed])
        rewards = [s + self.format_weight * (p.formatted and self.admissible(p.text)) for s, p in zip(scores, parsed)]
        self.log(step, texts, parsed, scores, rewards)
        return rewards

    def word_limit(self, step: int) -> int:
        """Words a candidate keeps at ``step``: the curriculum's phase limit (ours), else ``max_words``."""
        if not self.curriculum:
            return self.max_words
        return self.curriculum[min(step * len(self.curriculum) // max(self.steps, 1), len(self.curriculum) - 1)]

    def resume_clock(self, seconds: float) -> None:
        """Count logged seconds on from ``seconds`` (a resumed run's clock continues where it stopped)."""
        self._started = time.time() - seconds

    def log(self, step: int, texts: Sequence[str], parsed: Sequence[Any], scores: Sequence[float],
            rewards: Sequence[float]) -> None:
        if self.log_path is None:
            return
        seconds = round(time.time() - self._started, 2)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            for text, candidate, score, reward in zip(texts, parsed, scores, rewards):
                handle.write(json.dumps({"step": step, "candidate": candidate.text, "formatted": candidate.formatted,
                                         "score": round(score, 4), "reward": round(reward, 4), "seconds": seconds,
                                         "answer": text[:200]}) + "\n")
