"""Inference-time defenses: a :class:`Guard` wraps a classifier's predictions or a generator's decoding.

A classifier guard may rewrite inputs before the model sees them (ONION), edit activations while
it runs (BadActs) or reject inputs it judges poisoned (RAP). A rejected input is predicted as
:data:`REJECTED` (-1): it never counts as the backdoor target (ASR) and always counts as wrong
on clean data (CACC), so a detector pays for its false alarms. A generator guard decides how the
suspect's responses are decoded (CleanGen, sampling): it implements :meth:`Guard.generate`.

A guard's state is JSON (thresholds, small vectors, settings); ``guard.json`` in a defense run
folder holds it, and :func:`load_guard` rebuilds it, e.g. for ``backdoorlab evaluate --guard``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..data.records import Example
from ..errors import BackdoorLabError, unknown_name
from ..fileio import write_json_atomic
from ..metrics.classification import REJECTED  # noqa: F401  (re-exported: guards predict it)
from ..models.victim import Victim

GUARD_FILE = "guard.json"


class Guard:
    """Base class; subclasses set ``name`` and implement :meth:`state`, :meth:`from_state` and
    :meth:`predict` (classifier guards) or :meth:`generate` (generator guards)."""

    name: ClassVar[str] = ""

    def predict(self, victim: Victim, items: Sequence[Example], batch_size: int = 32) -> list[int]:
        """Label index per item, or :data:`REJECTED`."""
        raise BackdoorLabError(f"the {self.name!r} guard guards a generator's decoding, not a classifier's labels")

    def generate(self, victim: Victim, items: Sequence[Example], max_new_tokens: int = 64,
                 batch_size: int = 16) -> list[str]:
        """The guarded response to each prompt (new text only, like :meth:`Victim.generate`)."""
        raise BackdoorLabError(f"the {self.name!r} guard guards a classifier's labels, not a generator's decoding")

    def stats(self) -> dict[str, Any]:
        """What the guard did over its calls so far (e.g. tokens replaced), JSON-able; empty by default."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-able state that :meth:`from_state` turns back into an equal guard."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Guard":
        raise NotImplementedError


_GUARDS: dict[str, type[Guard]] = {}


def register_guard(cls: type[Guard]) -> type[Guard]:
    if not cls.name or cls.name in _GUARDS:
        raise ValueError(f"guard name {cls.name!r} is empty or already registered")
    _GUARDS[cls.name] = cls
    return cls


def save_guard(guard: Guard, folder: str | Path) -> Path:
    """Write ``folder/guard.json`` atomically."""
    return write_json_atomic(Path(folder) / GUARD_FILE, {"guard": guard.name, "state": guard.state()})


def load_guard(path: str | Path) -> Guard:
    """Rebuild a guard from ``guard.json`` or a defense run folder that holds one."""
    path = Path(path)
    file = path / GUARD_FILE if path.is_dir() else path
    if not file.is_file():
        raise BackdoorLabError(f"{path} holds no {GUARD_FILE}; only inference-time defenses "
                               "(see `backdoorlab defenses`) write one")
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        name, state = saved["guard"], saved["state"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise BackdoorLabError(f"{file} is not a valid {GUARD_FILE} ({error}); run the defense again") from error
    if name not in _GUARDS:
        raise unknown_name("guard", name, _GUARDS)
    return _GUARDS[name].from_state(state)
