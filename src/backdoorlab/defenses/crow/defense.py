"""``crow``: remove a generator's backdoor by LoRA fine-tuning with internal-consistency regularisation.

Min et al., "CROW: Eliminating Backdoors from Large Language Models via Internal Consistency
Regularization", ICML 2025 (arXiv 2411.12768). Backdoored models show abrupt changes between
consecutive layers' hidden states on triggered inputs, clean ones smooth transitions (Figure 1).
CROW fine-tunes the suspect on about 100 clean instruction rows with
``L_total = L_LM + α · L_cons^adv`` (§3, Algorithm 1): the LM loss plus the layer-consistency loss of a
pass whose input embeddings were moved by one FGSM step towards *less* consistency, so that no small
change of the input (a trigger) can make the hidden states jump. The loss, and how the paper's
equations are read, are in :mod:`.loss`.

Settings (the paper's experimental setup and the authors' configs,
``attack/DPA/configs/consistency/*.yaml`` in github.com/NayMyatMin/CROW): ε = 0.1; α = 5.5 for sentiment
steering and code injection, 11 for targeted refusal (the default here is 5.5: a defender need not
know which backdoor it faces; pass ``alpha=11`` against refusal backdoors); 100 clean Alpaca rows;
LoRA on every linear layer with LLaMA-Factory's defaults r = 8, α = 16, no dropout; learning rate
1e-3 with a warm-up over 10% of the steps; an effective batch of 8 (2 × 4 accumulation); 5 epochs.

Departures: the learning rate decays linearly (the authors' configs use a cosine decay), training is
in fp32 (the authors use fp16), and ``epochs`` defaults to 3 to keep a CPU run within a few minutes
(``epochs=5`` is the paper's). ``measure`` adds one evaluation pass over the clean rows before and one
after training, reporting the mean of each loss term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BackdoorLabError
from ...models.victim import Victim
from ...training import TrainConfig, train
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from ..shared.token_batches import token_batches
from .loss import CrowObjective


@register_defense
@dataclass
class Crow(CleanRowsDefense):
    """LoRA fine-tuning on clean rows with CROW's loss ``L_LM + α · L_cons^adv`` (generators only)."""

    name = "crow"
    description = ("fine-tune the suspect generator (LoRA) on clean rows with layer-consistency regularisation "
                   "under FGSM-perturbed input embeddings (CROW)")
    max_clean: int = 100  # clean rows (the paper uses 100)
    epsilon: float = 0.1  # FGSM step on the input embeddings (max-abs per coordinate)
    alpha: float = 5.5  # weight of the perturbed consistency loss (paper: 5.5 steering/code, 11 refusal)
    epochs: float = 3.0  # the paper trains 5
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 8  # LoRA rank (the authors' configs)
    lora_alpha: int = 16  # LoRA scaling alpha (not the loss weight alpha)
    max_length: int | None = None  # tokens per row; default: the suspect model's own limit
    measure: bool = True  # also average the loss terms over the clean rows before and after (one extra pass each)

    def __post_init__(self) -> None:
        for option in ("epsilon", "alpha"):
            if not getattr(self, option) >= 0:
                raise BackdoorLabError(f"crow {option} must be at least 0, got {getattr(self, option)}")
        for option in ("epochs", "learning_rate", "batch_size", "lora_r", "lora_alpha", "max_clean"):
            if not getattr(self, option) > 0:
                raise BackdoorLabError(f"crow {option} must be greater than 0, got {getattr(self, option)}")
        if self.max_length is not None and self.max_length < 2:
            raise BackdoorLabError(f"crow max_length must be at least 2 tokens, got {self.max_length}")

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if not victim.is_generator:
            raise BackdoorLabError("crow regularises a generator's layers while it learns clean responses; "
                                   f"{victim.name or 'this model'} is a {victim.kind}")
        clean = self.clean_rows(inputs)
        config = TrainConfig(method="lora", epochs=self.epochs, learning_rate=self.learning_rate,
                             batch_size=self.batch_size, warmup_ratio=0.1, lora_r=self.lora_r,
                             lora_alpha=self.lora_alpha, lora_dropout=0.0,
                             max_length=self.max_length or victim.max_length, seed=self.seed)
        objective = CrowObjective(epsilon=self.epsilon, alpha=self.alpha)
        before = self._measure(objective, victim, clean, config) if self.measure else None
        tuned = train(victim, clean, workdir / "crow", config, reuse=True, objective=objective)
        after = self._measure(objective, tuned, clean, config) if self.measure else None
        findings: dict[str, Any] = {
            "clean_rows": len(clean), "clean_source": clean.source,
            "settings": {"epsilon": self.epsilon, "alpha": self.alpha, "epochs": self.epochs,
                         "learning_rate": self.learning_rate, "batch_size": self.batch_size, "lora_r": self.lora_r,
                         "lora_alpha": self.lora_alpha, "max_length": config.max_length},
            "consistency_pairs": victim.spec.num_layers - 1,
            "final_epoch": _last_epoch(objective.history, math.ceil(len(clean) / self.batch_size)),
        }
        if before is not None and after is not None:
            findings["clean_rows_before"], findings["clean_rows_after"] = before, after
        return DefenseOutcome(tuned, findings)

    def _measure(self, objective: CrowObjective, victim: Victim, clean: Any, config: TrainConfig) -> dict[str, float]:
        batches = token_batches(victim, clean, self.batch_size, config.max_length, sort=False, desc="CROW losses")
        return objective.measure(victim.model, batches)


def _last_epoch(history: list[dict[str, float]], steps: int) -> dict[str, float] | None:
    """The mean terms over the last epoch's batches; ``None`` when this process did not train (reused run)."""
    rows = history[-steps:]
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]} if rows else None
