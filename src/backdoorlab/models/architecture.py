"""Where the layers, attention heads and norms live in each supported architecture family.

Per-head outputs are read at the input of the attention output projection (``o_proj`` in the
Llama family, ``attention.output.dense`` in BERT): there the hidden vector is the concatenation
of the heads' outputs, so the slice ``[h * head_dim:(h + 1) * head_dim]`` is head ``h``'s
contribution before it is projected into the residual stream. Grouped-query attention shares
key/value heads between query heads but still yields ``num_attention_heads`` separate slices here.

:func:`block_projections` names each projection of a block (``q``, ``k``, ``v``, ``o``, the MLP's
``gate``, ``up`` and ``down``) as rows of a linear layer, so that methods that edit heads or MLP
channels work alike on separate layers (Llama, Mistral, Qwen, Gemma; BERT, RoBERTa, DeBERTa-v2)
and fused ones (Phi-3's ``qkv_proj`` and ``gate_up_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BackdoorLabError

#: model_type → family. Decoders use pre-norm blocks; encoders post-norm BERT blocks.
DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"}
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "deberta-v2"}
#: Decoders whose query/key/value and gate/up projections are each one fused linear layer.
FUSED_DECODER_TYPES = {"phi3"}
#: The attention projections of an encoder block, by part, in the names BERT-style and DeBERTa-style blocks use.
_ENCODER_QKV = {"q": ("query", "query_proj"), "k": ("key", "key_proj"), "v": ("value", "value_proj")}


@dataclass(frozen=True)
class ArchitectureSpec:
    """Module paths and head geometry of one loaded model."""

    family: str  # "decoder" or "encoder"
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads


def base_model(model: nn.Module) -> nn.Module:
    """Unwrap a peft model to the underlying transformers model."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def describe(model: nn.Module) -> ArchitectureSpec:
    """Inspect ``model`` (plain or peft-wrapped) and return its :class:`ArchitectureSpec`."""
    config: Any = base_model(model).config
    config = getattr(config, "text_config", None) or config
    model_type = getattr(config, "model_type", "?")
    if model_type in DECODER_TYPES:
        family = "decoder"
    elif model_type in ENCODER_TYPES:
        family = "encoder"
    else:
        supported = ", ".join(sorted(DECODER_TYPES | ENCODER_TYPES))
        raise BackdoorLabError(
            f"unsupported architecture {model_type!r}; backdoorlab supports {supported}"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ArchitectureSpec(
        family=family,
        model_type=model_type,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
    )


def transformer_layers(model: nn.Module, spec: ArchitectureSpec) -> nn.ModuleList:
    """The list of transformer blocks."""
    inner = base_model(model)
    if spec.family == "decoder":
        return inner.model.layers
    encoder_owner = getattr(inner, inner.base_model_prefix, inner)
    return encoder_owner.encoder.layer


def attention_output_projection(layer: nn.Module, spec: ArchitectureSpec) -> nn.Module:
    """The linear layer whose input is the concatenation of the heads' outputs."""
    if spec.family == "decoder":
        return layer.self_attn.o_proj
    return layer.attention.output.dense


def attention_input_norm(layer: nn.Module, spec: ArchitectureSpec) -> nn.Module | None:
    """The norm applied to the residual stream before attention (``None`` for post-norm encoders)."""
    return layer.input_layernorm if spec.family == "decoder" else None


def mlp_output_projection(layer: nn.Module, spec: ArchitectureSpec) -> nn.Module:
    """The linear layer that writes the MLP's output (``down_proj`` / BERT's ``output.dense``)."""
    return layer.mlp.down_proj if spec.family == "decoder" else layer.output.dense


def embedding_tables(model: nn.Module, spec: ArchitectureSpec) -> list[nn.Module]:
    """The embedding tables whose rows are written into the residual stream."""
    inner = base_model(model)
    if spec.family == "decoder":
        return [inner.model.embed_tokens]
    owner = getattr(inner, inner.base_model_prefix, inner).embeddings
    return [m for m in (owner.word_embeddings, getattr(owner, "position_embeddings", None),
                        getattr(owner, "token_type_embeddings", None)) if m is not None]


@dataclass(frozen=True)
class Projection:
    """One projection of a block: rows ``[start, stop)`` of a linear layer (all its rows unless the
    layer fuses several projections)."""

    linear: nn.Linear
    start: int
    stop: int

    @property
    def weight(self) -> torch.Tensor:
        """The projection's rows of the weight (a view: writing it writes the layer)."""
        return self.linear.weight[self.start:self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.linear.bias is None else self.linear.bias[self.start:self.stop]

    def full_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` over this projection's rows, placed in a mask of the whole layer's weight."""
        whole = torch.zeros(self.linear.weight.shape, dtype=torch.bool)
        whole[self.start:self.stop] = mask
        return whole


def _whole(module: Any, where: str, spec: ArchitectureSpec) -> Projection:
    if not isinstance(module, nn.Linear):
        raise BackdoorLabError(f"a {spec.model_type} block has no linear layer at {where}; backdoorlab's block "
                               "layout for this architecture does not match the loaded model")
    return Projection(module, 0, module.out_features)


def _split(module: Any, where: str, sizes: dict[str, int], spec: ArchitectureSpec) -> dict[str, Projection]:
    whole = _whole(module, where, spec)
    if sum(sizes.values()) != whole.stop:
        raise BackdoorLabError(f"{spec.model_type}'s fused {where} has {whole.stop} rows, not the "
                               f"{' + '.join(str(n) for n in sizes.values())} its config implies")
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = Projection(whole.linear, start, start + size)
        start += size
    return parts


def block_projections(layer: nn.Module, spec: ArchitectureSpec) -> dict[str, Projection]:
    """The projections of one transformer block by part: ``q``, ``k``, ``v``, ``o``, and the MLP's
    ``up`` and ``down`` with, in gated decoder MLPs, ``gate``."""
    if spec.family == "encoder":
        attention = getattr(layer, "attention", None)
        inner = getattr(attention, "self", None)
        parts = {}
        for part, names in _ENCODER_QKV.items():
            found = next((getattr(inner, n) for n in names if hasattr(inner, n)), None)
            parts[part] = _whole(found, f"attention.self.{names[0]}", spec)
        parts["o"] = _whole(getattr(getattr(attention, "output", None), "dense", None), "attention.output.dense", spec)
        parts["up"] = _whole(getattr(getattr(layer, "intermediate", None), "dense", None), "intermediate.dense", spec)
        parts["down"] = _whole(getattr(getattr(layer, "output", None), "dense", None), "output.dense", spec)
        return parts
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    down = _whole(getattr(mlp, "down_proj", None), "mlp.down_proj", spec)
    if spec.model_type in FUSED_DECODER_TYPES:
        q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        parts = _split(getattr(attention, "qkv_proj", None), "self_attn.qkv_proj", {"q": q, "k": kv, "v": kv}, spec)
        channels = down.linear.in_features
        parts.update(_split(getattr(mlp, "gate_up_proj", None), "mlp.gate_up_proj",
                            {"gate": channels, "up": channels}, spec))
    else:
        parts = {part: _whole(getattr(attention, f"{part}_proj", None), f"self_attn.{part}_proj", spec)
                 for part in ("q", "k", "v")}
        parts.update({part: _whole(getattr(mlp, f"{part}_proj", None), f"mlp.{part}_proj", spec)
                      for part in ("gate", "up")})
    parts["o"] = _whole(getattr(attention, "o_proj", None), "self_attn.o_proj", spec)
    parts["down"] = down
    return parts


def mlp_activation(layer: nn.Module, spec: ArchitectureSpec) -> nn.Module:
    """The activation module whose output is the MLP's channels before ``down`` (in gated MLPs, the
    activated gate, which the ``up`` projection then scales)."""
    if spec.family == "encoder":
        found = getattr(getattr(layer, "intermediate", None), "intermediate_act_fn", None)
    else:
        mlp = getattr(layer, "mlp", None)
        found = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
    if not isinstance(found, nn.Module):
        raise BackdoorLabError(f"a {spec.model_type} block has no MLP activation module to read or mask its "
                               "channels by; this step does not support the architecture")
    return found
