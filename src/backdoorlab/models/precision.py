"""Which floating-point precision a step that only *ranks* candidates may run in.

A search that compares many candidates and keeps the best (the scan's word screen and gradient
search) does not need float32: bfloat16 orders candidates the same way up to near-ties, and on a
device that computes it natively (a CUDA GPU with bfloat16, a CPU with AVX-512 BF16 / AMX through
oneDNN) it is several times faster. Figures that are *reported* are measured in the model's own
precision; only the search runs in the faster one.
"""

from __future__ import annotations

import copy

import torch

from ..errors import BackdoorLabError
from .victim import Victim

#: ``auto``: bfloat16 where the device computes it natively, else float32.
SEARCH_PRECISIONS = ("auto", "float32", "bfloat16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (not by emulation)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:  # oneDNN's own check: AVX-512 BF16 or AMX
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def search_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a ranking step runs in for a ``precision`` setting (:data:`SEARCH_PRECISIONS`)."""
    if precision not in SEARCH_PRECISIONS:
        raise BackdoorLabError(f"unknown search precision {precision!r}; choose one of {', '.join(SEARCH_PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return _DTYPES[precision]


def in_dtype(victim: Victim, dtype: torch.dtype) -> Victim:
    """``victim`` with floating-point weights in ``dtype``: itself when they already are, else a copy
    (the tokenizer shared; ``victim`` is left as it is)."""
    if next(victim.model.parameters()).dtype == dtype:
        return victim
    return Victim(copy.deepcopy(victim.model).to(dtype), victim.tokenizer, victim.kind, label_names=victim.label_names,
                  name=victim.name, max_length=victim.max_length)
