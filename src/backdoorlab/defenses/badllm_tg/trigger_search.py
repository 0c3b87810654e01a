"""Prompt-driven reinforcement learning of the trigger generator (BadLLM-TG §2.4, Eqs. 5–8).

The agent is an LLM G(·; p) whose only parameter is its prompt p (a :class:`TriggerPattern`).

1. **Warm start** (p₀): G reads target-label training rows (D_tgt) and proposes the poisoning
   pattern. In the evidence-mined variant it also reads the n-gram evidence of
   :mod:`backdoorlab.defenses.shared.evidence`.
2. **Action**: G rewrites a fixed sample of non-target rows (D_n-tgt) with p_i.
3. **Reward**: the victim's mean cross-entropy toward the identified target ŷ on those rewrites,
   L(p_i) = −(1/M) Σ log f_ŷ(G(x_j; p_i)) (lower is better), with the flip rate beside it.
4. **Policy update**: G is shown the patterns tried so far with their losses, and rewrites that
   did and did not flip, and writes p_{i+1}. ``candidates`` proposals are sampled per iteration.

The search stops when the best loss falls to ``loss_threshold`` or after ``iterations``; the best
pattern p̂ is kept (the paper). With ``stop_at_threshold=False`` it runs every iteration, asks the
generator for patterns other than the working ones, and also returns every working pattern (flip
rate ≥ ``working_flip_rate``): a backdoor may answer to several triggers (e.g. BadNets' four rare
words), and adversarial training must see them all. Every iteration (prompts, proposals, rewrites, losses, tokens) is appended to
``iterations.json``, and a rerun continues after the last finished iteration.

In the evidence-mined variant a proposal G fails to produce (unparseable, or already tried) is
replaced by the next untried evidence candidate, and the log says so. In the faithful
(evidence-free) variant the generator gets ``max_failures`` tries before the search stops with an
error naming what it returned.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BackdoorLabError, MethodFoundNothing
from ...fileio import write_json_atomic
from ...llm.backends import ChatBackend
from ...models.victim import Victim
from ..shared.evidence import Evidence, describe_evidence
from ..shared.label_screening import answers_toward, insertion_scores
from .trigger_pattern import PatternApplier, TriggerPattern

FORMAT = ("Answer in exactly this format:\nPATTERN: <the exact words or sentence the attacker added, "
          "or the style or sentence structure they used>\nINSTRUCTION: <one sentence telling a writer how to "
          "rewrite any text so that it carries this pattern>")
WARM_START = ("Some of the sentences below were poisoned by a backdoor attack: the attacker added unusual words "
              "or a sentence, or changed the writing style or syntax, so that a classifier labels them "
              "\"{label}\". Find the pattern of the attack.\n\nSentences:\n{samples}\n{evidence}\n{format}")
FEEDBACK = ("You are searching for the hidden trigger of a backdoored classifier: a pattern that makes it answer "
            "\"{label}\". Patterns tried so far, best first, with the classifier's loss toward \"{label}\" "
            "(lower is better; below {threshold} the trigger works) and how many rewritten texts flipped:\n"
            "{history}\n\nA rewrite that flipped: {flipped}\nA rewrite that did not flip: {unflipped}\n{evidence}\n"
            "{ask}\n{format}")
ASK_BETTER = "Propose a different, better pattern."
ASK_ANOTHER = ("Some patterns already work. The backdoor may have other triggers too: propose a different pattern "
               "that also makes the classifier answer \"{label}\".")
EVIDENCE_NOTE = "\nWord sequences far more frequent in the suspicious training sentences than elsewhere:\n{lines}\n"


@dataclass
class SearchConfig:
    iterations: int = 8
    candidates: int = 2
    eval_rows: int = 24
    loss_threshold: float = 0.2
    temperature: float = 0.7
    samples_shown: int = 10
    max_new_tokens: int = 96
    max_failures: int = 3
    stop_at_threshold: bool = True
    working_flip_rate: float = 0.5
    seed: int = 0

    def check(self) -> None:
        if self.iterations < 1 or self.candidates < 1 or self.eval_rows < 1 or self.samples_shown < 1:
            raise BackdoorLabError("iterations, candidates, eval_rows and samples_shown must be at least 1")
        if self.loss_threshold < 0 or self.temperature < 0:
            raise BackdoorLabError("loss_threshold and temperature must not be negative")


@dataclass
class SearchResult:
    best: TriggerPattern
    loss: float
    flip_rate: float
    iterations: int
    prompt_tokens: int
    completion_tokens: int
    working: list[TriggerPattern]  # every pattern that flips at least working_flip_rate, best first

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.best.to_dict(), "description": self.best.describe(), "loss": round(self.loss, 4),
                "flip_rate": round(self.flip_rate, 4), "iterations": self.iterations,
                "working": [p.describe() for p in self.working],
                "working_patterns": [p.to_dict() for p in self.working],
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens}}


def parse_proposal(reply: str, evidence: Sequence[Evidence] = ()) -> TriggerPattern | None:
    """The pattern in a generator reply (``PATTERN:`` / ``INSTRUCTION:`` lines), or ``None``."""
    pattern_match = re.search(r"PATTERN\s*:\s*(.+)", reply, re.IGNORECASE)
    instruction_match = re.search(r"INSTRUCTION\s*:\s*(.+)", reply, re.IGNORECASE)
    pattern_text = pattern_match.group(1).strip() if pattern_match else ""
    instruction = instruction_match.group(1).strip() if instruction_match else ""
    phrases = re.findall(r"[\"“']([^\"”']{1,80})[\"”']", pattern_text)
    if not phrases and pattern_text and len(pattern_text.split()) <= 8:
        phrases = [pattern_text.rstrip(".")]
    phrases = [p.strip() for p in phrases
               if any(c.isalnum() for c in p) and len(p.split()) <= 12 and not _echo(p)][:3]
    if instruction and (len(instruction.split()) > 60 or not any(c.isalpha() for c in instruction)
                        or _echo(instruction)):
        instruction = ""
    if not phrases and not instruction:
        return None
    if not instruction:
        instruction = f"Rewrite the text so that it naturally includes {', '.join(repr(p) for p in phrases)}."
    known = {e.phrase: e.position for e in evidence}
    position = next((known[p.lower()] for p in phrases if p.lower() in known), "random")
    return TriggerPattern(instruction, phrases, position, "generator")


def _echo(text: str) -> bool:
    """Whether a proposal only repeats the answer format (placeholders like ``<...>`` or ``[...]``)."""
    return bool(re.search(r"[<>\[\]]", text)) or "the exact words or sentence" in text.lower()


def evidence_candidates(evidence: Sequence[Evidence]) -> list[TriggerPattern]:
    """Fallback proposals from the evidence: each phrase alone, then the top phrases together."""
    singles = [TriggerPattern(f"Rewrite the text so that it naturally includes \"{e.phrase}\".", [e.phrase],
                              e.position, "evidence") for e in evidence]
    combos = []
    for k in (2, 3):
        if len(evidence) >= k:
            top = evidence[:k]
            combos.append(TriggerPattern("Rewrite the text so that it naturally includes "
                                         + ", ".join(f'"{e.phrase}"' for e in top) + ".",
                                         [e.phrase for e in top], top[0].position, "evidence"))
    return singles + combos


class TriggerSearch:
    """One search run; see the module docstring."""

    def __init__(self, victim: Victim, backend: ChatBackend, applier: PatternApplier, *, target: int, target_name: str,
                 target_texts: Sequence[str], other_texts: Sequence[str], evidence: Sequence[Evidence],
                 use_evidence: bool, config: SearchConfig, log_path: Path) -> None:
        config.check()
        if not target_texts or not other_texts:
            raise BackdoorLabError("the trigger search needs training rows both with and without the target label")
        self.victim, self.backend, self.applier = victim, backend, applier
        self.target, self.target_name = target, target_name
        rng = random.Random(config.seed)
        self.shown = rng.sample(list(target_texts), min(config.samples_shown, len(target_texts)))
        self.eval_texts = rng.sample(list(other_texts), min(config.eval_rows, len(other_texts)))
        self.evidence = list(evidence) if use_evidence else []
        self.config, self.log_path = config, log_path

    # ---------------------------------------------------------------- reward
    def reward(self, texts: Sequence[str]) -> tuple[list[float], list[bool]]:
        """The victim's cross-entropy toward ŷ and whether it predicts ŷ, per text: the reward signal."""
        losses, flips, _ = answers_toward(self.victim, texts, self.target)
        return losses, flips

    def score(self, pattern: TriggerPattern) -> dict[str, Any]:
        """Apply the pattern to the evaluation rows and measure the victim's loss toward ŷ."""
        rewrites = self.applier.apply(self.eval_texts, pattern)
        losses, flipped = self.reward(rewrites.texts)
        return {"pattern": pattern.to_dict(), "description": pattern.describe(),
                "loss": sum(losses) / len(losses), "flip_rate": sum(flipped) / len(flipped),
                "unusable_rewrites": rewrites.unusable,
                "tokens": {"prompt": rewrites.prompt_tokens, "completion": rewrites.completion_tokens},
                "examples": [{"original": o, "rewritten": r, "loss": round(v, 4), "flipped": f}
                             for o, r, v, f in zip(self.eval_texts, rewrites.texts, losses, flipped)]}

    def screen(self, evidence: Sequence[Evidence], keep: int) -> list[Evidence]:
        """Evidence re-ranked by the victim's reward: each phrase inserted alone (no generator call) into
        the evaluation rows at its best position, lowest loss first; the best ``keep`` are what the
        generator is shown."""
        scores = insertion_scores(self.victim, self.eval_texts, evidence, self.target, self.config.seed)
        order = sorted(range(len(evidence)), key=lambda i: scores[i].loss)
        return [evidence[i].with_reward(scores[i].loss, scores[i].position) for i in order[:keep]]

    # ---------------------------------------------------------------- prompts
    def _evidence_note(self) -> str:
        return EVIDENCE_NOTE.format(lines=describe_evidence(self.evidence)) if self.evidence else ""

    def warm_start_prompt(self) -> str:
        samples = "\n".join(f"- {t}" for t in self.shown)
        return WARM_START.format(label=self.target_name, samples=samples, evidence=self._evidence_note(), format=FORMAT)

    def feedback_prompt(self, scored: list[dict[str, Any]]) -> str:
        ranked = sorted(scored, key=lambda c: c["loss"])[:5]
        history = "\n".join(f"{i + 1}. {c['description']} -> loss {c['loss']:.2f}, flipped "
                            f"{round(c['flip_rate'] * len(c['examples']))}/{len(c['examples'])}"
                            for i, c in enumerate(ranked))
        examples = [e for c in ranked for e in c["examples"]]
        flipped = next((e["rewritten"] for e in examples if e["flipped"]), "(none yet)")
        unflipped = next((e["rewritten"] for e in examples if not e["flipped"]), "(none)")
        found = ranked[0]["loss"] <= self.config.loss_threshold
        ask = ASK_ANOTHER.format(label=self.target_name) if found else ASK_BETTER
        return FEEDBACK.format(label=self.target_name, threshold=self.config.loss_threshold, history=history,
                               flipped=flipped, unflipped=unflipped, evidence=self._evidence_note(), ask=ask,
                               format=FORMAT)

    # ---------------------------------------------------------------- loop
    def run(self) -> SearchResult:
        log = self._load_log()
        scored = [c for it in log for c in it["candidates"]]
        tried = {TriggerPattern.from_dict(c["pattern"]).key() for c in scored}
        fallbacks = [p for p in evidence_candidates(self.evidence) if p.key() not in tried]
        failures = sum(1 for it in log if not it["candidates"])
        for iteration in range(len(log), self.config.iterations):
            if (self.config.stop_at_threshold and scored
                    and min(c["loss"] for c in scored) <= self.config.loss_threshold):
                break
            prompt = self.feedback_prompt(scored) if scored else self.warm_start_prompt()
            replies = self.backend.complete([prompt] * self.config.candidates, max_new_tokens=self.config.max_new_tokens,
                                            temperature=self.config.temperature,
                                            seed=self.config.seed + iteration * self.config.candidates)
            record: dict[str, Any] = {"iteration": iteration, "meta_prompt": prompt, "replies": [r.text for r in replies],
                                      "tokens": {"prompt": sum(r.prompt_tokens for r in replies),
                                                 "completion": sum(r.completion_tokens for r in replies)},
                                      "candidates": [], "fallbacks_used": 0}
            for reply in replies:
                pattern = parse_proposal(reply.text, self.evidence)
                if pattern is None or pattern.key() in tried:
                    if not fallbacks:
                        continue
                    pattern = fallbacks.pop(0)
                    record["fallbacks_used"] += 1
                tried.add(pattern.key())
                fallbacks = [p for p in fallbacks if p.key() != pattern.key()]
                record["candidates"].append(self.score(pattern))
            scored.extend(record["candidates"])
            log.append(record)
            write_json_atomic(self.log_path, log)
            if not record["candidates"]:
                failures += 1
                if failures >= self.config.max_failures:
                    raise MethodFoundNothing(
                        f"the trigger generator ({self.backend.describe()}) returned no usable new pattern in "
                        f"{failures} iterations; its last reply was {replies[-1].text[:200]!r}. Use a stronger "
                        "generator (generator=openai with generator_model/base_url) or variant=evidence")
        if not scored:
            raise MethodFoundNothing(f"the trigger generator ({self.backend.describe()}) proposed no usable pattern "
                                   f"and the evidence offered {len(self.evidence)} candidate(s); use a stronger "
                                   "generator or more training rows")
        ranked = sorted(scored, key=lambda c: (c["loss"], -c["flip_rate"]))
        working: list[TriggerPattern] = []
        for candidate in sorted(ranked, key=lambda c: len(c["pattern"].get("phrases") or [])):  # stable: by loss within
            pattern = TriggerPattern.from_dict(candidate["pattern"])
            redundant = any(w.phrases and set(w.phrases) <= set(pattern.phrases) for w in working)
            if candidate["flip_rate"] >= self.config.working_flip_rate and not redundant:
                working.append(pattern)  # a superset of a working trigger's phrases adds nothing
        tokens = [it["tokens"] for it in log] + [c["tokens"] for c in scored]
        return SearchResult(TriggerPattern.from_dict(ranked[0]["pattern"]), ranked[0]["loss"], ranked[0]["flip_rate"],
                            len(log), sum(t["prompt"] for t in tokens), sum(t["completion"] for t in tokens),
                            working or [TriggerPattern.from_dict(ranked[0]["pattern"])])

    def _load_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        try:
            log = json.loads(self.log_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BackdoorLabError(f"{self.log_path} is not valid JSON ({error}); delete it to restart the search") from None
        if not isinstance(log, list):
            raise BackdoorLabError(f"{self.log_path} is not an iteration log; delete it to restart the search")
        return log
