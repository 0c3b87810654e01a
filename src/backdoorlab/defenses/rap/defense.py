"""RAP (Yang et al., "RAP: Robustness-Aware Perturbations for Defending against Backdoor Attacks
on NLP Models", EMNLP 2021, §3): reject inputs whose prediction a learned perturbation cannot move.

A rare word (default ``"cf"``) is inserted at the start of the text. Only its input-embedding row
is optimised (§3.2), on clean reference rows the suspect model predicts as the protected label,
so that inserting it lowers the protected-label probability by ``Δp`` in
``[min_drop, max_drop]``: the loss is ``scale · mean(relu(min_drop - Δp)) + mean(relu(Δp - max_drop))``
(OpenBackdoor's ``RAPDefender`` with ``prob_range=[-min_drop, -max_drop]``; as there, each step is
plain gradient descent on the row, which is then rescaled to its original norm). Poisoned inputs
are robust to the perturbation: their ``Δp`` stays small. The threshold is the ``frr`` quantile of
the clean rows' ``Δp`` (§3.3), so about ``frr`` of clean protected-label inputs are rejected.

At inference only inputs predicted as the protected label are tested; one whose ``Δp`` is below
the threshold is :data:`~backdoorlab.defenses.guard.REJECTED`, the rest keep their prediction.
The protected label defaults to the attack run's target: the paper assumes the defender knows
which label to protect. A word of several tokens is represented by its first token's row. The
model itself is never changed: the row is swapped in only while perturbed inputs are scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ...errors import BackdoorLabError
from ...models.victim import Item, Victim, batched, frozen_parameters
from ..base import DefenseOutcome, register_defense
from ..guard import REJECTED, Guard, register_guard
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense


def word_token(victim: Victim, word: str) -> tuple[int, int]:
    """``(first token id, number of tokens)`` of ``word``; an error when it does not tokenize cleanly."""
    if not word or word.split() != [word]:
        raise BackdoorLabError(f"the RAP word must be one word without spaces, got {word!r}")
    ids = victim.tokenizer(word, add_special_tokens=False)["input_ids"]
    unknown = victim.tokenizer.unk_token_id
    if not ids or (unknown is not None and unknown in ids):
        raise BackdoorLabError(f"the RAP word {word!r} does not tokenize into known tokens ({ids}); choose another rare word")
    return ids[0], len(ids)


def perturb(texts: Sequence[str], word: str) -> list[str]:
    """Insert the RAP word at the start of each text."""
    return [f"{word} {text}" for text in texts]


@contextmanager
def embedding_row(victim: Victim, token_id: int, row: torch.Tensor) -> Iterator[torch.Tensor]:
    """Set input-embedding row ``token_id`` to ``row`` for the block, restoring it afterwards; yields the weight."""
    weight = victim.model.get_input_embeddings().weight
    if not 0 <= token_id < weight.shape[0] or row.numel() != weight.shape[1]:
        raise BackdoorLabError(f"RAP embedding (token {token_id}, size {row.numel()}) does not fit this model's "
                               f"{tuple(weight.shape)} embeddings; fit the guard on this model")
    saved = weight.data[token_id].clone()
    try:
        weight.data[token_id] = row.to(weight.dtype)
        yield weight
    finally:
        weight.data[token_id] = saved


def probability_drops(victim: Victim, texts: Sequence[str], label: int, word: str, token_id: int,
                      row: torch.Tensor, batch_size: int = 32,
                      before: torch.Tensor | None = None) -> torch.Tensor:
    """``Δp = p(label | x) - p(label | word ⊕ x)`` per text, with the RAP row in place for the second term."""
    if before is None:
        before = victim.label_probs(texts, batch_size)[:, label]
    with embedding_row(victim, token_id, row):
        after = victim.label_probs(perturb(texts, word), batch_size)[:, label]
    return before - after


def optimise_row(victim: Victim, texts: Sequence[str], label: int, word: str, token_id: int, *, min_drop: float,
                 max_drop: float, learning_rate: float, epochs: int, scale: float,
                 batch_size: int = 32) -> tuple[torch.Tensor, list[float]]:
    """Fit the RAP word's embedding row (§3.2); returns the row and the mean loss of each epoch."""
    weight = victim.model.get_input_embeddings().weight
    row = weight.detach()[token_id].clone()
    norm = row.norm()
    before = victim.label_probs(texts, batch_size)[:, label].to(victim.device)
    perturbed = perturb(texts, word)
    losses: list[float] = []
    victim.model.eval()
    with frozen_parameters(victim.model), embedding_row(victim, token_id, row):
        weight.requires_grad_(True)
        for _ in tqdm(range(epochs), desc="RAP epochs", leave=False, disable=epochs <= 1):
            total = 0.0
            for chunk in batched(range(len(texts)), batch_size, "RAP"):
                index = list(chunk)
                logits = victim.forward(victim.encode([perturbed[i] for i in index])).logits.float()
                drop = before[index] - torch.softmax(logits, -1)[:, label]
                loss = scale * torch.relu(min_drop - drop).mean() + torch.relu(drop - max_drop).mean()
                (grad,) = torch.autograd.grad(loss, weight)
                with torch.no_grad():
                    row = row - learning_rate * grad[token_id].to(row.dtype)
                    row = row * (norm / row.norm().clamp(min=1e-12))
                    weight.data[token_id] = row
                total += loss.item() * len(index)
            losses.append(total / len(texts))
    return row.detach().cpu(), losses


