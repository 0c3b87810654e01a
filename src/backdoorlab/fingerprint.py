"""Fingerprints of cached results, so a rerun never returns a stale one.

Every result a stage keeps on disk to reuse later (an evaluation, a defense's findings, an
analysis step, a training run) carries a fingerprint: the stage, the method, its options, the
identity of the model it ran on, hashes of its input data, the ids of the rows it evaluated and
a digest of the source code that computes it (:mod:`backdoorlab.codeversion`: the modules named and
what they import), so that a result computed by other code is never taken for a current one. Every
option is stored as the value it had. A cached result is reused only when its fingerprint equals the one the
current call would write; otherwise it is recomputed, or, where recomputing would discard
expensive work, the caller stops with a clear error (:mod:`backdoorlab.reuse`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .codeversion import CURRENT_FORM, code_digest

FINGERPRINT_KEY = "fingerprint"
#: Weight and configuration files whose bytes identify a model folder.
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".model", ".txt")
_CHUNK = 1 << 22
_hash_cache: dict[tuple[str, int, int], str] = {}


def canonical(value: Any) -> Any:
    """A JSON-able, order-independent form of ``value`` (paths as strings, tuples as lists)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(canonical(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value``."""
    text = json.dumps(canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (cached by path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
        _hash_cache[key] = sha.hexdigest()
    return _hash_cache[key]


def model_identity(model: Any) -> str:
    """What identifies a model: the hash of its folder's files, or its packaged name and version.

    ``model`` is a local folder, a packaged model name, a hub id or a loaded
    :class:`~backdoorlab.models.victim.Victim` (whose weights are hashed).
    """
    from .models.victim import Victim

    if isinstance(model, Victim):
        return "weights:" + weights_digest(model.model)
    path = Path(str(model)).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES
                       and not p.name.startswith("."))
        return "folder:" + digest({str(p.relative_to(path)): file_digest(p) for p in files})
    from .models.registry import PACKAGED

    if str(model) in PACKAGED:
        package = PACKAGED[str(model)][0].package
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        return f"packaged:{model}=={version}"
    return f"name:{model}"


def weights_digest(module: Any) -> str:
    """SHA-256 over a torch module's parameters and buffers (names, shapes, dtypes and bytes)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        sha.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        sha.update(data.view(-1).view(_byte_dtype()).numpy().tobytes() if data.numel() else b"")
    return sha.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def dataset_digest(dataset: Any) -> str:
    """SHA-256 of a :class:`~backdoorlab.data.records.Dataset`'s rows and label set."""
    return digest({"task": dataset.task, "labels": dataset.label_names,
                   "rows": [e.to_dict() for e in dataset.examples]})


def folder_digest(folder: str | Path, patterns: Iterable[str] = ("**/*.json", "**/*.jsonl")) -> str:
    """SHA-256 over the named files of a folder (e.g. an attack run's manifest and splits)."""
    folder = Path(folder)
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()
                    and not p.name.startswith(".")})
    return digest({str(p.relative_to(folder)): file_digest(p) for p in files})


def make_fingerprint(stage: str, *, code: Iterable[str | Path], methods: Iterable[str] | None = (),
                     code_form: str = CURRENT_FORM, **parts: Any) -> dict[str, Any]:
    """A fingerprint dict: ``stage``, the given ``parts`` (canonical) and ``code``, the digest of the
    source the result depends on: the modules (or script paths) named and the code they reach
    (:func:`~backdoorlab.codeversion.code_digest`; ``methods`` and ``code_form`` as its ``form``)."""
    return canonical({"stage": stage, **parts, "code": code_digest(code, methods, form=code_form)})


def same_fingerprint(stored: Any, expected: Mapping[str, Any]) -> bool:
    return isinstance(stored, Mapping) and canonical(stored) == canonical(expected)


def fingerprint_difference(stored: Any, expected: Mapping[str, Any]) -> list[str]:
    """The top-level fields in which two fingerprints differ (for error messages)."""
    if not isinstance(stored, Mapping):
        return ["(no fingerprint stored)"]
    stored, expected = canonical(stored), canonical(expected)
    return sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))


def read_if_current(path: str | Path, expected: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON at ``path`` if it exists and holds ``expected`` as its fingerprint, else ``None``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if isinstance(content, dict) and same_fingerprint(content.get(FINGERPRINT_KEY), expected):
        return content
    return None
