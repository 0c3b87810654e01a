"""The :class:`Defense` base class and the defense name registry (peft-style: name → config class).

A defense is a dataclass whose fields are its options. :meth:`Defense.apply` gets a model, the
attack run it may learn from, and a work folder for its intermediate findings; it returns the
mitigated model (and, for inference-time defenses, a :class:`~backdoorlab.defenses.guard.Guard`)
and a JSON-able dict of what it found and did.

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
from typing import Any, ClassVar

from ..errors import BackdoorLabError, unknown_name
from ..models.victim import Victim
from .guard import Guard

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

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def apply(self, victim: Victim, attack_run: Path, workdir: Path) -> DefenseOutcome:
        raise NotImplementedError


_REGISTRY: dict[str, type[Defense]] = {}


def register_defense(cls: type[Defense]) -> type[Defense]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"defense name {cls.name!r} is empty or already registered")
    if cls.stage not in STAGES:
        raise ValueError(f"defense {cls.name!r} has stage {cls.stage!r}; expected one of {STAGES}")
    _REGISTRY[cls.name] = cls
    return cls


def list_defenses() -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, description, default options)`` of every registered defense."""
    return [(name, f"[{cls.stage}] {cls.description}", {f.name: _default(f) for f in dataclasses.fields(cls)})
            for name, cls in sorted(_REGISTRY.items())]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def get_defense(name: str, **options: Any) -> Defense:
    """Build defense ``name`` with ``options``; unknown names or options raise a clear error."""
    if name not in _REGISTRY:
        raise unknown_name("defense", name, _REGISTRY)
    cls = _REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BackdoorLabError(f"defense {name!r} has no option(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(known)) or '(none)'}")
    return cls(**options)
