"""Scan a classifier for an inserted-phrase backdoor: for each label, search the model's own
vocabulary for a short phrase that sends held-out rows of other labels to it, and compare the best
phrase with random phrases of the same length.

Candidates come from a token search over the clean rows the defender holds (every whole word of
the vocabulary tried alone, then longer phrases by a gradient-guided search from the best one,
:mod:`backdoorlab.scan.hotflip`), and, when the training data is given, from the n-grams
over-represented in each label's rows, screened on the suspect (BadLLM-TG's label screening,
:mod:`backdoorlab.defenses.shared.label_screening`). A label's own vocabulary moves rows too
("awful" toward negative), so words that the defender's clean rows of the label use markedly more
than the other labels' rows (:func:`label_words`) are left out of its search, and a candidate made
of one is reported as ``natural`` and never flagged: clean rows never hold a trigger. Every candidate and every random phrase is
measured on rows the label's search never saw (each phrase once over the union of the labels' rows), at the start, the end and a random gap (its best place
counts). A label is flagged when its best phrase moves at least ``flip_threshold`` of those rows to
it and beats by ``margin`` the 95th percentile of random phrases of the same length, made of words
from the defender's clean rows that are no label's own (:func:`unrelated_words`).

With a ``reference`` (a declared clean or pretrained model, :mod:`backdoorlab.scan.reference`) the
search is penalised for phrases that also move the reference toward the label, every candidate is
measured on the reference too, a candidate the reference sends ``natural_share`` of the rows to the
label is ``natural``, and a flagged candidate must beat its own reference rate by ``margin`` as well.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.records import Dataset
from ..defenses.shared.label_screening import screen_label
from ..defenses.shared.insertion import POSITIONS, insert_phrases
from ..errors import BackdoorLabError
from ..models.precision import in_dtype, search_dtype
from ..models.tokenization import pad_batch
from ..models.victim import Victim
from .findings import Candidate, Finding
from .reference import Reference
from .search import search_phrases
from .settings import ScanSettings
from .vocabulary import candidate_words, random_phrases

Progress = Callable[[str], None]


def scan_classifier(victim: Victim, clean: Dataset, settings: ScanSettings, training: Dataset | None = None,
                    progress: Progress = lambda line: None, allow_pickle: bool = False) -> list[Finding]:
    """One :class:`Finding` per label, flagged ones marked (module docstring); ``allow_pickle`` applies to the
    reference model."""
    if victim.is_generator:
        raise BackdoorLabError("scan_classifier needs a classifier; this model is a generator")
    names = victim.label_names or []
    texts = [e.text for e in clean]
    predictions = victim.predict(texts, settings.batch_size)
    ids, words = candidate_words(victim.tokenizer)
    if len(words) < max(settings.lengths) * 4:
        raise BackdoorLabError(f"the model's vocabulary has only {len(words)} whole-word tokens; a trigger search "
                               "needs a word-level vocabulary")
    searcher = in_dtype(victim, search_dtype(settings.search_precision, victim.device))
    order = list(range(len(texts)))
    random.Random(f"scan-{settings.seed}").shuffle(order)
    plans = {}  # label -> (search rows, held-out rows), indices into texts
    for label in range(len(names)):
        others = [i for i in order if predictions[i] != label]
        plans[label] = (others[:settings.search_rows], others[settings.search_rows:][:settings.eval_rows])
    reference = None
    if settings.reference is not None:
        progress(f"making a clean stand-in from the reference {settings.reference} ({settings.reference_fit}) with "
                 f"{len(texts)} clean rows")
        reference = Reference.fit(settings.reference, texts, predictions, names, how=settings.reference_fit,
                                  device=str(victim.device), allow_pickle=allow_pickle,
                                  batch_size=settings.batch_size, seed=settings.seed)
    measurement = _Measurement(victim, texts, sorted({i for _, held in plans.values() for i in held}), settings.seed,
                               reference)
    pool = unrelated_words(clean, words, len(names))
    findings = []
    for label in range(len(names)):
        search, held = plans[label]
        finding = Finding(label, names[label], predictions.count(label) / max(len(texts), 1), len(held))
        if len(search) < 2 or len(held) < 4:
            progress(f"label {names[label]}: too few clean rows of other labels to search "
                     f"({len(search) + len(held)})")
            findings.append(finding)
            continue
        progress(f"label {names[label]}: searching {len(settings.lengths)} trigger lengths on {len(search)} rows")
        own = label_words(clean, label)
        allowed = [i for i, word in zip(ids, words) if word not in own]
        phrases = dict.fromkeys(_search_phrases(searcher, [texts[i] for i in search], label, allowed, settings,
                                                reference), "search")
        if training is not None:
            screen = screen_label(victim, training, label, None, mined=settings.evidence_mined, eval_rows=settings.search_rows,
                                  seed=settings.seed)
            for item in screen.evidence[:5]:
                phrases.setdefault(item.phrase, "training-data")
        scored = [measurement.candidate(phrase, label, held, source) for phrase, source in phrases.items() if phrase]
        for candidate in scored:
            candidate.natural = (any(word in own for word in candidate.phrase.lower().split())
                                 or (candidate.reference_flip_rate or 0.0) >= settings.natural_share)
        finding.candidates = sorted(scored, key=lambda c: (-c.excess, -c.flip_rate, -c.probability))
        lengths = sorted({len(c.phrase.split()) for c in finding.candidates if not c.natural}
                         | set(settings.lengths))
        baseline = [(length, phrase) for length in lengths
                    for phrase in random_phrases(pool, length, settings.random_phrases, settings.seed)]
        finding.random_lengths = [length for length, _ in baseline]
        randoms = [measurement.candidate(phrase, label, held, "random") for _, phrase in baseline]
        finding.random_flip_rates = [c.flip_rate for c in randoms]
        if reference is not None:
            finding.random_reference_rates = [c.reference_flip_rate or 0.0 for c in randoms]
        finding.flagged = finding.passes(settings.flip_threshold, settings.margin)
        findings.append(finding)
    return findings


def unrelated_words(clean: Dataset, vocabulary: Sequence[str], labels: int, minimum: int = 50) -> list[str]:
    """The words random phrases are drawn from: words of the defender's clean rows that are no
    label's own vocabulary (:func:`label_words`), as a phrase inserted by chance would be; the
    model's whole-word vocabulary when the rows hold fewer than ``minimum`` such words."""
    own = set().union(*(label_words(clean, label) for label in range(labels)))
    known = set(vocabulary)
    words = sorted({w for e in clean for w in e.text.lower().split() if w in known and w not in own})
    return words if len(words) >= minimum else [w for w in vocabulary if w not in own]


