"""The stored quantized checkpoint: integer codes and fp16 scales as safetensors, with a JSON layout.

Layout of the folder (``quantized/`` in the defense's work folder):

- ``quantized.json``: format, scheme, bits, group size, the model's weight dtype, the NF4 code
  book (nf4), and per layer its shape, group size, weight dtype, file and number of fp16 outlier
  columns;
- ``block-NNN.safetensors``: the layers of transformer block NNN, each as tensors
  ``<module>.codes`` (int8 ``[out, in]`` for int8; for 4-bit schemes uint8 with two codes per
  byte, see :func:`~.schemes.pack_nibbles`), ``<module>.scales`` (fp16 ``[out, groups]``),
  ``<module>.zeros`` (int4: fp16 zero points ``[out, groups]``) and, for int8 with outlier
  features, ``<module>.outlier_columns`` (int64) and ``<module>.outlier_weight`` (fp16).

:func:`dequantize` rebuilds every layer's weight with the same arithmetic the defense used, so it
equals the defended model's weight exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ...errors import BackdoorLabError
from ...fileio import write_json_atomic
from .schemes import NF4_CODE_BOOK, QuantizedWeight, Scheme, get_scheme, pack_nibbles, unpack_nibbles

QUANTIZED_DIR = "quantized"
LAYOUT_FILE = "quantized.json"
FORMAT = "backdoorlab.quantized-weights"
VERSION = 1


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def stored_tensors(name: str, q: QuantizedWeight, scheme: Scheme) -> dict[str, torch.Tensor]:
    """The tensors that store layer ``name`` (on the CPU, contiguous; 4-bit codes packed)."""
    codes = pack_nibbles(q.codes) if scheme.bits == 4 else q.codes
    tensors = {"codes": codes, "scales": q.scales, "zeros": q.zeros,
               "outlier_columns": q.outlier_columns, "outlier_weight": q.outlier_weight}
    return {f"{name}.{key}": value.detach().cpu().contiguous() for key, value in tensors.items() if value is not None}


class CheckpointWriter:
    """Writes a quantized checkpoint block by block (one safetensors file per transformer block)."""

    def __init__(self, folder: Path, scheme: Scheme, group_size: int | None, dtype: torch.dtype) -> None:
        self.folder, self.scheme = folder, scheme
        self.layout: dict[str, Any] = {"format": FORMAT, "version": VERSION, "scheme": scheme.name,
                                       "bits": scheme.bits, "group_size": group_size, "packed": scheme.bits == 4,
                                       "dtype": _dtype_name(dtype), "layers": {}}
        if scheme.name == "nf4":
            self.layout["code_book"] = list(NF4_CODE_BOOK)
        self.pending: dict[str, torch.Tensor] = {}
        self.code_bytes = self.scale_bytes = self.outlier_bytes = 0

    def add(self, name: str, q: QuantizedWeight, dtype: torch.dtype) -> None:
        """Queue layer ``name`` (whose model weight has ``dtype``) for the current block's file."""
        tensors = stored_tensors(name, q, self.scheme)
        self.pending.update(tensors)
        self.code_bytes += tensor_bytes({k: v for k, v in tensors.items() if k.endswith(".codes")})
        self.scale_bytes += tensor_bytes({k: v for k, v in tensors.items() if k.endswith((".scales", ".zeros"))})
        self.outlier_bytes += tensor_bytes({k: v for k, v in tensors.items() if ".outlier_" in k})
        outliers = 0 if q.outlier_columns is None else int(q.outlier_columns.numel())
        self.layout["layers"][name] = {"shape": list(q.shape), "group_size": q.group_size, "outlier_columns": outliers,
                                       "dtype": _dtype_name(dtype)}

    def end_block(self, index: int) -> None:
        """Write the layers added since the last call to ``block-<index>.safetensors``."""
        if not self.pending:
            return
        file = f"block-{index:03d}.safetensors"
        save_file(self.pending, str(self.folder / file), metadata={"format": FORMAT})
        for key in self.pending:
            self.layout["layers"][key.rsplit(".", 1)[0]].setdefault("file", file)
        self.pending = {}

    def finish(self) -> dict[str, Any]:
        write_json_atomic(self.folder / LAYOUT_FILE, self.layout)
        return self.layout


def read_layout(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / LAYOUT_FILE
    if not path.is_file():
        raise BackdoorLabError(f"{folder} is not a quantized checkpoint (no {LAYOUT_FILE})")
    layout = json.loads(path.read_text(encoding="utf-8"))
    if layout.get("format") != FORMAT or layout.get("version") != VERSION:
        raise BackdoorLabError(f"{path} is not a {FORMAT} v{VERSION} layout")
    return layout


def load_quantized(folder: str | Path) -> tuple[Scheme, dict[str, QuantizedWeight], dict[str, Any]]:
    """The scheme, each layer's :class:`~.schemes.QuantizedWeight` and the layout of a checkpoint."""
    folder = Path(folder)
    layout = read_layout(folder)
    scheme = get_scheme(layout["scheme"])
    files: dict[str, dict[str, torch.Tensor]] = {}
    layers = {}
    for name, entry in layout["layers"].items():
        if entry["file"] not in files:
            files[entry["file"]] = load_file(str(folder / entry["file"]))
        tensors = files[entry["file"]]
        shape = tuple(entry["shape"])
        codes = tensors[f"{name}.codes"]
        layers[name] = QuantizedWeight(
            codes=unpack_nibbles(codes, shape) if layout["packed"] else codes, scales=tensors[f"{name}.scales"],
            group_size=entry["group_size"], zeros=tensors.get(f"{name}.zeros"),
            outlier_columns=tensors.get(f"{name}.outlier_columns"), outlier_weight=tensors.get(f"{name}.outlier_weight"))
    return scheme, layers, layout


def dequantize(folder: str | Path) -> dict[str, torch.Tensor]:
    """Module name → weight (in the model's dtype) rebuilt from the quantized checkpoint in ``folder``."""
    scheme, layers, layout = load_quantized(folder)
    dtypes = {name: getattr(torch, entry.get("dtype", layout["dtype"])) for name, entry in layout["layers"].items()}
    return {name: scheme.dequantize(q).to(dtypes[name]) for name, q in layers.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
