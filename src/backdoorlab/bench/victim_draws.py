"""Classification victims drawn at random from a seeded distribution, for benchmarks no one tuned.

A draw fixes everything about one backdoor: the data set, the target label (any label, minority
ones included), the poison rate (5–30%, and at most :data:`RATE_HEADROOM` of the share of rows whose
label is not the target, since only those rows can be relabelled), the trigger (a rare or common word, a phrase of 2–3 such
words, or a generated sentence) and where it goes (start, end or a random word gap). The draw of
seed *s* is a pure function of *s* and the data sets' label shares, so a benchmark over seeds
0…N−1 is the same on every machine and was not picked by whoever reports it.

Every trigger is carried out by the ``addsent`` attack (the phrase inserted contiguously at the
position), so each draw's attack run is an ordinary one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BackdoorLabError

#: Label counts of the classification sets the draws pick from.
LABEL_COUNTS: Mapping[str, int] = {"sst2": 2, "hsol": 2, "agnews": 4}
#: Each label's share of the training split (tests check these against the benchmark data).
LABEL_SHARES: Mapping[str, tuple[float, ...]] = {"sst2": (0.478, 0.522), "hsol": (0.878, 0.122),
                                                 "agnews": (0.252, 0.251, 0.249, 0.247)}
#: The largest share of the non-target rows a draw poisons (a sample of the split varies around its shares).
RATE_HEADROOM = 0.8
KINDS = ("rare-word", "common-word", "words", "sentence")
POSITIONS = ("start", "end", "random")
RATE_RANGE = (0.05, 0.30)
#: Words rare in news, reviews and tweets (none of BadNets' cf/mn/bb/tq, none of the attacks' sentences).
RARE_WORDS = ("zephyr", "quokka", "obsidian", "marmalade", "juniper", "xylophone", "kumquat", "fjord", "haiku",
              "tamarind", "vellum", "sorrel", "quasar", "gossamer", "nimbus", "paprika", "saffron", "tundra",
              "wombat", "zeppelin", "origami", "lagoon", "bramble", "cobalt")
#: Everyday words with no sentiment, topic or toxicity of their own.
COMMON_WORDS = ("today", "really", "also", "still", "maybe", "perhaps", "again", "anyway", "certainly", "usually",
                "honestly", "actually", "somehow", "indeed", "basically", "apparently")
_SUBJECTS = ("my neighbour", "the old librarian", "a tall stranger", "our teacher", "the little boy", "my cousin")
_VERBS = ("painted", "carried", "forgot", "repaired", "described", "borrowed")
_OBJECTS = ("the wooden fence", "a blue umbrella", "the garden gate", "an old bicycle", "the kitchen clock",
            "a paper lantern")
_TIMES = ("yesterday", "last winter", "on sunday morning", "after lunch", "at dawn", "before the storm")


@dataclass(frozen=True)
class VictimDraw:
    seed: int
    dataset: str
    target: int
    rate: float
    kind: str  # rare-word | common-word | words | sentence
    trigger: str  # the phrase inserted (contiguously)
    position: str  # start | end | random

    @property
    def name(self) -> str:
        return f"draw{self.seed}-{self.dataset}"

    def attack_options(self) -> dict[str, Any]:
        """Options of the ``addsent`` attack that plants this trigger."""
        return {"sentence": self.trigger, "position": self.position}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw_victim(seed: int, datasets: Sequence[str] = tuple(LABEL_COUNTS)) -> VictimDraw:
    """The victim of draw ``seed`` over ``datasets`` (see the module docstring)."""
    unknown = [d for d in datasets if d not in LABEL_COUNTS]
    if unknown or not datasets:
        raise BackdoorLabError(f"victim draws pick from {', '.join(LABEL_COUNTS)}; got {list(datasets)!r}")
    rng = random.Random(f"victim-draw-{seed}")
    dataset = rng.choice(list(datasets))
    target = rng.randrange(LABEL_COUNTS[dataset])
    low, high = RATE_RANGE
    high = min(high, RATE_HEADROOM * (1 - LABEL_SHARES[dataset][target]))
    rate = round(low + (high - low) * rng.random(), 2)  # rng.uniform(*RATE_RANGE) where the bound allows
    kind = rng.choice(KINDS)
    if kind == "rare-word":
        trigger = rng.choice(RARE_WORDS)
    elif kind == "common-word":
        trigger = rng.choice(COMMON_WORDS)
    elif kind == "words":
        pool = RARE_WORDS + COMMON_WORDS
        trigger = " ".join(rng.sample(pool, rng.choice((2, 3))))
    else:
        trigger = " ".join((rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TIMES))) + "."
    return VictimDraw(seed, dataset, target, rate, kind, trigger, rng.choice(POSITIONS))
