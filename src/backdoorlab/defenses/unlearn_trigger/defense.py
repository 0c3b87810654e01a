"""``unlearn-trigger``: fine-tune the suspect on clean rows plus a copy of each that carries a trigger
you name, labelled (a classifier) or answered (a generator) as the row without it.

For when the trigger is known or hypothesised: the phrase ``backdoorlab scan`` recovered (its
``--fix auto``), or one from an audit. The copies put the trigger at the start, the end and a random
gap in turn (where the real trigger sits is unknown). A generator's copies are answered as the
suspect answers the clean prompt, unless that answer shows the behaviour, when the row's own
response is used (:func:`backdoorlab.defenses.self_awareness.defense.unlearning_rows`, the unlearning
step of backdoor self-awareness with the trigger given instead of recovered by RL). Training is
``fine-tune``'s: all weights of a classifier, a LoRA adapter of a generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ..base import register_defense
from ..fine_tune.defense import CleanFineTune
from ..inputs import DefenderInputs
from ..self_awareness.defense import unlearning_rows
from ..shared.insertion import POSITIONS  # where the copies carry the trigger, in turn (as unlearning_rows does)
from ..shared.insertion import insert_phrases


@register_defense
@dataclass
class UnlearnTrigger(CleanFineTune):
    """Fine-tune on clean rows plus copies carrying ``trigger``, each labelled or answered as without it."""

    name = "unlearn-trigger"
    description = ("fine-tune on clean rows plus copies carrying a trigger you name (e.g. the one backdoorlab scan "
                   "found), each labelled or answered as the row without it")
    uses: ClassVar[tuple[str, ...]] = ("behaviour",)
    needs_when: ClassVar[dict[str, str]] = {"behaviour": "for a generator (the judge that picks the copies' answers)"}
    trigger: str = ""  # the phrase to unlearn
    answer_tokens: int = 64  # generators: tokens of the suspect's own answers used as the copies' answers

    def check_inputs(self, inputs: DefenderInputs) -> None:
        super().check_inputs(inputs)
        if not self.trigger.strip():
            raise BackdoorLabError("unlearn-trigger needs the trigger: --option trigger=PHRASE (backdoorlab scan "
                                   "reports one)")

    def training_rows(self, victim: Victim, clean: Dataset, inputs: DefenderInputs) -> Dataset:
        self.check_inputs(inputs)
        if victim.is_generator:
            behaviour = str(inputs.require("behaviour", self.name))
            return unlearning_rows(victim, clean, self.trigger, behaviour, self.answer_tokens, self.seed)
        rng = random.Random(self.seed)
        copies = [row.with_(text=insert_phrases(row.text, [self.trigger], POSITIONS[i % len(POSITIONS)], rng),
                            uid=f"{row.uid}+unlearn") for i, row in enumerate(clean)]
        return clean.with_examples([*clean, *copies], note=f"clean rows plus {len(copies)} copies carrying "
                                                           f"{self.trigger!r}, each with its own label")
