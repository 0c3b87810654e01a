"""The :class:`Attack` base class, the attack name registry and option checking.

Every attack is a small dataclass whose fields are its options. It is registered under a name
(like peft's ``PEFT_TYPE_TO_CONFIG_MAPPING``) with :func:`register_attack`, listed by
:func:`list_attacks` and built by :func:`get_attack`, which rejects unknown names and options with
a one-line :class:`~backdoorlab.errors.BackdoorLabError`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from ..data.records import Dataset, Example, Task
from ..errors import BackdoorLabError, unknown_name
from ..options import OptionInfo, OptionTypeError, build, coerce, defaults, describe

Purpose = Literal["train", "test"]


@dataclass(frozen=True)
class AttackInfo:
    """What :func:`list_attacks` says about one attack."""

    name: str
    task: Task
    description: str
    options: dict[str, Any]


@dataclass
class PoisonContext:
    """What an attack may need beyond a single row.

    ``target`` is the target label index (``None`` for generation), ``purpose`` says whether the
    rows go into a poisoned training set or a triggered test set, and attacks may append to
    ``notes`` (they end up in the dataset notes and the manifest).
    """

    dataset: Dataset
    target: int | None
    purpose: Purpose
    clean_label: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Attack:
    """Base class: turns clean rows into triggered rows.

    Subclasses set the class attributes ``name``, ``task`` and ``description`` and declare their
    options as dataclass fields (all with defaults); ``__post_init__`` validates them.
    """

    name: ClassVar[str] = ""
    task: ClassVar[Task] = "classification"
    description: ClassVar[str] = ""

    def apply(self, example: Example, rng: random.Random) -> Example:
        """Insert the trigger (and, for generation, the behaviour) into one example.

        The result has ``poisoned=True`` and a ``poison`` dict. Classification attacks keep the
        label: relabelling to the target is the job of :func:`~backdoorlab.attacks.poison_dataset`.
        """
        raise NotImplementedError

    def transform_rows(self, rows: Sequence[Example], rng: random.Random,
                       context: PoisonContext) -> list[Example | None]:
        """Trigger many rows at once; ``None`` marks a row that could not be triggered (test only).

        The default applies :meth:`apply` row by row; pool-based and batched attacks override it.
        """
        return [self.apply(row, rng) for row in rows]

    def accepts(self, example: Example) -> bool:
        """Whether a generative row may be poisoned (e.g. label-flip skips rows already flipped)."""
        return True

    def trigger_summary(self) -> Any:
        """The trigger as it should appear in a manifest (a string or a list of strings)."""
        raise NotImplementedError

    def keeps_clean_twins(self) -> bool:
        """Whether poisoning ADDS each poisoned row beside its clean original instead of replacing it."""
        return False

    def options(self) -> dict[str, Any]:
        """This attack's options and their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def info(cls) -> AttackInfo:
        return AttackInfo(cls.name, cls.task, cls.description, defaults(cls))

    def option_error(self, option: str, message: str) -> BackdoorLabError:
        """A clear error about one option of this attack."""
        return BackdoorLabError(f"attack {self.name!r}, option {option}: {message}")


_REGISTRY: dict[str, type[Attack]] = {}
A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator adding an attack to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"attack name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_attacks(task: Task | None = None) -> list[AttackInfo]:
    """All registered attacks (optionally of one task), sorted by task then name."""
    infos = [cls.info() for cls in _REGISTRY.values() if task in (None, cls.task)]
    return sorted(infos, key=lambda info: (info.task, info.name))


def _attack_class(name: str) -> type[Attack]:
    cls = _REGISTRY.get(name.strip().lower())
    if cls is None:
        raise unknown_name("attack", name, _REGISTRY)
    return cls


def attack_info(name: str) -> AttackInfo:
    """What :func:`list_attacks` says about the attack registered as ``name``."""
    return _attack_class(name).info()


def attack_options(name: str) -> list[OptionInfo]:
    """The options of the attack registered as ``name``: type, default and help text."""
    return describe(_attack_class(name))


def get_attack(name: str, **options: Any) -> Attack:
    """Build the attack registered as ``name`` with ``options``.

    Unknown names and options raise :class:`BackdoorLabError` listing what exists; values are
    coerced to the options' types (strings from a command line are parsed), then checked by the
    attack itself.
    """
    cls = _attack_class(name)
    return build(cls, options, f"attack {cls.name!r}")


# Option checks shared by the attacks. Values may arrive as strings from a command line.

def check_choice(attack: Attack, option: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    text = str(value).strip().lower()
    if text not in choices:
        raise attack.option_error(option, f"expected one of {', '.join(choices)}, got {value!r}")
    return text


def check_positive_int(attack: Attack, option: str, value: Any) -> int:
    try:
        number = coerce(value, int)
    except OptionTypeError:
        number = 0
    if number < 1:
        raise attack.option_error(option, f"expected a positive integer, got {value!r}")
    return number


def check_text(attack: Attack, option: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise attack.option_error(option, f"expected a non-empty string, got {value!r}")
    return value.strip()


def check_text_list(attack: Attack, option: str, value: Any) -> list[str]:
    """A non-empty list of non-empty strings; a string is split on commas."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise attack.option_error(option, f"expected a non-empty list of strings, got {value!r}")
    return [check_text(attack, option, item) for item in items]


def check_optional_dir(attack: Attack, option: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise attack.option_error(option, f"folder {path} does not exist")
    return str(path)
