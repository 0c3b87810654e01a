"""The components BD-VAX scores, and each component's slice of a weight update.

BD-VAX (arXiv 2603.13461, §3.2) scores each component of each block: an attention head in the
query/key/value/output projections, and a channel of the MLP (row ``j`` of ``gate_proj`` and
``up_proj``, column ``j`` of ``down_proj``). A component's update is the concatenation of its
slices of the block's weight updates. With grouped-query attention a key/value head is shared by
several query heads, so heads come in two families: ``query`` heads (rows of ``q_proj`` and
columns of ``o_proj``) and ``key-value`` heads (rows of ``k_proj`` and ``v_proj``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...errors import BackdoorLabError
from ...models.architecture import ArchitectureSpec, Projection, block_projections, transformer_layers
from ...models.victim import Victim

#: The projections of a decoder block BD-VAX reads, by part name (:func:`~backdoorlab.models.architecture.block_projections`).
PARTS = ("q", "k", "v", "o", "gate", "up", "down")
#: Component families: which parts each reads.
FAMILIES = {"mlp": ("gate", "up", "down"), "query": ("q", "o"), "key-value": ("k", "v")}

#: One block's updates (or weights), by part name.
BlockTensors = Mapping[str, torch.Tensor]


def block_parts(victim: Victim) -> list[dict[str, Projection]]:
    """Per block, its projections by part name (decoders with gated MLPs: Llama, Mistral, Qwen, Gemma, Phi-3)."""
    if victim.spec.family != "decoder":
        raise BackdoorLabError("BD-VAX edits decoder blocks (attention heads and gated MLP channels); "
                               f"{victim.spec.model_type} is not a decoder")
    return [block_projections(layer, victim.spec) for layer in transformer_layers(victim.model, victim.spec)]


def block_weights(victim: Victim) -> list[dict[str, torch.Tensor]]:
    """Per block, a detached fp32 CPU copy of each projection's weight."""
    return [{part: projection.weight.detach().float().cpu().clone() for part, projection in block.items()}
            for block in block_parts(victim)]


def component_count(spec: ArchitectureSpec, family: str, channels: int) -> int:
    """How many components of ``family`` a block has (``channels``: the MLP's width)."""
    return {"mlp": channels, "query": spec.num_heads, "key-value": spec.num_kv_heads}[family]


def component_vectors(update: BlockTensors, family: str, spec: ArchitectureSpec) -> torch.Tensor:
    """``[components, size]``: each component's slices of one block's update, concatenated."""
    if family == "mlp":
        return torch.cat([update["gate"], update["up"], update["down"].T], dim=1)
    d = spec.head_dim
    if family == "query":
        heads = spec.num_heads
        rows = update["q"].reshape(heads, d * update["q"].shape[1])
        cols = update["o"].T.reshape(heads, d * update["o"].shape[0])
        return torch.cat([rows, cols], dim=1)
    if family == "key-value":
        heads = spec.num_kv_heads
        return torch.cat([update["k"].reshape(heads, -1), update["v"].reshape(heads, -1)], dim=1)
    raise BackdoorLabError(f"unknown component family {family!r}; known: {', '.join(FAMILIES)}")


def component_mask(shape_by_part: Mapping[str, torch.Size], family: str, indices: torch.Tensor,
                   spec: ArchitectureSpec) -> dict[str, torch.Tensor]:
    """Boolean masks, per part of ``family``, of the entries that belong to components ``indices``."""
    masks = {part: torch.zeros(shape_by_part[part], dtype=torch.bool) for part in FAMILIES[family]}
    index = indices.long()
    if family == "mlp":
        masks["gate"][index] = True
        masks["up"][index] = True
        masks["down"][:, index] = True
        return masks
    d = spec.head_dim
    for i in index.tolist():
        span = slice(i * d, (i + 1) * d)
        if family == "query":
            masks["q"][span] = True
            masks["o"][:, span] = True
        else:
            masks["k"][span] = True
            masks["v"][span] = True
    return masks
