"""Defenses: turn a suspect model into a mitigated one (``backdoorlab defend``).

Registered: ``badllm-tg`` (trigger inversion + adversarial training); the classification baselines
``none``, ``fine-tune``, ``onion``, ``rap``, ``muscle-lora`` and ``badacts``; ``head-ablation`` and
``backdoor-vector`` (from backdoor attribution).
"""

from . import attribution, badacts, badllm_tg, finetune, muscle_lora, onion, rap  # noqa: F401  (register)
from .base import Defense, DefenseOutcome, get_defense, list_defenses, register_defense
from .data import ClassifierDefense
from .guard import REJECTED, Guard, load_guard, register_guard, save_guard
from .inputs import INPUTS, DefenderInputs, OracleExamples, gather_inputs
from .runner import run_defense

__all__ = ["INPUTS", "REJECTED", "ClassifierDefense", "DefenderInputs", "Defense", "DefenseOutcome", "Guard",
           "OracleExamples", "gather_inputs", "get_defense",
           "list_defenses", "load_guard", "register_defense", "register_guard", "run_defense", "save_guard"]
