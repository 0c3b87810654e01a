"""MLP channels of transformer blocks: how active each is on clean rows, masking them while
measuring or training, and removing them from the weights.

A channel ``c`` of a gated MLP ``down(act(gate(x)) · up(x))`` is input ``c`` of ``down``; it is
removed by zeroing column ``c`` of ``down`` and row ``c`` of ``gate`` and ``up`` (so its
activation is ``act(0) · 0 = 0`` and nothing reads it). In an ungated MLP ``down(act(up(x)))``
(BERT-style encoders) zeroing row ``c`` of ``up`` and its bias leaves ``act(0)``, which the zeroed
column of ``down`` no longer reads. Fused layers (Phi-3's ``gate_up_proj``) are edited through
their projections' rows (:func:`~backdoorlab.models.architecture.block_projections`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import BackdoorLabError
from ...models.architecture import Projection, block_projections, mlp_activation, transformer_layers
from ...models.victim import Victim
from ..pruning.calibration import forward_until, selected
from ..shared.token_batches import Batch, real_tokens


@dataclass(frozen=True)
class MlpChannels:
    """One block's MLP: its activation module and projections (``gate`` only in gated MLPs)."""

    block: int
    act: nn.Module
    gate: Projection | None
    up: Projection
    down: Projection

    @property
    def count(self) -> int:
        return self.down.linear.in_features


def mlp_channels(victim: Victim, blocks: Sequence[int]) -> list[MlpChannels]:
    """The MLPs of ``blocks``, through :mod:`backdoorlab.models.architecture` (every family it describes)."""
    layers = transformer_layers(victim.model, victim.spec)
    found = []
    for index in blocks:
        parts = block_projections(layers[index], victim.spec)
        found.append(MlpChannels(index, mlp_activation(layers[index], victim.spec), parts.get("gate"), parts["up"],
                                 parts["down"]))
    if len({id(c.act) for c in found}) != len(found):
        raise BackdoorLabError("the blocks share one activation module; their channels cannot be masked apart")
    return found


@torch.no_grad()
def mean_abs_activation(victim: Victim, channels: Sequence[MlpChannels], batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Per block, each channel's mean absolute activation over the real tokens of ``batches``."""
    sums = [torch.zeros(c.count, device=c.down.linear.weight.device) for c in channels]
    state: dict[str, Any] = {}

    def hook_for(k: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            sums[k] += selected(args[0], state["tokens"]).abs().float().sum(0)
        return hook

    last = transformer_layers(victim.model, victim.spec)[max(c.block for c in channels)]
    handles = [c.down.linear.register_forward_pre_hook(hook_for(k)) for k, c in enumerate(channels)]
    tokens = 0
    try:
        for batch in tqdm(batches, desc="channel activations", leave=False, disable=len(batches) <= 1):
            state["tokens"] = real_tokens(batch)
            tokens += int(state["tokens"].sum())
            forward_until(victim, batch, last)
    finally:
        for handle in handles:
            handle.remove()
    return [s.cpu() / max(tokens, 1) for s in sums]


def most_dormant(activity: Sequence[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Per block, the ``floor(ratio × channels)`` channels with the lowest activity (ties by index)."""
    return [a.argsort(stable=True)[:int(ratio * a.numel() + 1e-9)] for a in activity]


class ChannelMask:
    """Silences chosen channels by a forward hook on each MLP's activation (``act(gate) → 0``), so
    the network computes as if they were removed, whatever adapters wrap the linear layers."""

    def __init__(self, channels: Sequence[MlpChannels]) -> None:
        self.channels = list(channels)
        self.keep = [torch.ones(c.count, device=c.down.linear.weight.device, dtype=c.down.linear.weight.dtype)
                     for c in channels]

    def set(self, pruned: Sequence[torch.Tensor]) -> None:
        for keep, indices in zip(self.keep, pruned):
            keep.fill_(1)
            keep[indices.to(keep.device)] = 0

    @contextmanager
    def active(self) -> Iterator["ChannelMask"]:
        def hook_for(keep: torch.Tensor) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
                return output * keep.to(output.dtype)
            return hook

        handles = [c.act.register_forward_hook(hook_for(keep)) for c, keep in zip(self.channels, self.keep)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


@torch.no_grad()
def remove_channels(channels: Sequence[MlpChannels], pruned: Sequence[torch.Tensor]) -> int:
    """Zero each pruned channel's ``down`` column and its ``gate``/``up`` rows (and their biases);
    returns how many channels were removed."""
    for c, indices in zip(channels, pruned):
        c.down.linear.weight[:, indices.to(c.down.linear.weight.device)] = 0
        for projection in (c.gate, c.up):
            if projection is None:
                continue
            rows = indices.to(projection.linear.weight.device) + projection.start
            projection.linear.weight[rows] = 0
            if projection.linear.bias is not None:
                projection.linear.bias[rows] = 0
    return sum(int(indices.numel()) for indices in pruned)