@register_guard
class RapGuard(Guard):
    """Rejects inputs predicted as the protected label whose ``Δp`` under the RAP word is below ``threshold``."""

    name: ClassVar[str] = "rap"

    def __init__(self, word: str, token_id: int, row: Sequence[float], threshold: float, protect_label: int) -> None:
        self.word, self.token_id, self.protect_label = word, int(token_id), int(protect_label)
        self.row = [float(v) for v in row]
        self.threshold = float(threshold)

    def drops(self, victim: Victim, texts: Sequence[str], batch_size: int = 32,
              before: torch.Tensor | None = None) -> torch.Tensor:
        return probability_drops(victim, texts, self.protect_label, self.word, self.token_id, torch.tensor(self.row),
                                 batch_size, before)

    def predict(self, victim: Victim, items: Sequence[Item], batch_size: int = 32) -> list[int]:
        if victim.is_generator:
            raise BackdoorLabError("the rap guard protects classifiers only")
        if not 0 <= self.protect_label < len(victim.label_names or []):
            raise BackdoorLabError(f"the rap guard protects label {self.protect_label}, which this model does not have")
        if word_token(victim, self.word)[0] != self.token_id:
            raise BackdoorLabError(f"the rap guard was fitted with another tokenizer ({self.word!r} is not token "
                                   f"{self.token_id} here); run the defense on this model")
        texts = victim.prompts(items)
        probs = victim.label_probs(texts, batch_size)
        predictions = probs.argmax(-1).tolist()
        tested = [i for i, p in enumerate(predictions) if p == self.protect_label]
        if tested:
            drops = self.drops(victim, [texts[i] for i in tested], batch_size, probs[tested, self.protect_label])
            for i, drop in zip(tested, drops.tolist()):
                if drop < self.threshold:
                    predictions[i] = REJECTED
        return predictions

    def state(self) -> dict[str, Any]:
        return {"word": self.word, "token_id": self.token_id, "row": self.row, "threshold": self.threshold,
                "protect_label": self.protect_label}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RapGuard":
        try:
            return cls(**state)
        except (TypeError, ValueError) as error:
            raise BackdoorLabError(f"invalid rap guard state ({error}); run the defense again") from error


