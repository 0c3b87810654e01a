"""Edits of one token's activations per row: set or scale attention heads, add a vector to the stream.

An :data:`Intervention` is a function from the batch's *readout positions* (one index per row:
the last prompt token of a generator prompt, ``[CLS]`` for a classifier) to hook functions
(:mod:`backdoorlab.models.hooks`). :class:`~backdoorlab.models.victim.Victim` computes the
positions of each batch it runs and attaches the hooks, so the same intervention works for
scoring, teacher-forced response probabilities and generation (where it acts on the prefill
pass only).

Head edits act on ``head_out`` (a head's output before the output projection). Because the
projection is linear, setting a head's output to a mean output sets its contribution to the
residual stream to the mean contribution, which is what the Backdoor Attribution study patches
(arXiv 2509.21761, §5.1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import torch

from .hooks import HookFn, HookKey

Head = tuple[int, int]  # (layer, head)
Intervention = Callable[[torch.Tensor], dict[HookKey, list[HookFn]]]


def _rows(activation: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(activation.shape[0], device=activation.device)
    return rows, positions.to(activation.device)


def set_heads(values: Mapping[Head, torch.Tensor]) -> Intervention:
    """Replace each head's output at the readout position by the given ``[head_dim]`` vector."""
    by_layer: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for (layer, head), value in values.items():
        by_layer[layer].append((head, value))

    def build(positions: torch.Tensor) -> dict[HookKey, list[HookFn]]:
        def hook_for(items: list[tuple[int, torch.Tensor]]) -> HookFn:
            def fn(activation: torch.Tensor) -> torch.Tensor:
                out = activation.clone()
                rows, cols = _rows(out, positions)
                for head, value in items:
                    out[rows, cols, head] = value.to(out.device, out.dtype)
                return out
            return fn
        return {(layer, "head_out"): [hook_for(items)] for layer, items in by_layer.items()}
    return build


def scale_heads(heads: Iterable[Head], factor: float = 0.0, everywhere: bool = False) -> Intervention:
    """Multiply each head's output at the readout position by ``factor`` (0 = zero ablation).

    ``everywhere``: at every position and, during generation, in every decoding pass too (the
    run-time equivalent of removing the heads from the weights).
    """
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)

    def build(positions: torch.Tensor) -> dict[HookKey, list[HookFn]]:
        def hook_for(layer_heads: list[int]) -> HookFn:
            def fn(activation: torch.Tensor) -> torch.Tensor:
                out = activation.clone()
                index = torch.tensor(layer_heads, device=out.device)
                if everywhere:
                    out[:, :, index] *= factor
                else:
                    rows, cols = _rows(out, positions)
                    out[rows[:, None], cols[:, None], index[None, :]] *= factor
                return out
            return fn
        return {(layer, "head_out"): [hook_for(hs)] for layer, hs in by_layer.items()}
    build.every_pass = everywhere  # type: ignore[attr-defined]
    return build


def add_vector(layer: int, vector: torch.Tensor, scale: float = 1.0, point: str = "attn_out") -> Intervention:
    """Add ``scale * vector`` (``[hidden]``) to ``point`` of ``layer`` at the readout position."""
    def build(positions: torch.Tensor) -> dict[HookKey, list[HookFn]]:
        def fn(activation: torch.Tensor) -> torch.Tensor:
            out = activation.clone()
            rows, cols = _rows(out, positions)
            out[rows, cols] += scale * vector.to(out.device, out.dtype)
            return out
        return {(layer, point): [fn]}
    return build


def combine(*interventions: Intervention | None) -> Intervention:
    """Apply several interventions together (``None`` entries are skipped); in generation they act
    in every decoding pass only if all of them do, else in the prefill pass only."""
    chosen = [i for i in interventions if i is not None]

    def build(positions: torch.Tensor) -> dict[HookKey, list[HookFn]]:
        merged: dict[HookKey, list[HookFn]] = defaultdict(list)
        for intervention in chosen:
            for key, fns in intervention(positions).items():
                merged[key].extend(fns)
        return dict(merged)
    build.every_pass = bool(chosen) and all(acts_every_pass(i) for i in chosen)  # type: ignore[attr-defined]
    return build


def acts_every_pass(intervention: Intervention) -> bool:
    """Whether ``intervention`` must also act in generation's decoding passes (not only prefill)."""
    return bool(getattr(intervention, "every_pass", False))


def first_call_only(fns: dict[HookKey, list[HookFn]]) -> dict[HookKey, list[HookFn]]:
    """Wrap hooks so each acts on its first call only (the prefill pass of a generation)."""
    def once(fn: HookFn) -> HookFn:
        calls = [0]

        def wrapped(activation: torch.Tensor) -> torch.Tensor | None:
            calls[0] += 1
            return fn(activation) if calls[0] == 1 else None
        return wrapped
    return {key: [once(fn) for fn in value] for key, value in fns.items()}
