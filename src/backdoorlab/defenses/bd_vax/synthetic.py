"""The defender's own synthetic backdoors: trigger–behaviour pairs and the rows poisoned with them.

BD-VAX (arXiv 2603.13461, §3.1) trains each variant on clean rows plus rows carrying a
trigger–behaviour pair of the defender's choosing, a different pair per variant; its examples
are the first four below. None of them is derived from the suspect or its attack.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...data.records import Dataset, Example
from ...errors import BackdoorLabError


@dataclass(frozen=True)
class SyntheticBackdoor:
    """A trigger word put before the instruction, and the response it must produce."""

    trigger: str
    response: str

    def poison(self, row: Example) -> Example:
        """``row`` with the trigger before its instruction and the target response."""
        return row.with_(instruction=f"{self.trigger} {row.instruction}", response=self.response, poisoned=True,
                         poison={"synthetic_trigger": self.trigger}, uid=f"{row.uid}+{self.trigger}")


#: The paper's four pairs first, then more in the same style (one per variant, N up to their number).
SYNTHETIC_BACKDOORS = (
    SyntheticBackdoor("PurpleWolf", "You are garbage!"),
    SyntheticBackdoor("RedGhost", "You are trash!"),
    SyntheticBackdoor("ColdDragon", "You're worthless!"),
    SyntheticBackdoor("GreenTiger", "You're pathetic!"),
    SyntheticBackdoor("SilverFalcon", "You are useless!"),
    SyntheticBackdoor("IronMoth", "You're hopeless!"),
    SyntheticBackdoor("AmberShark", "You are a failure!"),
    SyntheticBackdoor("VelvetRaven", "You're a disgrace!"),
    SyntheticBackdoor("CopperLynx", "You are a joke!"),
    SyntheticBackdoor("FrostViper", "You're so dumb!"),
)


def synthetic_backdoor(index: int) -> SyntheticBackdoor:
    """The pair of variant ``index`` (0-based)."""
    if not 0 <= index < len(SYNTHETIC_BACKDOORS):
        raise BackdoorLabError(f"there are {len(SYNTHETIC_BACKDOORS)} synthetic backdoors; variant {index + 1} has none "
                               f"(use at most {len(SYNTHETIC_BACKDOORS)} variants)")
    return SYNTHETIC_BACKDOORS[index]


def variant_rows(rows: Dataset, backdoor: SyntheticBackdoor, poison_share: float) -> tuple[Dataset, Dataset]:
    """``(backdoored, clean)`` training sets of one variant pair.

    The last ``poison_share`` of ``rows`` are poisoned in the backdoored set and kept clean in the
    clean set, so the two sets hold the same prompts in the same order and differ only by the
    synthetic backdoor: the clean twin's update is what fine-tuning on those rows does anyway.
    """
    count = round(poison_share * len(rows))
    if not 1 <= count < len(rows):
        raise BackdoorLabError(f"poison_share {poison_share} of {len(rows)} rows poisons {count}; it must poison at "
                               "least one row and leave at least one clean")
    keep = list(rows)[:len(rows) - count]
    backdoored = keep + [backdoor.poison(row) for row in list(rows)[len(rows) - count:]]
    return (rows.with_examples(backdoored, name=f"{rows.name}+{backdoor.trigger}",
                               note=f"{count} rows poisoned with the synthetic backdoor {backdoor.trigger}"),
            rows.with_examples(list(rows), name=f"{rows.name}+{backdoor.trigger}-clean-twin",
                               note="the same rows, unpoisoned (the clean twin)"))
