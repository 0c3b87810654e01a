"""``wanda`` and ``magnitude-pruning``: one-shot pruning of every linear layer inside the transformer blocks.

- ``wanda`` (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models", ICLR 2024, arXiv 2306.11695): each weight is scored ``S_ij = |W_ij| · ‖X_j‖₂`` (§3, Eq. 1),
  ``‖X_j‖₂`` the L2 norm of input feature ``j`` over all calibration tokens; weights are compared
  per output row (§3, "comparison group") and the lowest ``sparsity`` of each row is zeroed, or N of
  every M consecutive input weights (§4.2, N:M). As in the official code, blocks are pruned in
  order and the calibration inputs of a block come from the blocks before it already pruned; all
  linears of a block are measured before any of them is pruned. Calibration tokens are the prompt
  and response tokens of the defender's clean rows (the paper: 128 C4 sequences), never padding.
  BackdoorLLM's DefenseBox uses this method as its pruning defense.
- ``magnitude-pruning`` (Han et al., NeurIPS 2015; the Wanda paper's magnitude baseline, §4):
  score ``|W_ij|``, compared across the whole layer (one threshold per layer) when unstructured, per
  row for N:M; no data needed.

Only the linear layers of the blocks (attention q/k/v/o, MLP gate/up/down) are pruned; embeddings,
the LM head (or classifier head), norms and biases are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import BackdoorLabError
from ...models.architecture import transformer_layers
from ...models.victim import Victim
from ..base import Defense, DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from ..shared.token_batches import token_batches
from .calibration import BlockInputs, input_sq_norms
from .scores import UNSTRUCTURED, apply_mask, block_linears, check_widths, prune_mask, sparsity_report, target_sparsity


def blocks_linears(victim: Victim) -> list[dict[str, nn.Linear]]:
    """Per transformer block, its linear layers by name within the block."""
    return [block_linears(block) for block in transformer_layers(victim.model, victim.spec)]


def _flat(per_block: list[dict[str, nn.Linear]]) -> dict[str, nn.Linear]:
    return {f"{i}.{name}": linear for i, linears in enumerate(per_block) for name, linear in linears.items()}


@dataclass
class _WeightPruning(Defense):
    """Options and findings shared by the weight-pruning defenses."""

    comparison_group: ClassVar[str] = "row"

    sparsity: float | None = None  # share of weights zeroed per comparison group; default 0.5 (N/M for a pattern)
    pattern: str = UNSTRUCTURED  # unstructured, or N:M (2:4, 4:8): the N lowest of every M consecutive input weights

    def __post_init__(self) -> None:
        self.target()  # bad options fail when the defense is built, before any model is loaded

    def target(self) -> float:
        """The share of weights to zero, after checking ``sparsity`` and ``pattern``."""
        try:
            return target_sparsity(self.sparsity, self.pattern)
        except BackdoorLabError as error:
            raise BackdoorLabError(f"{self.name}: {error}") from None

    def checked_linears(self, victim: Victim) -> list[dict[str, nn.Linear]]:
        """The blocks' linear layers, checked against the pattern before any weight changes."""
        per_block = blocks_linears(victim)
        try:
            check_widths(_flat(per_block).items(), self.pattern)
        except BackdoorLabError as error:
            raise BackdoorLabError(f"{self.name}: {error}") from None
        return per_block

    def prune(self, linear: nn.Linear, scores: torch.Tensor) -> int:
        return apply_mask(linear, prune_mask(scores, self.target(), self.pattern, self.comparison_group))

    def findings(self, per_block: list[dict[str, nn.Linear]], zeroed: int) -> dict[str, Any]:
        group = "output row" if self.pattern != UNSTRUCTURED or self.comparison_group == "row" else "layer"
        return {"pattern": self.pattern, "target_sparsity": self.target(), "comparison_group": group,
                "linear_layers": sum(len(linears) for linears in per_block), "weights_zeroed": zeroed,
                **sparsity_report(_flat(per_block))}


@register_defense
@dataclass
class MagnitudePruning(_WeightPruning):
    """Zero the smallest-magnitude weights of each linear layer of the blocks (Han et al. 2015)."""

    name: ClassVar[str] = "magnitude-pruning"
    description: ClassVar[str] = "zero the smallest |W| of every linear layer in the blocks (layer-wise, or N:M)"
    comparison_group: ClassVar[str] = "layer"

    @torch.no_grad()
    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        per_block = self.checked_linears(victim)
        zeroed = 0
        for linears in tqdm(per_block, desc="magnitude pruning", unit="block"):
            for linear in linears.values():
                zeroed += self.prune(linear, linear.weight.abs().float())
        return DefenseOutcome(victim, self.findings(per_block, zeroed))


@register_defense
@dataclass
class WandaPruning(_WeightPruning, CleanRowsDefense):
    """Wanda: zero the weights with the smallest |weight| × input-feature norm, per output row,
    block by block on the defender's clean rows (sequential, as the official code)."""

    name: ClassVar[str] = "wanda"
    description: ClassVar[str] = "Wanda: zero the lowest |W|·‖X‖ weights per output row, block by block on clean rows"
    needs: ClassVar[tuple[str, ...]] = ("clean_rows",)

    max_clean: int = 128  # calibration rows (the paper's 128 calibration sequences)
    batch_size: int = 16  # calibration rows per forward pass

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise BackdoorLabError(f"{self.name}: batch_size must be at least 1, got {self.batch_size}")

    @torch.no_grad()
    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        per_block = self.checked_linears(victim)
        rows = self.clean_rows(inputs)
        victim.model.eval()
        stream = BlockInputs.record(victim, token_batches(victim, rows, self.batch_size))
        blocks = transformer_layers(victim.model, victim.spec)
        zeroed = 0
        for index, block in enumerate(tqdm(blocks, desc="wanda", unit="block")):
            linears = per_block[index]
            with input_sq_norms(linears, stream.current_tokens) as squares:
                stream.run(block, index, update=False)
            for name, linear in linears.items():
                zeroed += self.prune(linear, linear.weight.abs().float() * squares[name].sqrt())
            if index + 1 < len(blocks):
                stream.run(block, index, update=True)  # the next block is calibrated on this pruned one
        findings = self.findings(per_block, zeroed)
        findings.update(calibration_rows=len(rows), calibration_tokens=stream.token_count(),
                        clean_source=rows.source)
        return DefenseOutcome(victim, findings)
