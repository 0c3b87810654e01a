"""The backdoor vector, arXiv 2509.21761 §5.3.

``v = Σ_{(l, h) ∈ top-k} W_O^{(l, h)} ā(l, h)``: the summed mean contributions of the top
attributed heads to the residual stream, where ``W_O^{(l, h)}`` is head ``h``'s slice of layer
``l``'s attention output projection. Adding ``v`` to one layer's attention output at the last
prompt token (prefill only) of a clean prompt should switch the backdoor on; subtracting it from a
triggered prompt should switch it off. The sweep tries every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import BackdoorLabError
from ..models.architecture import attention_output_projection, transformer_layers
from ..models.interventions import Head, add_vector
from ..models.victim import Victim
from .effects import backdoor_rate, clean_utility
from .subject import AnalysisSubject


def head_contribution(victim: Victim, layer: int, head: int, output: torch.Tensor) -> torch.Tensor:
    """What head ``(layer, head)`` adds to the residual stream for its output ``[head_dim]``."""
    spec = victim.spec
    projection = attention_output_projection(transformer_layers(victim.model, spec)[layer], spec)
    weight = projection.weight[:, head * spec.head_dim:(head + 1) * spec.head_dim].detach().float().cpu()
    return weight @ output.float().cpu()


def backdoor_vector(victim: Victim, means: torch.Tensor, heads: Sequence[Head]) -> torch.Tensor:
    """``v``: the summed residual-stream contributions of ``heads`` at their triggered means."""
    if not heads:
        raise BackdoorLabError("the backdoor vector needs at least one head")
    return torch.stack([head_contribution(victim, layer, head, means[layer, head]) for layer, head in heads]).sum(0)


def vector_sweep(subject: AnalysisSubject, vector: torch.Tensor, layers: Sequence[int], *, scale: float = 1.0,
                 max_new_tokens: int = 32, batch_size: int = 16) -> list[dict[str, Any]]:
    """Per layer: ASR of clean prompts + v, ASR of triggered prompts − v, clean utility with − v."""
    clean, triggered, _ = subject.asr_rows()
    points = []
    for layer in tqdm(layers, desc="vector layers", leave=False):
        on, off = add_vector(layer, vector, scale), add_vector(layer, vector, -scale)
        points.append({
            "layer": layer,
            "asr_clean_plus_v": backdoor_rate(subject, clean, on, max_new_tokens=max_new_tokens, batch_size=batch_size),
            "asr_triggered_minus_v": backdoor_rate(subject, triggered, off, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size),
            **{f"{k}_minus_v": v for k, v in clean_utility(subject, off, batch_size).items()},
        })
    return points
