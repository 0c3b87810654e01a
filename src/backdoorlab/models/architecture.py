"""Where the layers, attention heads and norms live in each supported architecture family.

Per-head outputs are read at the input of the attention output projection (``o_proj`` in the
Llama family, ``attention.output.dense`` in BERT): there the hidden vector is the concatenation
of the heads' outputs, so the slice ``[h * head_dim:(h + 1) * head_dim]`` is head ``h``'s
contribution before it is projected into the residual stream. Grouped-query attention shares
key/value heads between query heads but still yields ``num_attention_heads`` separate slices here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import BackdoorLabError

#: model_type → family. Decoders use pre-norm blocks; encoders post-norm BERT blocks.
DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta"}


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
