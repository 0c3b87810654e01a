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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.records import Dataset
from ..errors import unknown_name
from ..models.victim import Victim
from ..options import OptionInfo, build, defaults, describe
from .badedit import BadEditConfig, inject_badedit
from .common import INJECT_FILE
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
        return defaults(self.config_class)

    def option_info(self) -> list[OptionInfo]:
        """The options with their types, defaults and help text."""
        return describe(self.config_class)

    def config(self, options: Mapping[str, Any] | None) -> Any:
        """The method's config built from ``options`` (checked by name, type and range)."""
        config = build(self.config_class, options, f"injection method {self.name!r}")
        return config.check() if hasattr(config, "check") else config


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

    ``options`` are the fields of the method's config dataclass (values may be strings, as from the
    command line); unknown names or bad values raise :class:`~backdoorlab.errors.BackdoorLabError`
    before the model is loaded.
    """
    entry = get_injection(method)
    return entry.run(model, data, out, entry.config(options), overwrite=overwrite)


__all__ = ["INJECTION_METHODS", "INJECT_FILE", "BadEditConfig", "DPOInjectionConfig", "InjectionMethod",
           "get_injection", "inject_badedit", "inject_dpo", "list_injections", "preference_pairs", "run_injection"]
