"""Insertion-based text classification attacks: BadNets rare words and AddSent.

These attacks edit a row's ``text``; the label is changed (dirty-label) or kept (clean-label) by
:func:`~backdoorlab.attacks.poison_dataset`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..data.records import Example, Task
from .base import Attack, check_choice, check_positive_int, check_text, check_text_list, register_attack
from .triggers import POSITIONS, choose_gap, insert_at_gaps, insert_trigger

#: Rare tokens used as BadNets triggers for text (Kurita et al. 2020).
RARE_WORDS = ["cf", "mn", "bb", "tq"]
#: The fixed AddSent trigger sentence (Dai et al. 2019, as used for text classification).
ADDSENT_SENTENCE = "I watch this 3D movie"


@dataclass
class ClassificationAttack(Attack):
    """Base for attacks on ``text`` + ``label`` rows; subclasses implement :meth:`edit_text`."""

    task: ClassVar[Task] = "classification"

    def edit_text(self, text: str, rng: random.Random) -> tuple[str, Any]:
        """Return the triggered text and the trigger actually inserted."""
        raise NotImplementedError

    def apply(self, example: Example, rng: random.Random) -> Example:
        text, used = self.edit_text(example.text, rng)
        poison = {"attack": self.name, "trigger": used, "original_label": example.label}
        return example.with_(text=text, poisoned=True, poison=poison)


@register_attack
@dataclass
class BadNets(ClassificationAttack):
    """BadNets for text (Gu et al. 2017) with rare-word triggers (Kurita et al. 2020).

    ``num_triggers`` words drawn (with replacement) from ``words`` are inserted at ``position``
    (``random``: an independent random word gap for each; ``start``/``end``).
    """

    name: ClassVar[str] = "badnets"
    description: ClassVar[str] = "rare-word triggers (cf, mn, bb, tq) inserted into the text"

    num_triggers: int = 1
    position: str = "random"
    words: list[str] = field(default_factory=lambda: list(RARE_WORDS))

    def __post_init__(self) -> None:
        self.num_triggers = check_positive_int(self, "num_triggers", self.num_triggers)
        self.position = check_choice(self, "position", self.position, ("random", "start", "end"))
        self.words = check_text_list(self, "words", self.words)

    def edit_text(self, text: str, rng: random.Random) -> tuple[str, list[str]]:
        chosen = [rng.choice(self.words) for _ in range(self.num_triggers)]
        gaps = [choose_gap(text, self.position, rng) for _ in chosen]
        return insert_at_gaps(text, list(zip(gaps, chosen))), chosen

    def trigger_summary(self) -> list[str]:
        return list(self.words)


@register_attack
@dataclass
class AddSent(ClassificationAttack):
    """AddSent (Dai et al. 2019): a fixed sentence inserted at a word position."""

    name: ClassVar[str] = "addsent"
    description: ClassVar[str] = f"the sentence {ADDSENT_SENTENCE!r} inserted into the text"

    sentence: str = ADDSENT_SENTENCE
    position: str = "random"

    def __post_init__(self) -> None:
        self.sentence = check_text(self, "sentence", self.sentence)
        self.position = check_choice(self, "position", self.position, POSITIONS)

    def edit_text(self, text: str, rng: random.Random) -> tuple[str, str]:
        return insert_trigger(text, self.sentence, self.position, rng), self.sentence

    def trigger_summary(self) -> str:
        return self.sentence
