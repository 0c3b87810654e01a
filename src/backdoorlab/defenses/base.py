"""The :class:`Defense` base class and the defense name registry (peft-style: name → config class).

A defense is a dataclass whose fields are its options. :meth:`Defense.apply` gets a model, what
a defender holds (:class:`~backdoorlab.defenses.inputs.DefenderInputs`: only the inputs the method
declares in ``needs`` and ``uses``) and a work folder for its intermediate findings; it returns
the mitigated model (and, for inference-time defenses, a :class:`~backdoorlab.defenses.guard.Guard`)
and a JSON-able dict of what it found and did. No defense sees the data its result is measured on.

Each defense declares its ``stage``, which says what the ``model`` it is given is:

- ``"post-training"``: the suspect (backdoored) model, edited or fine-tuned;
- ``"training"``: the clean pretrained model, trained on the poisoned data in a way that resists
  the backdoor (MuScleLoRA, BadLLM-TG);
- ``"inference"``: the suspect model, left unchanged and wrapped by a guard (ONION, RAP, BadActs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import unknown_name
from ..models.victim import Victim
from ..options import OptionInfo, build, defaults, describe
from .guard import Guard

if TYPE_CHECKING:
    from .inputs import DefenderInputs

STAGES = ("post-training", "training", "inference")


@dataclass
class DefenseOutcome:
    victim: Victim
    findings: dict[str, Any]
    guard: Guard | None = None  # inference-time defenses: how predictions are made
    model_changed: bool = True  # False: the input model is used as it is (not saved again)


@dataclass
class Defense:
    """Base class; subclasses set ``name``/``description`` and implement :meth:`apply`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    stage: ClassVar[str] = "post-training"
    needs: ClassVar[tuple[str, ...]] = ()  # defender inputs the method requires (names in inputs.INPUTS)
    uses: ClassVar[tuple[str, ...]] = ()  # defender inputs it uses when given
    needs_when: ClassVar[dict[str, str]] = {}  # inputs of ``uses`` some settings require: input -> when
    moved_options: ClassVar[dict[str, str]] = {}  # former options -> what to pass instead

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def check_inputs(self, inputs: DefenderInputs) -> None:
        """Raise a clear error when an input these settings require is missing (before any work)."""
        for name in self.needs:
            inputs.require(name, self.name)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        raise NotImplementedError


_REGISTRY: dict[str, type[Defense]] = {}


def register_defense(cls: type[Defense]) -> type[Defense]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"defense name {cls.name!r} is empty or already registered")
    if cls.stage not in STAGES:
        raise ValueError(f"defense {cls.name!r} has stage {cls.stage!r}; expected one of {STAGES}")
    from .inputs import INPUTS

    unknown = sorted((set(cls.needs) | set(cls.uses) | set(cls.needs_when)) - set(INPUTS))
    if unknown:
        raise ValueError(f"defense {cls.name!r} declares unknown defender inputs {unknown}")
    _REGISTRY[cls.name] = cls
    return cls


def list_defenses() -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, description, default options)`` of every registered defense."""
    return [(name, f"[{cls.stage}] {cls.description}", defaults(cls)) for name, cls in sorted(_REGISTRY.items())]


@dataclass(frozen=True)
class DefenseInfo:
    """What ``backdoorlab defenses NAME`` shows: the stage, the description and every option."""

    name: str
    stage: str
    description: str
    options: list[OptionInfo]
    needs: tuple[str, ...] = ()  # defender inputs the method requires
    uses: tuple[str, ...] = ()  # defender inputs it uses when given
    needs_when: dict[str, str] = dataclasses.field(default_factory=dict)  # inputs of ``uses`` some settings require


def defense_info(name: str) -> DefenseInfo:
    """The stage, description and options (type, default, help) of defense ``name``."""
    cls = _defense_class(name)
    return DefenseInfo(cls.name, cls.stage, cls.description, describe(cls), tuple(cls.needs), tuple(cls.uses),
                       dict(cls.needs_when))


def _defense_class(name: str) -> type[Defense]:
    if name not in _REGISTRY:
        raise unknown_name("defense", name, _REGISTRY)
    return _REGISTRY[name]


def get_defense(name: str, **options: Any) -> Defense:
    """Build defense ``name`` with ``options``, checked by name and type, then by the defense itself.

    Values may be strings (as from ``--option key=value``); unknown names or bad values raise a
    :class:`~backdoorlab.errors.BackdoorLabError` before any model or data is touched.
    """
    return build(_defense_class(name), options, f"defense {name!r}")