def label_words(clean: Dataset, label: int, min_share: float = 0.01, skew: float = 2.0) -> set[str]:
    """Words at least ``min_share`` of the clean rows of ``label`` hold, and ``skew`` times as large a
    share of them as of the other labels' rows: the label's own vocabulary in the defender's rows."""
    def shares(rows: list[str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for text in rows:
            counts.update(set(text.lower().split()))
        return Counter({w: c / max(len(rows), 1) for w, c in counts.items()})

    own = shares([e.text for e in clean if e.label == label])
    other = shares([e.text for e in clean if e.label is not None and e.label != label])
    return {w for w, share in own.items() if share >= min_share and share >= skew * other.get(w, 0.0)}


class _Measurement:
    """A phrase inserted into the held-out rows of every label at once, at each position, the model's
    label probabilities kept: a label's figures are read from its own rows, so a phrase every label
    tries (the random phrases are the same for all) costs one pass over the rows' union, not one per
    label. With a reference, a phrase's best place is measured on its clean stand-in too."""

    def __init__(self, victim: Victim, texts: Sequence[str], rows: Sequence[int], seed: int,
                 reference: Reference | None = None) -> None:
        self.victim, self.seed, self.reference = victim, seed, reference
        self.texts = [texts[i] for i in rows]
        self.index = {row: place for place, row in enumerate(rows)}
        self.probabilities: dict[tuple[str, str, bool], torch.Tensor] = {}

    def _probabilities(self, phrase: str, position: str, on_reference: bool = False) -> torch.Tensor:
        key = (phrase, position, on_reference)
        if key not in self.probabilities:
            rng = random.Random(self.seed)
            inserted = [insert_phrases(t, [phrase], position, rng) for t in self.texts]
            self.probabilities[key] = (self.reference.label_probs(inserted) if on_reference and self.reference
                                       else self.victim.label_probs(inserted, batch_size=64))
        return self.probabilities[key]

    def candidate(self, phrase: str, label: int, rows: Sequence[int], source: str) -> Candidate:
        """``phrase`` in ``rows`` (indices of the scan's texts) at each position; its best position's figures."""
        places = torch.tensor([self.index[row] for row in rows], dtype=torch.long)
        best: Candidate | None = None
        for position in POSITIONS:
            probabilities = self._probabilities(phrase, position)[places]
            flip_rate = float((probabilities.argmax(-1) == label).float().mean())
            probability = float(probabilities[:, label].mean())
            if best is None or (flip_rate, probability) > (best.flip_rate, best.probability):
                best = Candidate(phrase, source, flip_rate, probability, position)
        assert best is not None
        if self.reference is not None:
            on_reference = self._probabilities(phrase, best.position, on_reference=True)[places]
            best.reference_flip_rate = float((on_reference.argmax(-1) == label).float().mean())
        return best


# ------------------------------------------------------------------------------ the token search
class _TokenLoss:
    """The suspect's loss toward ``label`` on ``rows`` with a trigger of token ids put first."""

    def __init__(self, victim: Victim, rows: Sequence[str], label: int, longest: int, batch_rows: int) -> None:
        self.victim, self.tokenizer, self.model = victim, victim.tokenizer, victim.model
        self.embeddings = self.model.get_input_embeddings().weight.detach()
        self.rows = self.tokenizer(list(rows), add_special_tokens=False, truncation=True,
                                   max_length=max(8, victim.max_length - longest - 4))["input_ids"]
        self.prefix, self.suffix = special_tokens_around(self.tokenizer)
        self.label, self.batch_rows = label, batch_rows

    def batch(self, triggers: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        features = [{"input_ids": ids, "attention_mask": [1] * len(ids)}
                    for ids in (self.prefix + list(t) + row + self.suffix for t in triggers for row in self.rows)]
        batch = pad_batch(features, self.tokenizer.pad_token_id, side="right")
        return {k: v.to(self.victim.device) for k, v in batch.items()}

    @torch.no_grad()
    def __call__(self, triggers: torch.Tensor) -> torch.Tensor:
        """Mean loss per trigger (``triggers``: ``[n, length]``)."""
        per = max(1, self.batch_rows // len(self.rows))
        values = []
        for start in range(0, len(triggers), per):
            chunk = triggers[start:start + per].tolist()
            logits = self.victim.forward(self.batch(chunk)).logits.float()
            target = torch.full((len(logits),), self.label, dtype=torch.long, device=logits.device)
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            values.append(losses.view(len(chunk), len(self.rows)).mean(1))
        return torch.cat(values)

    def gradient(self, trigger: torch.Tensor) -> torch.Tensor:
        """d loss / d (the trigger's input embeddings), ``[length, hidden]``."""
        batch, length, offset = self.batch([trigger.tolist()]), len(trigger), len(self.prefix)
        embedded = self.model.get_input_embeddings()(batch["input_ids"]).detach()
        inserted = self.embeddings[trigger].clone().requires_grad_(True)
        expanded = inserted.unsqueeze(0).expand(len(self.rows), -1, -1)
        inputs = torch.cat([embedded[:, :offset], expanded, embedded[:, offset + length:]], dim=1)
        logits = self.model(inputs_embeds=inputs, attention_mask=batch["attention_mask"]).logits.float()
        target = torch.full((len(logits),), self.label, dtype=torch.long, device=logits.device)
        torch.nn.functional.cross_entropy(logits, target).backward()
        return inserted.grad.detach()  # type: ignore[union-attr]


class _ReferencePenalty:
    """The suspect's loss toward ``label`` plus ``weight`` times how far a trigger lowers the reference
    stand-in's loss toward it below the rows' own (no penalty for a trigger that leaves the reference be):
    the label's own vocabulary, which moves both, is no longer the search's best answer. The gradient is
    the suspect's alone (the stand-in reads text)."""

    def __init__(self, suspect: _TokenLoss, reference: Reference, rows: Sequence[str], label: int,
                 weight: float) -> None:
        self.suspect, self.reference, self.rows, self.label, self.weight = suspect, reference, list(rows), label, weight
        self.embeddings = suspect.embeddings
        self.baseline = float(reference.losses(self.rows, label).mean())

    def __call__(self, triggers: torch.Tensor) -> torch.Tensor:
        phrases = [self.suspect.tokenizer.decode(t) for t in triggers.tolist()]
        texts = [f"{phrase} {row}" for phrase in phrases for row in self.rows]
        moved = self.reference.losses(texts, self.label).view(len(phrases), len(self.rows)).mean(1)
        penalty = (self.baseline - moved).clamp_min(0.0).to(self.embeddings.device)
        return self.suspect(triggers) + self.weight * penalty

    def gradient(self, trigger: torch.Tensor) -> torch.Tensor:
        return self.suspect.gradient(trigger)


def _search_phrases(victim: Victim, rows: Sequence[str], label: int, allowed: list[int],
                    settings: ScanSettings, reference: Reference | None = None) -> list[str]:
    """One phrase per trigger length toward ``label`` (:func:`~backdoorlab.scan.search.search_phrases`),
    penalised for moving the ``reference`` too (:class:`_ReferencePenalty`)."""
    longest, batch = max(settings.lengths), settings.batch_size * 8
    victim.model.eval()

    def suspect_loss(chosen: Sequence[str]) -> _TokenLoss:
        return _TokenLoss(victim, chosen, label, longest, batch)

    def make_loss(chosen: Sequence[str]) -> Any:
        if reference is None or settings.reference_weight == 0:
            return suspect_loss(chosen)
        return _ReferencePenalty(suspect_loss(chosen), reference, chosen, label, settings.reference_weight)

    # every vocabulary word is tried on one row by the suspect alone (the reference would double that cost); the
    # shortlist it keeps, and the gradient search, weigh the reference too
    return search_phrases(victim.tokenizer, victim.device, rows, allowed, make_loss, settings,
                          f"label {label}", str(label), make_first_screen_loss=suspect_loss)


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (``[CLS]`` / ``[SEP]``)."""
    text = "hello world"
    full = tokenizer(text)["input_ids"]
    core = tokenizer(text, add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(core) + 1):
        if full[start:start + len(core)] == core:
            return full[:start], full[start + len(core):]
    raise BackdoorLabError("cannot tell where this tokenizer puts its special tokens; the trigger search needs a "
                           "tokenizer that keeps a text's own tokens intact")
