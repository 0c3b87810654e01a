"""Neutralizing the signature in the suspect (BD-VAX, arXiv 2603.13461, §3.3).

- ``reinit`` (a fully fine-tuned suspect): the signature's components are re-initialised, drawn
  as the model's own initialiser draws weights (normal, standard deviation
  ``config.initializer_range``), so whatever the suspect learnt in them is gone.
- ``adapter`` (a suspect distributed as base model + LoRA adapter): the signature's entries of
  the adapter's update ``ΔW`` are zeroed, i.e. subtracted from the merged weights; everything
  else the adapter learnt stays.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...models.adapter_update import adapter_updates
from ...models.architecture import base_model
from ...models.victim import Victim
from .components import FAMILIES, block_parts, component_mask
from .signature import Signature

MODES = ("reinit", "adapter")


def _masks(victim: Victim, signature: Signature) -> list[tuple[nn.Linear, torch.Tensor]]:
    """Every (linear layer, boolean mask of its entries in the signature), for non-empty masks (a
    layer that fuses several projections appears once per projection, with disjoint masks)."""
    found: list[tuple[nn.Linear, torch.Tensor]] = []
    for b, block in enumerate(block_parts(victim)):
        shapes = {part: projection.weight.shape for part, projection in block.items()}
        for family, per_block in signature.chosen.items():
            if per_block[b].numel() == 0:
                continue
            for part, mask in component_mask(shapes, family, per_block[b], victim.spec).items():
                found.append((block[part].linear, block[part].full_mask(mask)))
    return found


@torch.no_grad()
def reinitialize(victim: Victim, signature: Signature, seed: int) -> int:
    """Redraw the signature's weights from the model's initialiser; returns how many were redrawn."""
    std = float(getattr(base_model(victim.model).config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for module, mask in _masks(victim, signature):
        fresh = torch.randn(module.weight.shape, generator=generator) * std
        weight = module.weight
        weight[mask.to(weight.device)] = fresh[mask].to(weight.device, weight.dtype)
        count += int(mask.sum())
    return count


@torch.no_grad()
def zero_adapter_entries(victim: Victim, signature: Signature, adapter_dir: str | Path) -> int:
    """Subtract the adapter's update at the signature's entries from the merged weights; returns how
    many entries of the update were zeroed (entries of modules the adapter does not adapt are skipped)."""
    updates = adapter_updates(adapter_dir)
    names = {id(module): name for name, module in base_model(victim.model).named_modules()}
    count = 0
    for module, mask in _masks(victim, signature):
        update = updates.get(names[id(module)])
        if update is None:
            continue
        weight = module.weight
        weight -= (update * mask).to(weight.device, weight.dtype)
        count += int(mask.sum())
    return count


def families_with_share(mlp: float, attention: float) -> dict[str, float]:
    """The share of components to neutralize per family."""
    return {family: (mlp if family == "mlp" else attention) for family in FAMILIES}
