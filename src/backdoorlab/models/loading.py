"""Safe model loading: safetensors only, never remote code, pickles only on explicit opt-in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import BackdoorLabError
from .registry import resolve_model
from .victim import Victim, read_victim_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/``None`` → CUDA if available, else MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise BackdoorLabError(f"invalid device {device!r}: {exc}") from None


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BackdoorLabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _infer_kind(config: Any, hint: str | None) -> str:
    if hint:
        return hint
    architectures = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in architectures:
        return "generator"
    if "SequenceClassification" in architectures or config.model_type in ("bert", "roberta", "xlm-roberta"):
        return "classifier"
    raise BackdoorLabError(
        f"cannot tell whether this {config.model_type} model is a classifier or a generator; pass kind="
    )


def load_victim(name: str | Path, *, kind: str = "auto", label_names: Sequence[str] | None = None,
                num_labels: int | None = None, device: str | None = "auto",
                dtype: str | torch.dtype = "float32", allow_pickle: bool = False,
                max_length: int = 256) -> Victim:
    """Load a model as a :class:`Victim`.

    ``name`` is a packaged model (``backdoorlab models``), a local folder or (online only) a hub
    id. ``kind`` is ``"classifier"``, ``"generator"`` or ``"auto"``. For classifiers, ``label_names``
    (or ``num_labels``) sizes a new classification head when the checkpoint has none.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    location, info = resolve_model(name, allow_pickle=allow_pickle)
    saved = read_victim_file(Path(location)) if Path(location).is_dir() else {}
    safe = {"trust_remote_code": False, "use_safetensors": not allow_pickle}
    config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    hint = None if kind == "auto" else kind
    kind = _infer_kind(config, hint or saved.get("kind") or (info.kind if info else None))
    label_names = label_names or saved.get("label_names")
    dtype_value = resolve_dtype(dtype)
    if kind == "generator":
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype_value, **safe)
    elif kind == "classifier":
        labels = list(label_names) if label_names else None
        count = len(labels) if labels else num_labels
        extra: dict[str, Any] = {}
        if count:
            extra["num_labels"] = count
        if labels:
            extra.update(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        model = AutoModelForSequenceClassification.from_pretrained(location, dtype=dtype_value, **extra, **safe)
    else:
        raise BackdoorLabError(f"kind must be 'classifier', 'generator' or 'auto', got {kind!r}")
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    model.to(resolve_device(device))
    base = saved.get("base") or (info.name if info else str(name))
    return Victim(model, tokenizer, kind, label_names=label_names, name=base,
                  max_length=saved.get("max_length", max_length))
