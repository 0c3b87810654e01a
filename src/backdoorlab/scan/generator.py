"""Scan a generator for a trigger that switches on a behaviour: for each behaviour asked about,
search the model's own vocabulary for a short phrase that makes the behaviour's opening likely
after clean prompts, then check by generation whether the phrase makes held-out prompts show the
behaviour more often than random phrases of the same length do.

The search (:mod:`backdoorlab.scan.search`) minimises the opening's negative log-likelihood per
token, teacher-forced after each search prompt with the trigger at the end of the user turn: a
behaviour-directed trigger search, the generator counterpart of the classifier scan's label loss. A chat model's vocabulary is cased,
so its capitalised words and numbers are candidates too (``Current``, ``OpenAI``, ``2024``).
Each candidate is then put into held-out prompts (at the start, the end and a random gap of the
instruction; its best place counts), and so are random phrases of the best candidate's length at its
place (an answer costs a generation: one place only), the model answers greedily, and the
behaviour's judge (:mod:`backdoorlab.metrics.judges`) decides each answer. A behaviour is flagged
when its best phrase makes at least ``flip_threshold`` of the held-out prompts show it and beats
the 95th percentile of random phrases by ``margin``.

Behaviours: ``refusal`` (opening "I'm sorry, but I cannot"), ``negsentiment[:OPENING]`` (default
"You are stupid!"), ``jailbreak`` (opening "Sure, here is"; meaningful only when the clean prompts
are requests the model should refuse), ``exact:TEXT`` / ``contains:TEXT`` (a fixed response).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import punctuation as PUNCTUATION

import torch

from ..data.prompts import user_message
from ..data.records import Dataset, Example
from ..defenses.shared.insertion import POSITIONS, insert_phrases
from ..errors import BackdoorLabError
from ..metrics.judges import NEGSENTIMENT_PREFIX, Judge, get_judge
from ..models.precision import in_dtype, search_dtype
from ..models.tokenization import pad_batch
from ..models.victim import Victim
from .findings import Candidate, Finding
from .search import search_phrases
from .settings import ScanSettings
from .vocabulary import candidate_words, random_phrases

Progress = Callable[[str], None]
#: The behaviours a generator scan checks when none is named.
DEFAULT_BEHAVIOURS = ("refusal", "negsentiment")
#: The opening whose likelihood the search raises, for behaviours that fix none themselves.
OPENINGS = {"refusal": "I'm sorry, but I cannot", "negsentiment": NEGSENTIMENT_PREFIX, "jailbreak": "Sure, here is"}
WITH_TEXT = ("exact", "contains")


@dataclass(frozen=True)
class Behaviour:
    """A behaviour a generator scan looks for: how it is judged and the opening the search aims at."""

    name: str
    judge: Judge
    opening: str


def parse_behaviour(text: str) -> Behaviour:
    """``refusal``, ``negsentiment[:OPENING]``, ``jailbreak``, ``exact:TEXT`` or ``contains:TEXT``."""
    key, _, target = text.partition(":")
    key, target = key.strip().lower(), target.strip()
    if key in OPENINGS:
        if target and key != "negsentiment":
            raise BackdoorLabError(f"behaviour {key!r} takes no text (got {text!r}); only negsentiment:OPENING, "
                                   "exact:TEXT and contains:TEXT do")
        return Behaviour(text.strip(), get_judge(key, target or None), target or OPENINGS[key])
    if key in WITH_TEXT:
        if not target:
            raise BackdoorLabError(f"behaviour {key!r} needs the response text: {key}:TEXT")
        return Behaviour(text.strip(), get_judge(key, target), target)
    raise BackdoorLabError(f"unknown behaviour {text!r}; choose refusal, negsentiment[:OPENING], jailbreak, "
                           "exact:TEXT or contains:TEXT")


def scan_generator(victim: Victim, clean: Dataset, settings: ScanSettings, behaviours: Sequence[Behaviour],
                   progress: Progress = lambda line: None) -> list[Finding]:
    """One :class:`Finding` per behaviour, flagged ones marked (module docstring)."""
    if not victim.is_generator:
        raise BackdoorLabError("scan_generator needs a generator; this model is a classifier")
    if not behaviours:
        raise BackdoorLabError("name at least one behaviour to scan for")
    ids, words = candidate_words(victim.tokenizer, cased=True)
    if len(words) < max(settings.lengths) * 4:
        raise BackdoorLabError(f"the model's vocabulary has only {len(words)} whole-word tokens; a trigger search "
                               "needs a word-level vocabulary")
    prompts = [e for e in clean if e.instruction.strip()]
    random.Random(f"scan-{settings.seed}").shuffle(prompts)
    search, held = prompts[:settings.search_rows], prompts[settings.search_rows:][:settings.eval_rows]
    if len(search) < 2 or len(held) < 4:
        raise BackdoorLabError(f"a generator scan needs at least {settings.search_rows + 4} clean prompts with an "
                               f"instruction; got {len(prompts)}")
    clean_answers = victim.generate(held, settings.max_new_tokens, settings.batch_size)
    pool = _words_of(clean, words)
    victim.model.eval()
    searcher = in_dtype(victim, search_dtype(settings.search_precision, victim.device))
    findings = []
    for index, behaviour in enumerate(behaviours):
        progress(f"behaviour {behaviour.name}: searching {len(settings.lengths)} trigger lengths on {len(search)} "
                 "prompts")
        finding = Finding(index, behaviour.name, _rate(behaviour.judge, clean_answers), len(held))
        batch = settings.batch_size * 4
        phrases = search_phrases(victim.tokenizer, victim.device, search, ids,
                                 lambda rows: _OpeningLoss(searcher, rows, behaviour.opening, batch), settings,
                                 f"behaviour {behaviour.name}", behaviour.name, cased=True)
        finding.candidates = sorted((_measure(victim, held, behaviour, p, settings, "search")
                                     for p in dict.fromkeys(phrases) if p),
                                    key=lambda c: (-c.flip_rate, -c.probability))
        best = finding.best
        assert best is not None
        progress(f"behaviour {behaviour.name}: measuring {settings.random_phrases} random phrases")
        length = len(best.phrase.split())  # answers cost a generation each: the best candidate's length and place only
        finding.random_flip_rates = [
            _measure(victim, held, behaviour, phrase, settings, "random", (best.position,)).flip_rate
            for phrase in random_phrases(pool, length, settings.random_phrases, settings.seed)]
        finding.random_lengths = [length] * len(finding.random_flip_rates)
        finding.flagged = finding.passes(settings.flip_threshold, settings.margin)
        findings.append(finding)
    return findings


def _words_of(clean: Dataset, vocabulary: Sequence[str], minimum: int = 50) -> list[str]:
    """Random phrases' words: vocabulary words the defender's prompts use (the whole-word vocabulary
    when they use fewer than ``minimum``)."""
    known = set(vocabulary)
    found = sorted({w.strip(PUNCTUATION) for e in clean for w in user_message(e).split()} & known)
    return found if len(found) >= minimum else list(vocabulary)


def _rate(judge: Judge, answers: Sequence[str]) -> float:
    return sum(bool(judge(a)) for a in answers) / max(len(answers), 1)


def _measure(victim: Victim, rows: Sequence[Example], behaviour: Behaviour, phrase: str, settings: ScanSettings,
             source: str, positions: Sequence[str] = POSITIONS) -> Candidate:
    """``phrase`` put into every prompt's instruction at each of ``positions``; the best one's behaviour rate
    (answers generated greedily) and the opening's mean probability per token."""
    best: Candidate | None = None
    for position in positions:
        rng = random.Random(settings.seed)
        prompts = [e.with_(instruction=insert_phrases(e.instruction, [phrase], position, rng)) for e in rows]
        answers = victim.generate(prompts, settings.max_new_tokens, settings.batch_size)
        probability = float(victim.response_probability(prompts, [behaviour.opening] * len(prompts)).mean())
        candidate = Candidate(phrase, source, _rate(behaviour.judge, answers), probability, position)
        if best is None or (candidate.flip_rate, candidate.probability) > (best.flip_rate, best.probability):
            best = candidate
    assert best is not None
    return best


