"""One benchmark cell (victim × defense × seed with free-form parameters) and what its task asks for."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import BackdoorLabError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
DEFAULT_KIND = "cpu"


@dataclass(frozen=True)
class Cell:
    """A unit of benchmark work. ``params`` holds everything else its result depends on (JSON values).

    The id (``victim__defense__seedN``, unsafe characters replaced) names the cell's result file,
    so it depends only on victim, defense and seed: changing ``params`` recomputes the same cell.
    ``kind`` picks the cell's task resources (see :class:`Resources`) and ``run_options`` how it is
    run without changing its result (e.g. keeping intermediate files, or where another cell's files
    are on this machine); neither is part of its identity, so params hold no machine's paths.

    ``code`` names the ``backdoorlab`` modules, beyond the cell function's own script and what it
    imports, whose source the result depends on (e.g. the defense it applies), and ``methods`` the
    defense method packages it runs (``None``: any of them). Both feed the fingerprint's code digest
    (:mod:`backdoorlab.codeversion`), so editing a method makes stale only the cells that ran it.
    """

    victim: str
    defense: str
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    kind: str = field(default=DEFAULT_KIND, compare=False)
    run_options: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    code: tuple[str, ...] = field(default=(), hash=False, compare=False)
    methods: tuple[str, ...] | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("victim", "defense", "kind"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise BackdoorLabError(f"a grid cell's {name} must be a non-empty string, not {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise BackdoorLabError(f"a grid cell's seed must be an integer, not {self.seed!r}")
        try:
            params = json.loads(json.dumps(dict(self.params)))
        except (TypeError, ValueError) as error:
            raise BackdoorLabError(f"cell {self.victim}/{self.defense}: params must be JSON values ({error})") from None
        object.__setattr__(self, "params", params)  # a private copy: later edits to the caller's dict don't leak in
        object.__setattr__(self, "code", tuple(self.code))
        if self.methods is not None:
            object.__setattr__(self, "methods", tuple(self.methods))

    @property
    def id(self) -> str:
        raw = f"{self.victim}__{self.defense}__seed{self.seed}"
        return _UNSAFE.sub("_", raw).lstrip(".") or "cell"

    def identity(self) -> dict[str, Any]:
        """What the cell's result depends on: victim, defense, seed and params."""
        return {"victim": self.victim, "defense": self.defense, "seed": self.seed, "params": dict(self.params)}


@dataclass(frozen=True)
class Resources:
    """What one cell's Ray task reserves: CPU cores and GPUs (fractions allowed)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise BackdoorLabError(f"cell resources cannot be negative: {self}")


class CellFunction(Protocol):
    """``fn(cell, workdir) -> dict``: computes one cell; ``workdir`` is its own scratch folder."""

    def __call__(self, cell: Cell, workdir: Path) -> dict[str, Any]: ...
