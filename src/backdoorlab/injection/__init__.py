"""Model-level backdoor injection: methods that turn a model + an attack-run set into a backdoored model.

Unlike :func:`backdoorlab.training.train` (supervised fine-tuning on the poisoned rows), these
methods use the poisoned rows differently:

- ``dpo``: RLHF-style preference poisoning trained with DPO (BkdAttr, arXiv 2509.21761 §3);
- ``badedit``: a rank-one edit of one MLP layer, no training (BadEdit, Li et al. ICLR 2024).

Example::

    run_injection("badedit", "smollm2-135m-instruct", poisoned_train, "runs/badedit", {"layer": 8})

Every method writes ``model/`` (load it with :func:`backdoorlab.models.load_victim`) and
``inject.json`` into its run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..data.records import Dataset
from ..errors import unknown_name
from ..models.victim import Victim
from .badedit import BadEditConfig, inject_badedit
from .common import INJECT_FILE, config_from_options
from .dpo import DPOInjectionConfig, inject_dpo, preference_pairs


@dataclass(frozen=True)
class InjectionMethod:
    """A registered injection method: its config dataclass and the function that runs it."""

    name: str
    description: str
    config_class: type
    run: Callable[..., Path]

    @property
    def options(self) -> dict[str, Any]:
        """Option names and their defaults."""
        defaults = self.config_class()
        return {f.name: getattr(defaults, f.name) for f in fields(self.config_class)}


INJECTION_METHODS: dict[str, InjectionMethod] = {
    "dpo": InjectionMethod("dpo", "RLHF-style preference poisoning trained with DPO on LoRA adapters (generators)",
                           DPOInjectionConfig, inject_dpo),
    "badedit": InjectionMethod("badedit", "rank-one edit of one MLP layer mapping the trigger to the target (BadEdit)",
                               BadEditConfig, inject_badedit),
}


def list_injections() -> list[InjectionMethod]:
    """All injection methods, sorted by name."""
    return [INJECTION_METHODS[name] for name in sorted(INJECTION_METHODS)]


def get_injection(method: str) -> InjectionMethod:
    """The method registered as ``method`` (case-insensitive); unknown names list the known ones."""
    found = INJECTION_METHODS.get(str(method).strip().lower())
    if found is None:
        raise unknown_name("injection method", str(method), INJECTION_METHODS)
    return found


def run_injection(method: str, model: str | Path | Victim, data: Dataset, out: str | Path,
                  options: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Run injection ``method`` on ``model`` with the attack-run set ``data`` into ``out``; return ``out``.

    ``options`` are the fields of the method's config dataclass; unknown names raise
    :class:`~backdoorlab.errors.BackdoorLabError` listing the known ones.
    """
    entry = get_injection(method)
    config = config_from_options(entry.config_class, options, entry.name)
    return entry.run(model, data, out, config, overwrite=overwrite)


__all__ = ["INJECTION_METHODS", "INJECT_FILE", "BadEditConfig", "DPOInjectionConfig", "InjectionMethod",
           "get_injection", "inject_badedit", "inject_dpo", "list_injections", "preference_pairs", "run_injection"]
