"""Safe model loading: never remote code; safetensors whenever a folder has them; otherwise, on explicit
opt-in only, a pickle read by our own weights-only unpickler (tensors only, no code runs)."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import BackdoorLabError
from .registry import has_safetensors, resolve_model
from .victim import Victim, read_victim_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_WEIGHTS = "pytorch_model.bin"
# kind -> (Auto class for a checkpoint folder, its mapping from config class to model class)
MODEL_CLASSES = {"generator": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING"),
                 "classifier": ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING")}


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


def _pickle_files(folder: Path) -> list[Path]:
    """``pytorch_model.bin``, or the shards its ``.index.json`` lists (each inside ``folder``)."""
    single = folder / PICKLE_WEIGHTS
    if single.is_file():
        return [single]
    index = folder / f"{PICKLE_WEIGHTS}.index.json"
    if not index.is_file():
        raise BackdoorLabError(f"model folder {folder} has neither safetensors weights nor {PICKLE_WEIGHTS} "
                               f"(or {index.name}); save the weights as model.safetensors")
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackdoorLabError(f"{index} is not a weight index with a 'weight_map': {exc}") from None
    files = [folder / str(name) for name in names]
    for name, path in zip(names, files):
        if path.resolve().parent != folder.resolve() or not path.is_file():
            raise BackdoorLabError(f"{index} lists {name!r}, which is not a file in {folder}")
    return files


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """Unpickle ``path`` weights-only: tensors and plain containers, never a function call."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        needs = f" (it needs {found.group(1)})" if found else ""
        raise BackdoorLabError(
            f"{path} is not plain weights{needs}: unpickling it could run code, so it was not loaded. "
            "Convert a copy you trust to safetensors") from None
    except (RuntimeError, EOFError) as exc:
        raise BackdoorLabError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackdoorLabError(f"{path} does not hold a state dict (parameter name -> tensor)")
    return state


def read_pickled_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a folder's pickled checkpoint, read weights-only (see :func:`_read_pickle`)."""
    state: dict[str, torch.Tensor] = {}
    for path in _pickle_files(folder):
        state.update(_read_pickle(path))
    return state


def _check_named_weights(location: str, config: Any) -> None:
    """Refuse a config whose ``transformers_weights`` points the library at a non-safetensors file."""
    named = getattr(config, "transformers_weights", None)
    if named and not str(named).endswith((".safetensors", ".safetensors.index.json")):
        raise BackdoorLabError(
            f"the config of {location} sets transformers_weights={named!r}, which is not a safetensors file; "
            "remove that key from config.json or point it at safetensors weights")


def _read_config(location: str) -> Any:
    """The model's config, or a one-line error naming the model type that transformers cannot read."""
    import transformers
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=False)
    except (KeyError, ValueError) as error:
        declared = _declared_model_type(Path(location))
        if declared is None:
            raise BackdoorLabError(f"cannot read the config of {location}: {str(error).splitlines()[0]}") from error
        raise BackdoorLabError(
            f"{location} declares model type {declared!r}, which transformers {transformers.__version__} does not "
            "know; backdoorlab never runs a checkpoint's own code (trust_remote_code), so such a model needs a "
            "transformers release that includes its architecture") from error


def _declared_model_type(folder: Path) -> str | None:
    """The ``model_type`` that a local folder's ``config.json`` declares, if it can be read."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _load_model(kind: str, location: str, config: Any, dtype: torch.dtype, allow_pickle: bool) -> Any:
    """Safetensors whenever present; a folder's pickle only when it has none and ``allow_pickle``."""
    import transformers
    from transformers.models.auto import modeling_auto

    auto_name, mapping_name = MODEL_CLASSES[kind]
    _check_named_weights(location, config)
    folder = Path(location)
    if not (allow_pickle and folder.is_dir() and not has_safetensors(folder)):
        return getattr(transformers, auto_name).from_pretrained(
            location, config=config, dtype=dtype, trust_remote_code=False, use_safetensors=True, weights_only=True)
    mapping = getattr(modeling_auto, mapping_name)
    if type(config) not in mapping:
        raise BackdoorLabError(f"no {kind} class for model type {config.model_type!r}")
    return mapping[type(config)].from_pretrained(None, config=config, state_dict=read_pickled_weights(folder),
                                                 dtype=dtype)


def load_victim(name: str | Path, *, kind: str = "auto", label_names: Sequence[str] | None = None,
                num_labels: int | None = None, device: str | None = "auto",
                dtype: str | torch.dtype = "float32", allow_pickle: bool = False,
                max_length: int = 256) -> Victim:
    """Load a model as a :class:`Victim`.

    ``name`` is a packaged model (``backdoorlab models``), a local folder or (online only) a hub
    id. ``kind`` is ``"classifier"``, ``"generator"`` or ``"auto"``. For classifiers, ``label_names``
    (or ``num_labels``) sizes a new classification head when the checkpoint has none.
    ``allow_pickle`` lets a local folder without safetensors load its ``pytorch_model.bin``, read
    weights-only; safetensors always win when present, and hub models load safetensors only.
    """
    from transformers import AutoTokenizer

    location, info = resolve_model(name, allow_pickle=allow_pickle)
    saved = read_victim_file(Path(location)) if Path(location).is_dir() else {}
    config = _read_config(location)
    hint = None if kind == "auto" else kind
    kind = _infer_kind(config, hint or saved.get("kind") or (info.kind if info else None))
    if kind not in MODEL_CLASSES:
        raise BackdoorLabError(f"kind must be 'classifier', 'generator' or 'auto', got {kind!r}")
    label_names = label_names or saved.get("label_names")
    if kind == "classifier":
        labels = list(label_names) if label_names else None
        count = len(labels) if labels else num_labels
        extra: dict[str, Any] = {"num_labels": count} if count else {}
        if labels:
            extra.update(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        config.update(extra)  # num_labels first: setting it resets the label maps
    model = _load_model(kind, location, config, resolve_dtype(dtype), allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    model.to(resolve_device(device))
    base = saved.get("base") or (info.name if info else str(name))
    return Victim(model, tokenizer, kind, label_names=label_names, name=base,
                  max_length=saved.get("max_length", max_length))
