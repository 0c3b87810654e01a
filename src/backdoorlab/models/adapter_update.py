"""A LoRA adapter's weight update, read from its files: ``ΔW = scaling · B A`` per adapted module.

A suspect distributed as a base model plus a peft LoRA adapter carries its fine-tuning as that
update; the merged model's weight is ``W_base + ΔW``. :func:`adapter_updates` reads the update of
every adapted module from ``adapter_model.safetensors`` (never a pickle) and names each module as
it is named in the merged model (``model.layers.0.mlp.gate_proj``), so an edit of the update can
be applied to the merged weights: :func:`subtract_update` removes chosen parts of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import BackdoorLabError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _scaling(config: dict, path: Path) -> float:
    unsupported = [key for key in ("use_dora", "fan_in_fan_out") if config.get(key)]
    unsupported += [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    if unsupported:
        raise BackdoorLabError(f"{path}: adapters with {', '.join(unsupported)} are not supported; only plain LoRA "
                               "(one rank and alpha for every module) can be read as a weight update")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise BackdoorLabError(f"{path}: {ADAPTER_CONFIG} must give a positive integer r and a lora_alpha")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def adapter_updates(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """Module name (as in the merged model) → its LoRA update ``scaling · B @ A`` (``[out, in]``, fp32)."""
    from safetensors import safe_open

    folder = Path(adapter_dir)
    config_file, weights_file = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise BackdoorLabError(f"{folder} is not a LoRA adapter: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                               "(safetensors; pickled adapters are not read)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise BackdoorLabError(f"{config_file} is not valid JSON: {error}") from None
    scaling = _scaling(config, folder)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(weights_file), framework="pt") as handle:
        for key in handle.keys():
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    module = key.split(marker)[0].removeprefix(_PREFIX)
                    factors.setdefault(module, {})[part] = handle.get_tensor(key).float()
    if not factors:
        raise BackdoorLabError(f"{weights_file} holds no lora_A/lora_B weights")
    updates = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise BackdoorLabError(f"{weights_file}: module {module} has only {', '.join(pair)}")
        updates[module] = scaling * (pair["lora_B"] @ pair["lora_A"])
    return updates


def module_named(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model`` (a clear error when the adapter names one the model lacks)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise BackdoorLabError(f"the adapter updates module {name!r}, which this model does not have; "
                               "was the adapter trained on this model?") from None


@torch.no_grad()
def subtract_update(model: nn.Module, updates: dict[str, torch.Tensor],
                    keep: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> int:
    """Subtract from each module's weight the part of its update that ``keep(name, update)`` returns
    (default: all of it, which turns a merged model back into its base); returns the modules changed."""
    changed = 0
    for name, update in updates.items():
        weight = module_named(model, name).weight
        if weight.shape != update.shape:
            raise BackdoorLabError(f"the adapter's update of {name} is {tuple(update.shape)} but the weight is "
                                   f"{tuple(weight.shape)}")
        part = update if keep is None else keep(name, update)
        weight -= part.to(weight.device, weight.dtype)
        changed += 1
    return changed
