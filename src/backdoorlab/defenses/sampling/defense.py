"""``sampling``: decode the suspect by sampling instead of greedily, at a chosen temperature.

The decoding baseline of BackdoorLLM (Li et al., 2024, §4 "Defense"; its DefenseBox decoding
script): a backdoor trained to fire deterministically may fire less often when responses are
sampled at a higher temperature. The public script passes a temperature but leaves sampling off,
so its temperature has no effect; here tokens really are sampled (``do_sample=True``), from a
seeded generator, so a rerun gives the same responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...data.records import Example
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ..base import Defense, DefenseOutcome, register_defense
from ..guard import Guard, register_guard
from ..inputs import DefenderInputs


def _check_settings(temperature: float, top_p: float, top_k: int) -> None:
    if not temperature > 0:
        raise BackdoorLabError(f"sampling temperature must be positive, got {temperature} (greedy decoding is the "
                               "'none' defense)")
    if not 0 < top_p <= 1:
        raise BackdoorLabError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise BackdoorLabError(f"top_k must be 0 (off) or positive, got {top_k}")


@register_guard
class SamplingGuard(Guard):
    """Sample each response with ``temperature`` (and optional nucleus/top-k truncation), seeded."""

    name = "sampling"

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> None:
        _check_settings(temperature, top_p, top_k)
        self.temperature, self.top_p, self.top_k, self.seed = float(temperature), float(top_p), int(top_k), int(seed)

    def generate(self, victim: Victim, items: Sequence[Example], max_new_tokens: int = 64,
                 batch_size: int = 16) -> list[str]:
        with torch.random.fork_rng(devices=[] if victim.device.type == "cpu" else [victim.device]):
            torch.manual_seed(self.seed)
            return victim.generate(items, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True,
                                   temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    def state(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SamplingGuard":
        return cls(**state)


@register_defense
@dataclass
class Sampling(Defense):
    """Sample the suspect's responses at ``temperature`` instead of decoding greedily."""

    name = "sampling"
    description = "decoding guard: sample responses at a temperature (really sampled, seeded) instead of greedily"
    stage = "inference"

    temperature: float = 1.0  # softmax temperature of the sampled tokens (> 0)
    top_p: float = 1.0  # nucleus sampling; 1.0: off
    top_k: int = 0  # sample among the k most probable tokens; 0: off
    seed: int = 0  # seed of the sampled tokens

    def __post_init__(self) -> None:
        _check_settings(self.temperature, self.top_p, self.top_k)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if not victim.is_generator:
            raise BackdoorLabError("sampling guards a generator's decoding; the suspect is a classifier")
        guard = SamplingGuard(self.temperature, self.top_p, self.top_k, self.seed)
        return DefenseOutcome(victim, guard.state(), guard=guard, model_changed=False)