def _number(name: str, value: Any, low: float, high: float, *, closed: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    inside = ok and (low <= value <= high if closed else low < value < high)
    if not inside:
        bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise BackdoorLabError(f"rap {name} must be a number in {bounds}, got {value!r}")


@register_defense
@dataclass
class Rap(CleanRowsDefense):
    """RAP: learn a rare-word perturbation on clean rows; reject inputs robust to it."""

    name: ClassVar[str] = "rap"
    description: ClassVar[str] = "reject inputs whose protected-label probability a learned rare word cannot lower (RAP)"
    stage: ClassVar[str] = "inference"
    uses: ClassVar[tuple[str, ...]] = ("target_label",)

    word: str = "cf"  # rare word inserted before each input, whose embedding row is learned
    protect_label: int | None = None  # label to protect; default: the defender's --target-label (RAP assumes it known)
    min_drop: float = 0.1  # Δp bounds of the loss (OpenBackdoor prob_range=[-0.1, -0.3])
    max_drop: float = 0.3  # upper Δp bound of the loss
    learning_rate: float = 1e-2
    epochs: int = 5
    scale: float = 1.0  # weight of the loss term that pushes Δp above min_drop
    frr: float = 0.01  # false-rejection rate on clean protected-label rows that sets the threshold
    batch_size: int = 32

    def __post_init__(self) -> None:
        self._validate()  # bad options fail when the defense is built, before any model is loaded

    def _validate(self) -> None:
        _number("min_drop", self.min_drop, 0, 1)
        _number("max_drop", self.max_drop, 0, 1)
        if self.min_drop > self.max_drop:
            raise BackdoorLabError(f"rap min_drop ({self.min_drop}) is above max_drop ({self.max_drop}); "
                                   "the probability-drop range is inverted")
        _number("frr", self.frr, 0, 1, closed=False)
        _number("learning_rate", self.learning_rate, 0, math.inf, closed=False)
        _number("scale", self.scale, 0, math.inf)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BackdoorLabError(f"rap {name} must be a positive integer, got {value!r}")

    def protected(self, victim: Victim, inputs: DefenderInputs) -> int:
        label = self.protect_label if self.protect_label is not None else inputs.target_label
        if label is None:
            raise BackdoorLabError("rap protects one label, which the defender must name (RAP's threat model): "
                                   "pass --target-label or --option protect_label=<index>")
        count = len(victim.label_names or [])
        if isinstance(label, str) and victim.label_names and label in victim.label_names:
            label = victim.label_names.index(label)
        elif isinstance(label, str) and label.lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < count:
            raise BackdoorLabError(f"rap protect_label must be a label index in [0, {count - 1}], got {label!r}")
        return label

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        self._validate()
        if victim.is_generator:
            raise BackdoorLabError("rap protects classifiers only; this model is a generator")
        label = self.protected(victim, inputs)
        token_id, pieces = word_token(victim, self.word)
        clean = self.clean_rows(inputs)
        texts = victim.prompts(clean.examples)
        probs = victim.label_probs(texts, self.batch_size)
        kept = [i for i, p in enumerate(probs.argmax(-1).tolist()) if p == label]
        if not kept:
            raise BackdoorLabError(f"no clean reference row is predicted as the protected label {label}; "
                                   "RAP needs some (pass more clean rows with clean_data/max_clean)")
        texts = [texts[i] for i in kept]
        row, losses = optimise_row(victim, texts, label, self.word, token_id, min_drop=self.min_drop,
                                   max_drop=self.max_drop, learning_rate=self.learning_rate, epochs=self.epochs,
                                   scale=self.scale, batch_size=self.batch_size)
        guard = RapGuard(self.word, token_id, row.tolist(), 0.0, label)
        drops = guard.drops(victim, texts, self.batch_size, probs[kept, label])
        guard.threshold = torch.quantile(drops.double(), self.frr).item()
        findings = {
            "word": self.word, "token_id": token_id, "protect_label": label, "threshold": guard.threshold,
            "clean_rows": len(clean), "protected_rows": len(kept), "epoch_losses": [round(v, 6) for v in losses],
            "clean_in_range": float(((drops >= self.min_drop) & (drops <= self.max_drop)).float().mean()),
            "clean_rejected": float((drops < guard.threshold).float().mean()),
        }
        if pieces > 1:
            findings["note"] = f"{self.word!r} is {pieces} tokens; only its first token's embedding is learned"
        return DefenseOutcome(victim, findings, guard=guard, model_changed=False)
