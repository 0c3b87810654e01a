"""Permanent weight edits that turn attribution findings into a mitigated model.

- :func:`remove_heads`: zero a head's columns of its layer's attention output projection, so the
  head no longer writes into the residual stream at any position (the weight form of the study's
  head ablation, arXiv 2509.21761 §5.2).
- :func:`project_out`: remove a direction from everything that writes into the residual stream
  (embeddings, attention and MLP output projections), ``W ← (I − v̂ v̂ᵀ) W``; the weight form of
  subtracting the backdoor vector (§5.3), as in directional ablation (Arditi et al. 2024).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ...errors import BackdoorLabError
from ...models.architecture import (
    attention_output_projection,
    embedding_tables,
    mlp_output_projection,
    transformer_layers,
)
from ...models.interventions import Head
from ...models.victim import Victim


@torch.no_grad()
def remove_heads(victim: Victim, heads: Iterable[Head]) -> int:
    """Zero the output-projection columns of ``heads``; returns how many heads were removed."""
    spec = victim.spec
    layers = transformer_layers(victim.model, spec)
    count = 0
    for layer, head in heads:
        if not (0 <= layer < spec.num_layers and 0 <= head < spec.num_heads):
            raise BackdoorLabError(f"head ({layer}, {head}) does not exist in a {spec.num_layers}×{spec.num_heads} model")
        weight = attention_output_projection(layers[layer], spec).weight
        weight[:, head * spec.head_dim:(head + 1) * spec.head_dim] = 0
        count += 1
    return count


@torch.no_grad()
def project_out(victim: Victim, direction: torch.Tensor) -> None:
    """Remove the unit direction of ``direction`` (``[hidden]``) from every residual-stream writer."""
    spec = victim.spec
    norm = direction.float().norm()
    if direction.shape != (spec.hidden_size,) or not torch.isfinite(norm) or norm == 0:
        raise BackdoorLabError(f"the direction must be a non-zero vector of size {spec.hidden_size}")
    unit = (direction.float() / norm)
    for table in embedding_tables(victim.model, spec):
        w = table.weight
        u = unit.to(w.device, w.dtype)
        w -= torch.outer(w @ u, u)
    for layer in transformer_layers(victim.model, spec):
        for module in (attention_output_projection(layer, spec), mlp_output_projection(layer, spec)):
            w = module.weight
            u = unit.to(w.device, w.dtype)
            w -= torch.outer(u, u @ w)
            if getattr(module, "bias", None) is not None:
                module.bias -= u * (u @ module.bias)
