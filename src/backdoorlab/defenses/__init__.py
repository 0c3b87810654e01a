"""Defenses: turn a suspect model into a mitigated one (``backdoorlab defend``).

Registered: ``head-ablation`` and ``backdoor-vector`` (from backdoor attribution).
"""

from . import attribution  # noqa: F401  (registers the attribution defenses)
from .base import Defense, DefenseOutcome, get_defense, list_defenses, register_defense
from .runner import run_defense

__all__ = ["Defense", "DefenseOutcome", "get_defense", "list_defenses", "register_defense", "run_defense"]
