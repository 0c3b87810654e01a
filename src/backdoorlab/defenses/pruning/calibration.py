"""Calibration passes: clean rows as token batches, and the residual stream entering each block.

Rows come as token batches (:func:`~backdoorlab.defenses.shared.token_batches.token_batches`:
tokenized as for training, sorted by length, padded); every statistic is taken over real tokens
only (``tokens``: the attention mask), never over padding.

:class:`BlockInputs` runs a model block by block, as the official Wanda code does: one pass
records what the model hands each block (the residual stream entering block 0, and the masks and
position embeddings every block gets) with the blocks themselves skipped, then blocks are run one at a time on the stored stream,
so a block can be measured, edited and re-run before the next one sees its output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import BackdoorLabError
from ...models.architecture import transformer_layers
from ...models.victim import Victim
from ..shared.token_batches import Batch, real_tokens

Call = tuple[tuple[Any, ...], dict[str, Any]]  # a block's arguments after the hidden states, and its keywords


class _Stop(Exception):
    """Ends a forward pass early once everything needed has been recorded."""


def forward_until(victim: Victim, batch: Batch, block: nn.Module | None) -> None:
    """Run ``victim`` on ``batch`` up to and including ``block`` (``None``: until a block raises
    :class:`_Stop`); later blocks and the head never run."""
    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _Stop

    handle = block.register_forward_hook(stop) if block is not None else None
    try:
        extra = {"use_cache": False} if victim.is_generator else {}
        victim.forward(batch, **extra)
    except _Stop:
        pass
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def _skipped(blocks: Sequence[nn.Module], calls: list[Call]) -> Iterator[None]:
    """While active, each block only appends its call to ``calls`` (all its arguments, hidden states
    first) and passes its input on unchanged; the last block ends the pass."""
    def recorder(index: int) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            calls.append(((hidden, *args[1:]), kwargs))
            if index == len(blocks) - 1:
                raise _Stop
            return hidden
        return forward

    for index, block in enumerate(blocks):
        block.forward = recorder(index)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def block_output(block: nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    """Run one block on ``hidden`` with the arguments the model gave it; its new hidden states."""
    args, kwargs = call
    output = block(hidden, *args, **kwargs)
    return output[0] if isinstance(output, tuple) else output


@dataclass
class BlockInputs:
    """Per batch: the residual stream entering the current block, the real-token mask, and every
    block's other arguments (attention mask, position embeddings…) as the model passed them."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)
    calls: list[list[Call]] = field(default_factory=list)
    _current: int = field(default=0, repr=False)

    @classmethod
    @torch.no_grad()
    def record(cls, victim: Victim, batches: Sequence[Batch]) -> "BlockInputs":
        """One pass over ``batches`` recording what the model hands each block. The blocks are
        skipped while recording (what a model passes them does not depend on their outputs), and
        neither the final norm nor the head runs."""
        blocks = list(transformer_layers(victim.model, victim.spec))
        inputs = cls()
        for batch in tqdm(batches, desc="recording block inputs", leave=False, disable=len(batches) <= 1):
            calls: list[Call] = []
            with _skipped(blocks, calls):
                forward_until(victim, batch, None)
            if len(calls) != len(blocks):
                raise BackdoorLabError(f"the model called {len(calls)} of its {len(blocks)} blocks; cannot run it "
                                       "block by block")
            inputs.hidden.append(calls[0][0][0])
            inputs.calls.append([(args[1:], kwargs) for args, kwargs in calls])
            inputs.tokens.append(real_tokens(batch))
        return inputs

    def run(self, block: nn.Module, index: int, update: bool) -> None:
        """Run block ``index`` on every batch (hooks on it see each batch's real tokens through
        :meth:`current_tokens`); with ``update``, its outputs become the stream entering the next block."""
        for b, (hidden, calls) in enumerate(zip(self.hidden, self.calls)):
            self._current = b
            output = block_output(block, hidden, calls[index])
            if update:
                self.hidden[b] = output

    def current_tokens(self) -> torch.Tensor:
        return self.tokens[self._current]

    def token_count(self) -> int:
        return int(sum(t.sum() for t in self.tokens))


@contextmanager
def input_sq_norms(linears: dict[str, nn.Linear], tokens: Callable[[], torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Accumulate, per linear layer, the squared L2 norm of each input feature over real tokens
    (``tokens()`` gives the current batch's ``[batch, seq]`` mask)."""
    sums = {name: torch.zeros(linear.in_features, device=linear.weight.device) for name, linear in linears.items()}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            sums[name] += selected(args[0], tokens()).float().pow(2).sum(0)
        return hook

    handles = [linear.register_forward_pre_hook(hook_for(name)) for name, linear in linears.items()]
    try:
        yield sums
    finally:
        for handle in handles:
            handle.remove()


def selected(activations: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The ``[n_real_tokens, features]`` rows of ``[batch, seq, features]`` activations at real tokens."""
    if activations.shape[:-1] != tokens.shape:
        raise BackdoorLabError(f"a linear layer got inputs of shape {tuple(activations.shape)} for a batch of "
                               f"{tuple(tokens.shape)} tokens; only dense transformer blocks are supported")
    return activations[tokens.to(activations.device)]
