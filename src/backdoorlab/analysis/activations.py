"""Read one hook point of every layer at each prompt's readout token (last prompt token / ``[CLS]``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.records import Example
from ..models.victim import Victim, batched


@torch.inference_mode()
def readout_activations(victim: Victim, prompts: Sequence[Example | str], point: str,
                        batch_size: int = 16) -> torch.Tensor:
    """``point`` activations of every layer at the readout token: ``[layers, N, ...]`` (float32, CPU)."""
    layers = victim.spec.num_layers
    victim.model.eval()
    chunks = []
    for chunk in batched(list(prompts), batch_size, point):
        batch = victim.encode(chunk)
        positions = victim.readout_positions(batch)
        taken: dict[int, torch.Tensor] = {}

        def keep(layer: int):  # noqa: ANN202
            def fn(activation: torch.Tensor) -> None:
                index = torch.arange(activation.shape[0], device=activation.device)
                taken[layer] = activation[index, positions.to(activation.device)].float().cpu()
            return fn
        with victim.hooked({(layer, point): keep(layer) for layer in range(layers)}):
            victim.forward(batch)
        chunks.append(torch.stack([taken[layer] for layer in range(layers)]))
    return torch.cat(chunks, dim=1)
