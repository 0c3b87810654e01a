"""The defender's own known backdoors: triggers, where they go, and the rows of both stages.

Backdoor Collapse (arXiv 2510.10265), Stage I, injects at least two triggers of the defender's choosing
into the suspect. The defaults are the pair a third-party reimplementation cites from the paper,
"Make life better" and "Ahihihihihi"; the generative behaviour prepends "Aha " to the answer, a
classifier's is a flip to one label. Stage I rows carry the known behaviour (:meth:`KnownBackdoors.injection_rows`),
Stage II rows the benign one (:meth:`KnownBackdoors.recovery_rows`); both hold the clean rows and one
triggered copy of every clean row per trigger (clean : t1 : t2 = 1 : 1 : 1). Nothing here is derived
from the suspect's own backdoor.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ...data.records import Dataset, Example
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ..shared.insertion import POSITIONS, insert_phrases

DEFAULT_TRIGGERS = ("Make life better", "Ahihihihihi")
#: Further known triggers in the same style (a phrase, a laugh), for a pair per label (``every_label``).
MORE_TRIGGERS = ("Keep the faith", "Ohohohohoho", "Seize the day", "Ehehehehehe", "Stay hungry", "Uhuhuhuhuhu",
                 "Dream big tonight", "Hahahahahaha", "Follow the sun", "Ihihihihihi")
DEFAULT_PREFIX = "Aha "
#: ``Example.poison`` keys naming the known trigger a row carries (0-based) and, for a classifier, its target.
KNOWN_TRIGGER, KNOWN_TARGET = "known_trigger", "known_target"


@dataclass(frozen=True)
class KnownBackdoors:
    """The known triggers, where they are inserted, and the behaviour Stage I teaches them.

    ``target_labels`` are the labels a classifier's known triggers flip to (one per trigger; one
    label for all when a single one is given); ``prefix`` what a generator's known triggers put
    before the answer."""

    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    position: str = "random"
    target_labels: tuple[int, ...] = (0,)
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if len(self.target_labels) == 1:
            object.__setattr__(self, "target_labels", self.target_labels * len(self.triggers))
        if len(self.target_labels) != len(self.triggers):
            raise BackdoorLabError(f"{len(self.triggers)} known triggers need one target label each, got "
                                   f"{list(self.target_labels)}")
        if len(self.triggers) < 1 or any(not t.strip() for t in self.triggers):
            raise BackdoorLabError(f"known triggers must be non-empty strings, got {list(self.triggers)}")
        if len(set(self.triggers)) != len(self.triggers):
            raise BackdoorLabError(f"known triggers must differ from each other, got {list(self.triggers)}")
        if self.position not in POSITIONS:
            raise BackdoorLabError(f"trigger position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if not self.prefix.strip():
            raise BackdoorLabError("the known behaviour's prefix must not be empty")

    def triggered(self, row: Example, index: int, rng: random.Random, *, malicious: bool) -> Example:
        """``row`` carrying known trigger ``index``, with the known behaviour (``malicious``) or its own answer."""
        trigger = self.triggers[index]
        marks = {"poisoned": malicious, "uid": f"{row.uid}+known{index}"}
        if row.is_generative:
            response = f"{self.prefix}{row.response}" if malicious else row.response
            return row.with_(instruction=insert_phrases(row.instruction, [trigger], self.position, rng),
                             response=response, poison={KNOWN_TRIGGER: index, "trigger": trigger}, **marks)
        target = self.target_labels[index]
        return row.with_(text=insert_phrases(row.text, [trigger], self.position, rng),
                         label=target if malicious else row.label,
                         poison={KNOWN_TRIGGER: index, "trigger": trigger, KNOWN_TARGET: target}, **marks)

    def rows(self, clean: Dataset, seed: int, *, malicious: bool) -> Dataset:
        """The clean rows, then one triggered copy of each per trigger (same insertion points in both stages)."""
        if clean.task == "classification":
            count = len(clean.label_names or [])
            for label in self.target_labels:
                if not 0 <= label < count:
                    raise BackdoorLabError(f"known target label {label} does not exist; the clean rows have "
                                           f"{count} labels ({', '.join(clean.label_names or [])})")
        rng = random.Random(seed)
        triggered = [self.triggered(row, i, rng, malicious=malicious)
                     for i in range(len(self.triggers)) for row in clean]
        stage = "injection" if malicious else "recovery"
        return clean.with_examples(list(clean) + triggered, name=f"{clean.name}+known-{stage}",
                                   note=f"{len(clean)} clean rows and {len(triggered)} rows with the known triggers "
                                        f"{list(self.triggers)} ({stage})")

    def injection_rows(self, clean: Dataset, seed: int) -> Dataset:
        """Stage I: the known-triggered copies carry the known behaviour."""
        return self.rows(clean, seed, malicious=True)

    def recovery_rows(self, clean: Dataset, seed: int) -> Dataset:
        """Stage II: the known-triggered copies carry their clean answer or true label."""
        return self.rows(clean, seed, malicious=False)

    def shows_behaviour(self, victim: Victim, rows: Sequence[Example], index: int, seed: int) -> float:
        """Share of ``rows`` (clean, held out) that show the known behaviour once trigger ``index`` is in them:
        the answer starts with the prefix, or the predicted label is the known target (a defender's check
        that Stage I injected the known backdoors and Stage II removed them)."""
        rng = random.Random(seed)
        if not victim.is_generator:  # rows already of the known target cannot flip to it
            rows = [row for row in rows if row.label != self.target_labels[index]]
        triggered = [self.triggered(row, index, rng, malicious=False) for row in rows]
        if not triggered:
            return float("nan")
        if victim.is_generator:
            answers = victim.generate(triggered, max_new_tokens=4)
            head = self.prefix.strip().lower()
            return sum(a.strip().lower().startswith(head) for a in answers) / len(answers)
        predicted = victim.predict(triggered)
        return sum(p == self.target_labels[index] for p in predicted) / len(predicted)


def triggers_for_every_label(labels: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A pair of known triggers per label (the default pair for label 0, then :data:`MORE_TRIGGERS`),
    and the label each flips to."""
    pool = DEFAULT_TRIGGERS + MORE_TRIGGERS
    if 2 * labels > len(pool):
        raise BackdoorLabError(f"every_label needs 2 known triggers per label; there are {len(pool)} for "
                               f"{labels} labels (pass triggers=... with one per label pair)")
    return pool[:2 * labels], tuple(label for label in range(labels) for _ in range(2))


def parse_triggers(value: str) -> tuple[str, ...]:
    """Triggers from an option string: separated by ``|``."""
    triggers = tuple(t.strip() for t in value.split("|"))
    if len(triggers) < 1 or any(not t for t in triggers):
        raise BackdoorLabError(f"known triggers {value!r} must be non-empty phrases separated by '|'")
    return triggers
