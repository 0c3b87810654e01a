"""Named hook points for reading and editing activations of plain Hugging Face models.

Hook point names (per layer ``l``), in the spirit of TransformerLens' ``run_with_hooks``:

- ``resid_pre``  — the residual stream entering block ``l`` ``[batch, seq, hidden]``;
- ``attn_in``    — what attention reads: the post-norm residual in pre-norm decoders, the block
  input in post-norm encoders ``[batch, seq, hidden]``;
- ``head_out``   — every head's output before the output projection ``[batch, seq, heads, head_dim]``;
- ``attn_out``   — the attention output projection's result, what attention adds to the stream
  (before the post-attention norm in post-norm encoders) ``[batch, seq, hidden]``;
- ``resid_post`` — the residual stream leaving block ``l`` ``[batch, seq, hidden]``.

A hook function receives the activation and returns ``None`` (read only) or a tensor of the same
shape that replaces it. Hooks are removed when the context exits, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import BackdoorLabError
from .architecture import (
    ArchitectureSpec,
    attention_input_norm,
    attention_output_projection,
    transformer_layers,
)

HOOK_POINTS = ("resid_pre", "attn_in", "head_out", "attn_out", "resid_post")
HookFn = Callable[[torch.Tensor], torch.Tensor | None]
HookKey = tuple[int, str]


def _check_key(key: HookKey, spec: ArchitectureSpec) -> None:
    layer, point = key
    if point not in HOOK_POINTS:
        raise BackdoorLabError(f"unknown hook point {point!r}; known: {', '.join(HOOK_POINTS)}")
    if not 0 <= layer < spec.num_layers:
        raise BackdoorLabError(f"layer {layer} out of range; the model has {spec.num_layers} layers (0-based)")


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


def _register(model: nn.Module, spec: ArchitectureSpec, layer_index: int, point: str, fn: HookFn):
    layer = transformer_layers(model, spec)[layer_index]
    if point == "resid_pre":
        def pre(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        return layer.register_forward_pre_hook(pre, with_kwargs=True)
    if point == "resid_post":
        def post(module, args, output):
            new = fn(_first(output))
            return None if new is None else _replace_first(output, new)
        return layer.register_forward_hook(post)
    if point == "attn_in":
        norm = attention_input_norm(layer, spec)
        if norm is not None:
            def after_norm(module, args, output):
                return fn(output)
            return norm.register_forward_hook(after_norm)
        return _register(model, spec, layer_index, "resid_pre", fn)
    projection = attention_output_projection(layer, spec)
    if point == "attn_out":
        def after_projection(module, args, output):
            return fn(output)
        return projection.register_forward_hook(after_projection)

    def heads(module, args):
        flat = args[0]
        split = flat.view(*flat.shape[:-1], spec.num_heads, spec.head_dim)
        new = fn(split)
        if new is None:
            return None
        return (new.reshape(flat.shape).to(flat.dtype), *args[1:])
    return projection.register_forward_pre_hook(heads)


@contextmanager
def hooks(model: nn.Module, spec: ArchitectureSpec, fns: Mapping[HookKey, HookFn | list[HookFn]]) -> Iterator[None]:
    """Attach ``fns`` (``{(layer, point): fn or [fn, ...]}``) for the duration of the block."""
    handles = []
    try:
        for key, value in fns.items():
            _check_key(key, spec)
            for fn in value if isinstance(value, list) else [value]:
                handles.append(_register(model, spec, key[0], key[1], fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


class ActivationCache(dict):
    """``{(layer, point): tensor}`` filled by :func:`recording` (tensors detached, on CPU)."""


def recording(cache: ActivationCache, key: HookKey, select: Callable[[torch.Tensor], torch.Tensor] | None = None) -> HookFn:
    """A read-only hook that stores ``select(activation)`` (default: all of it) under ``key``.

    Repeated calls (several batches) are concatenated along the batch dimension.
    """
    def fn(activation: torch.Tensor) -> None:
        value = (select(activation) if select else activation).detach().float().cpu()
        cache[key] = torch.cat([cache[key], value]) if key in cache else value
        return None
    return fn
