"""Defenses: turn a suspect model into a mitigated one (``backdoorlab defend``).

The framework lives here (``base``: the Defense class and registry; ``inputs``: what a defender
holds; ``runner``: ``backdoorlab defend``; ``guard``: inference-time guards); machinery several
methods share lives in ``shared``; each method is a package of its own (peft's ``tuners/<method>``
shape): ``badllm_tg`` (trigger inversion + adversarial training); the classification baselines
``none``, ``fine_tune``, ``onion``, ``rap``, ``muscle_lora`` and ``badacts``; ``attribution``
(``head-ablation`` and ``backdoor-vector``); ``bd_vax`` (immunization-style purification of
generative LLMs); ``collapse`` (Backdoor Collapse: known-backdoor aggregation, then recovery); the
generative baselines ``fine_pruning``, ``pruning`` (Wanda and magnitude),
``quantization``, ``crow``, ``drop_adapter`` (the reference for base + adapter suspects), ``unlearn_trigger`` (a named
trigger unlearned on clean rows), and the decoding guards ``cleangen`` and ``sampling``.
"""

from . import (  # noqa: F401  (register)
    attribution,
    badacts,
    badllm_tg,
    bd_vax,
    cleangen,
    collapse,
    crow,
    drop_adapter,
    fine_pruning,
    fine_tune,
    muscle_lora,
    none,
    onion,
    pruning,
    quantization,
    rap,
    sampling,
    self_awareness,
    unlearn_trigger,
)
from .base import Defense, DefenseOutcome, get_defense, list_defenses, register_defense
from .guard import REJECTED, Guard, load_guard, register_guard, save_guard
from .inputs import INPUTS, DefenderInputs, OracleExamples, gather_inputs
from .runner import run_defense
from .shared import CleanRowsDefense

__all__ = ["INPUTS", "REJECTED", "CleanRowsDefense", "DefenderInputs", "Defense", "DefenseOutcome", "Guard",
           "OracleExamples", "gather_inputs", "get_defense",
           "list_defenses", "load_guard", "register_defense", "register_guard", "run_defense", "save_guard"]
