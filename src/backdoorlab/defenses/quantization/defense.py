"""``quantization``: quantize the suspect's transformer weights for real (a post-training baseline).

BackdoorLLM's DefenseBox quantization baseline sets a quantization flag on a full-precision model
and so quantizes nothing. Here every ``nn.Linear`` inside the transformer blocks is quantized with
one of the schemes of :mod:`.schemes` (``int8``: LLM.int8()'s vector-wise absmax, Dettmers et al.
2022 §3; ``int4``: asymmetric round-to-nearest with a zero point per group, the RTN baseline of
GPTQ/AWQ; ``nf4``: QLoRA's 4-bit NormalFloat, Dettmers et al. 2023 §3) and its weight replaced by
the dequantized values. The saved model therefore holds exactly the values a weight-only quantized
model computes with, loads anywhere and runs with ordinary fp32 kernels (weight-only quantized
inference up to accumulation order; activations are not quantized). The integer codes and fp16
scales are also written to ``quantized/`` (:mod:`.checkpoint`), and :func:`~.checkpoint.dequantize`
rebuilds the model's weights from them exactly.

``outlier_threshold`` (int8 only, off by default) adds LLM.int8()'s mixed-precision decomposition
(§3.2): input features whose magnitude exceeds the threshold (the paper's α = 6.0) stay in fp16.
LLM.int8() finds them per batch at inference time; a stored model needs one fixed set, so they are
the features that exceed the threshold on the defender's clean rows (then the defense uses them).
It is off by default because it is calibration-dependent and because, without it, ``int8`` is
the plain vector-wise quantization whose levels the findings certify for every weight.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import BackdoorLabError
from ...fileio import atomic_directory
from ...models.architecture import base_model, transformer_layers
from ...models.victim import Victim
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from ..shared.token_batches import real_tokens, token_batches
from .checkpoint import LAYOUT_FILE, QUANTIZED_DIR, CheckpointWriter
from .schemes import SCHEMES, QuantizedWeight, Scheme, get_scheme, levels_per_group

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
Target = tuple[str, nn.Linear]


@register_defense
@dataclass
class WeightQuantization(CleanRowsDefense):
    """Quantize every linear layer of the transformer blocks; the model keeps the dequantized weights."""

    name = "quantization"
    description = ("quantize the transformer blocks' linear weights (int8 absmax per row, int4 RTN or NF4 per "
                   "group) and keep the dequantized values; writes the integer checkpoint to quantized/")
    stage = "post-training"
    needs: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ("clean_rows",)  # only with outlier_threshold (narrowed per instance)

    max_clean: int = 200  # clean rows in which outlier features are found (outlier_threshold only)
    seed: int = 0  # seed of that clean-row sample (quantization itself is deterministic)
    scheme: str = "int4"  # int8 (absmax per output row), int4 (asymmetric RTN per group), nf4 (NormalFloat per block)
    group_size: int = 64  # input weights per quantization group (int4, nf4); int8 quantizes whole rows
    skip: list[str] = field(default_factory=lambda: ["embed", "lm_head"])  # modules kept in full precision (substring or glob)
    outlier_threshold: float | None = None  # int8 only: LLM.int8() keeps input features above this (6.0) in fp16
    batch_size: int = 8  # clean rows per forward pass when finding outlier features

    def __post_init__(self) -> None:
        get_scheme(self.scheme)
        if self.group_size < 1:
            raise BackdoorLabError(f"quantization group_size must be a positive integer, got {self.group_size}")
        if self.outlier_threshold is not None:
            if self.scheme != "int8":
                raise BackdoorLabError(f"outlier_threshold is LLM.int8()'s decomposition; it needs scheme int8, "
                                       f"not {self.scheme}")
            if not self.outlier_threshold > 0:
                raise BackdoorLabError(f"outlier_threshold must be positive, got {self.outlier_threshold}")
        else:
            self.uses = ()  # type: ignore[misc]  # no clean rows are read

    # --------------------------------------------------------------------------------- applying
    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        scheme = SCHEMES[self.scheme]
        if hasattr(victim.model, "merge_and_unload"):
            victim.model = victim.model.merge_and_unload()
        blocks, skipped = self.targets(victim)
        targets = [target for block in blocks for target in block]
        self.check_model(victim, targets, scheme)
        outliers = self.outlier_features(victim, targets, inputs) if self.outlier_threshold is not None else {}
        dtype = targets[0][1].weight.dtype
        with atomic_directory(workdir / QUANTIZED_DIR, overwrite=True) as folder:
            writer = CheckpointWriter(folder, scheme, None if scheme.per_row else self.group_size, dtype)
            stats = [self.quantize_block(block, index, scheme, outliers, writer)
                     for index, block in enumerate(tqdm(blocks, desc=f"quantizing ({self.scheme})", leave=False))]
            writer.finish()
        records = [record for block in stats for record in block]
        return DefenseOutcome(victim, self.findings(scheme, records, skipped, writer, workdir / QUANTIZED_DIR, dtype))

    def targets(self, victim: Victim) -> tuple[list[list[Target]], list[str]]:
        """The linear layers of each transformer block, by full module name, and the names skipped."""
        names = {id(module): name for name, module in base_model(victim.model).named_modules()}
        blocks, skipped = [], []
        for layer in transformer_layers(victim.model, victim.spec):
            block = []
            for module in layer.modules():
                if not isinstance(module, nn.Linear):
                    continue
                name = names[id(module)]
                if self.skipped(name):
                    skipped.append(name)
                else:
                    block.append((name, module))
            blocks.append(block)
        return blocks, skipped

    def skipped(self, name: str) -> bool:
        return any(pattern in name or fnmatch.fnmatchcase(name, pattern) for pattern in self.skip)

    def check_model(self, victim: Victim, targets: list[Target], scheme: Scheme) -> None:
        """A clear error for an already quantized model, non-finite weights or a group size that does not fit."""
        config = base_model(victim.model).config
        if getattr(config, "quantization_config", None):
            raise BackdoorLabError("the model is already quantized (its config has a quantization_config); the "
                                   "quantization defense needs a full-precision (fp32/fp16/bf16) model")
        if not targets:
            raise BackdoorLabError(f"no linear layer of the transformer blocks is left to quantize (skip={self.skip})")
        for name, module in targets:
            if module.weight.dtype not in FLOAT_DTYPES:
                raise BackdoorLabError(f"{name} has {str(module.weight.dtype).removeprefix('torch.')} weights: the model "
                                       "is already quantized; the quantization defense needs an fp32/fp16/bf16 model")
        for name, module in targets:
            weight = module.weight
            width = weight.shape[1]
            if not scheme.per_row and width % self.group_size:
                raise BackdoorLabError(f"group_size {self.group_size} does not divide the input width {width} of "
                                       f"{name}; choose a divisor of every layer's input width")
            if not torch.isfinite(weight).all():
                raise BackdoorLabError(f"{name} has non-finite weights; cannot quantize it")

    @torch.no_grad()
    def quantize_block(self, block: list[Target], index: int, scheme: Scheme, outliers: dict[str, torch.Tensor],
                       writer: CheckpointWriter) -> list[dict[str, Any]]:
        """Quantize each layer of one block in place; its codes go to ``writer``; per-layer measurements."""
        records = []
        for name, module in block:
            weight = module.weight
            original = weight.detach().float().clone()
            q = scheme.quantize(original, self.group_size, outliers.get(name))
            weight.copy_(scheme.dequantize(q).to(weight.dtype))
            writer.add(name, q, weight.dtype)
            records.append(self.measure(name, original, weight.detach(), q, scheme))
        writer.end_block(index)
        return records

    @staticmethod
    def measure(name: str, original: torch.Tensor, final: torch.Tensor, q: QuantizedWeight,
                scheme: Scheme) -> dict[str, Any]:
        """Levels per group of the final weight (its quantized columns) and the relative weight error."""
        columns = q.quantized_columns()
        kept = final if columns.numel() == final.shape[1] else final[:, columns]
        levels = levels_per_group(kept, None if scheme.per_row else q.group_size)
        if levels > scheme.levels:
            raise RuntimeError(f"{name}: {levels} distinct values in a group exceed the {scheme.levels} of {scheme.name}")
        error = (final.float() - original).norm() / original.norm().clamp_min(torch.finfo(torch.float32).tiny)
        return {"name": name, "levels": levels, "relative_error": float(error), "fp32_bytes": original.numel() * 4,
                "outlier_columns": q.shape[1] - columns.numel()}

    # ------------------------------------------------------------------------ outlier features
    @torch.inference_mode()
    def outlier_features(self, victim: Victim, targets: list[Target], inputs: DefenderInputs) -> dict[str, torch.Tensor]:
        """Per layer, the input features whose magnitude exceeds ``outlier_threshold`` on the clean rows
        (LLM.int8() §3.2), as input-column indices; padding positions are not counted."""
        batches = token_batches(victim, self.clean_rows(inputs), self.batch_size, desc="outlier features")
        peaks: dict[str, torch.Tensor] = {}
        mask: dict[str, torch.Tensor] = {}
        victim.model.eval()
        with _recording_peaks(targets, peaks, mask):
            for batch in batches:
                mask["attention"] = real_tokens(batch)
                victim.forward(batch)
        threshold = float(self.outlier_threshold or 0)
        return {name: (peak > threshold).nonzero().squeeze(1).to(torch.int64) for name, peak in peaks.items()}

    # -------------------------------------------------------------------------------- findings
    def findings(self, scheme: Scheme, records: list[dict[str, Any]], skipped: list[str], writer: CheckpointWriter,
                 folder: Path, dtype: torch.dtype) -> dict[str, Any]:
        errors = [r["relative_error"] for r in records]
        fp32_bytes = sum(r["fp32_bytes"] for r in records)
        stored = writer.code_bytes + writer.scale_bytes + writer.outlier_bytes
        on_disk = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
        findings: dict[str, Any] = {
            "scheme": scheme.name, "bits": scheme.bits,
            "group_size": None if scheme.per_row else self.group_size,
            "grouping": "per output row (group_size ignored)" if scheme.per_row
            else f"groups of {self.group_size} input weights per output row",
            "layers_quantized": len(records), "modules_skipped": skipped, "model_dtype": str(dtype).removeprefix("torch."),
            "level_limit": scheme.levels, "max_levels_per_group": max(r["levels"] for r in records),
            "mean_relative_weight_error": sum(errors) / len(errors), "max_relative_weight_error": max(errors),
            "code_bytes": writer.code_bytes, "scale_bytes": writer.scale_bytes, "quantized_bytes": stored,
            "quantized_file_bytes": on_disk, "fp32_bytes": fp32_bytes, "compression": fp32_bytes / stored,
            "checkpoint": f"{QUANTIZED_DIR}/{LAYOUT_FILE}",
        }
        if self.outlier_threshold is not None:
            findings.update(outlier_threshold=self.outlier_threshold, outlier_bytes=writer.outlier_bytes,
                            outlier_columns=sum(r["outlier_columns"] for r in records),
                            layers_with_outliers=sum(1 for r in records if r["outlier_columns"]))
        return findings


@contextmanager
def _recording_peaks(targets: list[Target], peaks: dict[str, torch.Tensor],
                     mask: dict[str, torch.Tensor]) -> Iterator[None]:
    """Forward pre-hooks that keep in ``peaks``, per layer, the largest |input| of each feature over
    the real tokens (``mask["attention"]``)."""

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            attention = mask.get("attention")
            if attention is not None and x.dim() == 3 and x.shape[:2] == attention.shape:
                x = x[attention]
            peak = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            peaks[name] = peak if name not in peaks else torch.maximum(peaks[name], peak)
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in targets]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