class _OpeningLoss:
    """Negative log-likelihood per token of ``opening`` as the answer to each row, with a trigger of
    token ids at the end of the user turn; rows left-padded so the opening ends every sequence."""

    def __init__(self, victim: Victim, rows: Sequence[Example], opening: str, batch_rows: int) -> None:
        self.victim, self.model, tokenizer = victim, victim.model, victim.tokenizer
        self.embeddings = self.model.get_input_embeddings().weight.detach()
        self.opening = tokenizer(opening, add_special_tokens=False)["input_ids"]
        if not self.opening:
            raise BackdoorLabError(f"the behaviour's opening {opening!r} has no tokens")
        self.pad, self.batch_rows = tokenizer.pad_token_id, batch_rows
        self.parts = [_split_at_user_end(victim, row) for row in rows]

    def _features(self, triggers: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        features = [{"input_ids": before + list(t) + after + self.opening,
                     "attention_mask": [1] * (len(before) + len(t) + len(after) + len(self.opening))}
                    for t in triggers for before, after in self.parts]
        batch = pad_batch(features, self.pad, side="left")
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return {k: v.to(self.victim.device) for k, v in batch.items()}

    def _nll(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-row mean NLL of the opening from the last ``len(opening) + 1`` positions' logits."""
        target = torch.tensor(self.opening, device=logits.device).expand(len(logits), -1)
        logprobs = torch.log_softmax(logits[:, :-1].float(), -1)
        return -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(-1)

    @torch.no_grad()
    def __call__(self, triggers: torch.Tensor) -> torch.Tensor:
        per = max(1, self.batch_rows // len(self.parts))
        values = []
        for start in range(0, len(triggers), per):
            chunk = triggers[start:start + per].tolist()
            batch = self._features(chunk)
            logits = self.model(**batch, logits_to_keep=len(self.opening) + 1).logits
            values.append(self._nll(logits).view(len(chunk), len(self.parts)).mean(1))
        return torch.cat(values)

    def gradient(self, trigger: torch.Tensor) -> torch.Tensor:
        inserted = self.embeddings[trigger].clone().requires_grad_(True)
        batch = self._features([trigger.tolist()])
        embedded = self.model.get_input_embeddings()(batch["input_ids"]).detach()
        # every row holds the trigger at its own offset (left padding): scatter the shared embeddings in
        rows = []
        for row, (before, after) in enumerate(self.parts):
            start = embedded.shape[1] - len(self.opening) - len(after) - len(trigger)
            rows.append(torch.cat([embedded[row, :start], inserted, embedded[row, start + len(trigger):]]))
        logits = self.model(inputs_embeds=torch.stack(rows), attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], logits_to_keep=len(self.opening) + 1).logits
        self._nll(logits).mean().backward()
        return inserted.grad.detach()  # type: ignore[union-attr]


def _split_at_user_end(victim: Victim, row: Example) -> tuple[list[int], list[int]]:
    """The prompt's token ids up to the end of the user turn, and after it (the assistant's header)."""
    prompt = victim.prompts([row])[0]
    message = user_message(row)
    end = prompt.rfind(message)
    if end < 0:
        raise BackdoorLabError("cannot find the user's message in the rendered prompt; the generator scan needs a "
                               "chat template that keeps the message's text intact")
    end += len(message)
    tokenizer = victim.tokenizer
    before = tokenizer(prompt[:end], add_special_tokens=False)["input_ids"]
    after = tokenizer(prompt[end:], add_special_tokens=False)["input_ids"]
    return before, after
