"""MLP channels of decoder blocks: how active each is on clean rows, masking them while measuring
or training, and removing them from the weights.

A channel ``c`` of a gated MLP ``down(act(gate(x)) · up(x))`` is input ``c`` of ``down_proj``; it
is removed by zeroing column ``c`` of ``down_proj`` and row ``c`` of ``gate_proj`` and ``up_proj``
(so its activation is ``act(0) · 0 = 0`` and nothing reads it).
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
from ...models.architecture import transformer_layers
from ...models.victim import Victim
from ..pruning.calibration import forward_until, selected
from ..shared.token_batches import Batch, real_tokens


@dataclass(frozen=True)
class MlpChannels:
    """The modules of one block's gated MLP."""

    block: int
    act: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear

    @property
    def count(self) -> int:
        return self.down.in_features


def mlp_channels(victim: Victim, blocks: Sequence[int]) -> list[MlpChannels]:
    """The gated MLPs of ``blocks`` (Llama, Mistral, Qwen and Gemma blocks have them)."""
    layers = transformer_layers(victim.model, victim.spec)
    found = []
    for index in blocks:
        mlp = getattr(layers[index], "mlp", None)
        parts = [getattr(mlp, name, None) for name in ("act_fn", "gate_proj", "up_proj", "down_proj")]
        if any(part is None for part in parts):
            raise BackdoorLabError(f"block {index} has no gated MLP (mlp.gate_proj, up_proj, down_proj and act_fn); "
                                   "MLP channels can only be pruned in Llama-style decoder blocks")
        found.append(MlpChannels(index, *parts))  # type: ignore[arg-type]
    if len({id(c.act) for c in found}) != len(found):
        raise BackdoorLabError("the blocks share one activation module; their channels cannot be masked apart")
    return found


@torch.no_grad()
def mean_abs_activation(victim: Victim, channels: Sequence[MlpChannels], batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Per block, each channel's mean absolute activation over the real tokens of ``batches``."""
    sums = [torch.zeros(c.count, device=c.down.weight.device) for c in channels]
    state: dict[str, Any] = {}

    def hook_for(k: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            sums[k] += selected(args[0], state["tokens"]).abs().float().sum(0)
        return hook

    last = transformer_layers(victim.model, victim.spec)[max(c.block for c in channels)]
    handles = [c.down.register_forward_pre_hook(hook_for(k)) for k, c in enumerate(channels)]
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
        self.keep = [torch.ones(c.count, device=c.down.weight.device, dtype=c.down.weight.dtype) for c in channels]

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
    """Zero each pruned channel's ``down_proj`` column and ``gate_proj``/``up_proj`` rows (and their
    biases); returns how many channels were removed."""
    for c, indices in zip(channels, pruned):
        c.down.weight[:, indices.to(c.down.weight.device)] = 0
        for linear in (c.gate, c.up):
            linear.weight[indices.to(linear.weight.device)] = 0
            if linear.bias is not None:
                linear.bias[indices.to(linear.bias.device)] = 0
    return sum(int(indices.numel()) for indices in pruned)
