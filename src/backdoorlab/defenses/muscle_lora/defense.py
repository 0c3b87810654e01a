"""MuScleLoRA: train a clean pretrained classifier on poisoned data without learning the backdoor.

Wu et al., "Acquiring Clean Language Models from Backdoor Poisoned Datasets by Downscaling
Frequency Space", ACL 2024 (arXiv 2402.12026), §3; reference code github.com/ZrW00/MuScleLoRA.
The paper argues (via the frequency principle) that backdoor mappings live in high frequencies, and
downscales the frequency space with two parts, both reproduced here:

- **Multiple radial scalings** (§3, "MuScleLoRA"): the last dense layer before the classification
  head (BERT's ``pooler.dense``, RoBERTa's ``classifier.dense``) gets a low-rank update applied to
  radially scaled copies of its input, ``h = W x + b + (α/r) Σ_i B_i A_i (k_i x)`` with scales
  ``k_i`` (the author's ``freqBand`` 1..9, ``inner_rank`` 1, ``mslrAlpha`` 6); the attention
  ``query``/``value`` projections get ordinary LoRA (r 8, α 32). All pretrained weights stay frozen.
  Every branch is linear in ``x``, so after training it merges exactly into
  ``W + (α/r) Σ_i k_i B_i A_i`` and the result is a plain Hugging Face classifier.
- **Gradient alignment** (§3, "Gradient alignment"): each step also takes the gradient ``g_r`` of a
  batch of clean reference rows and replaces the poisoned-data gradient ``g_p`` of every trainable
  tensor by its projection onto ``g_r``'s direction with the sign forced positive,
  ``|g_p · g_r| / ‖g_r‖² · g_r``, while the clean loss is above ``min_ref_loss``. Once the clean
  rows are fitted, the reference code keeps the raw gradient in the first ``align_epochs`` epochs and
  afterwards mixes in a raw share that grows linearly to ``max_raw_ratio`` (0.1) by the last epoch.

Departures (see the option comments): the learning rate defaults to 2e-4 (the author's PLM configs
use 2e-5 for BERT-large over 10 epochs), the classification head is trainable by default (the
reference code freezes its randomly initialised head; ``train_head=False`` does the same), a
"best epoch on dev" checkpoint is not kept (the last model is returned), and training does not resume
after an interruption (it is short; run the defense again).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...models.architecture import base_model
from ...models.victim import Victim
from ...training import training_collator, training_features
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense

HEAD_PREFIXES = ("classifier.", "score.")


class ScaledLowRankLinear(nn.Module):
    """A frozen ``nn.Linear`` plus low-rank branches on radially scaled inputs (§3):
    ``y = base(x) + (alpha / rank) Σ_i B_i A_i (k_i x)``.

    With ``scales=(1,)`` and ``zero_init=True`` this is plain LoRA (Hu et al. 2022); with the paper's
    band ``1..9``, ``rank=1`` and both factors Kaiming-initialised it is the MuScleLoRA layer.
    """

    def __init__(self, base: nn.Linear, scales: Sequence[float], rank: int, alpha: float, zero_init: bool) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        k = torch.tensor([float(s) for s in scales], device=base.weight.device).repeat_interleave(rank)
        self.register_buffer("scales", k)
        self.scaling = alpha / rank
        self.down = nn.Parameter(torch.empty(len(k), base.in_features, device=base.weight.device))  # A_i stacked
        self.up = nn.Parameter(torch.empty(base.out_features, len(k), device=base.weight.device))  # B_i stacked
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        if zero_init:
            nn.init.zeros_(self.up)
        else:
            nn.init.kaiming_uniform_(self.up, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / rank) Σ_i k_i B_i A_i``, the update the branches add to ``base.weight``."""
        return self.scaling * self.up @ (self.down * self.scales.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = nn.functional.linear(x, self.down) * self.scales  # A_i (k_i x), all branches at once
        return self.base(x) + self.scaling * nn.functional.linear(scaled, self.up)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        linear.weight.copy_(self.base.weight + self.delta_weight().to(self.base.weight.dtype))
        if self.base.bias is not None:
            linear.bias.copy_(self.base.bias)
        return linear


def final_dense_name(model: nn.Module) -> str:
    """Module path of the dense layer right before the classification head (where the paper puts MuScleLoRA)."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type == "bert":
        owner = getattr(model, model.base_model_prefix)
        if getattr(owner, "pooler", None) is None:
            raise BackdoorLabError("MuScleLoRA adapts BERT's pooler dense layer, and this model has no pooler")
        return f"{model.base_model_prefix}.pooler.dense"
    if model_type in ("roberta", "xlm-roberta"):
        return "classifier.dense"
    raise BackdoorLabError(f"MuScleLoRA supports BERT and RoBERTa classifiers; this model is {model_type!r}")


def install_adapters(model: nn.Module, *, rank: int, alpha: float, targets: Sequence[str], scales: Sequence[float],
                     scale_rank: int, scale_alpha: float, train_head: bool) -> dict[str, Any]:
    """Freeze ``model``, add LoRA to ``targets`` and multi-scale branches to the final dense layer.

    Returns ``{"lora": [...], "multiscale": name, "trainable": count}``.
    """
    model.requires_grad_(False)
    if train_head:
        for name, parameter in model.named_parameters():
            if name.startswith(HEAD_PREFIXES):
                parameter.requires_grad_(True)
    final = final_dense_name(model)
    lora = [n for n, m in model.named_modules()
            if type(m) is nn.Linear and n.rsplit(".", 1)[-1] in targets and n != final]
    if not lora:
        raise BackdoorLabError(f"no linear layer is named {', '.join(targets)}; for BERT use e.g. query, value")
    for name in lora:
        _replace(model, name, ScaledLowRankLinear(model.get_submodule(name), (1.0,), rank, alpha, zero_init=True))
    _replace(model, final, ScaledLowRankLinear(model.get_submodule(final), scales, scale_rank, scale_alpha,
                                               zero_init=False))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"lora": lora, "multiscale": final, "trainable": trainable}


def merge_adapters(model: nn.Module) -> int:
    """Replace every :class:`ScaledLowRankLinear` by its merged ``nn.Linear``; return how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, ScaledLowRankLinear)]
    for name in names:
        _replace(model, name, model.get_submodule(name).merged())
    return len(names)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def align_gradients(poisoned: Sequence[torch.Tensor | None], reference: Sequence[torch.Tensor | None], *,
                    aligned_share: float = 1.0) -> list[torch.Tensor | None]:
    """Per tensor, ``aligned_share · |g_p·g_r| / ‖g_r‖² · g_r + (1 − aligned_share) · g_p`` (§3).

    The aligned part is the poisoned gradient's projection onto the clean gradient with its sign
    forced along ``g_r``, so the step never moves against the clean data. Tensors whose gradients
    are missing or zero keep the raw gradient (as in the reference code).
    """
    out: list[torch.Tensor | None] = []
    for g_p, g_r in zip(poisoned, reference, strict=True):
        if g_p is None or g_r is None or not bool(g_p.any()) or not bool(g_r.any()):
            out.append(g_p)
            continue
        aligned = (g_p * g_r).sum().abs() / g_r.pow(2).sum() * g_r
        out.append(aligned if aligned_share == 1.0 else aligned_share * aligned + (1 - aligned_share) * g_p)
    return out


@register_defense
@dataclass
class MuScleLoRA(CleanRowsDefense):
    """Train the clean pretrained classifier on D* with multi-scale LoRA and gradient alignment."""

    name: ClassVar[str] = "muscle-lora"
    description: ClassVar[str] = ("train the clean model on the poisoned set with multi-scale LoRA + gradient "
                                  "alignment to clean rows (Wu et al., ACL 2024)")
    stage: ClassVar[str] = "training"
    needs: ClassVar[tuple[str, ...]] = ("training_data", "clean_rows")

    rank: int = 8  # LoRA rank on the targets (author's loraConfig r)
    alpha: float = 32.0  # LoRA alpha (author's lora_alpha)
    targets: list[str] = field(default_factory=lambda: ["query", "value"])  # peft's BERT default, as in the author's code
    scales: list[float] = field(default_factory=lambda: [float(k) for k in range(1, 10)])  # freqBand 1..9
    scale_rank: int = 1  # inner_rank of each radial-scaling branch
    scale_alpha: float = 6.0  # mslrAlpha
    learning_rate: float = 2e-4  # paper's PLM configs: 2e-5 (BERT-large); 2e-4 suits small encoders
    epochs: int = 10
    batch_size: int = 32
    max_length: int = 128
    max_grad_norm: float = 1.0  # gradients are clipped to this norm
    align: bool = True  # gradient alignment with the clean reference rows
    ref_rows: int = 96  # refSample: clean rows set aside as the alignment reference
    min_ref_loss: float = 0.4  # align fully while the clean reference loss is above this
    align_epochs: int = 1  # GAEpoch: raw gradients before this epoch once the clean rows are fitted
    max_raw_ratio: float = 0.1  # maxRawGradRatio: raw share reached in the last epoch
    train_head: bool = True  # the reference code freezes the (random) head; False does the same

    def __post_init__(self) -> None:
        self.validate()  # bad options fail when the defense is built, before any model is loaded

    def validate(self) -> None:
        if self.rank < 1 or self.scale_rank < 1:
            raise BackdoorLabError(f"rank and scale_rank must be at least 1, got {self.rank} and {self.scale_rank}")
        if not self.scales:
            raise BackdoorLabError("scales (the radial scaling factors, the paper's freqBand) must not be empty")
        if any(s <= 0 for s in self.scales):
            raise BackdoorLabError(f"scales must be positive, got {self.scales}")
        if not self.targets:
            raise BackdoorLabError("targets (the LoRA layers, e.g. query, value) must not be empty")
        if self.alpha <= 0 or self.scale_alpha <= 0 or self.learning_rate <= 0:
            raise BackdoorLabError("alpha, scale_alpha and learning_rate must be positive")
        if self.epochs < 1 or self.batch_size < 1 or self.ref_rows < 1:
            raise BackdoorLabError("epochs, batch_size and ref_rows must be at least 1")
        if not 0 <= self.max_raw_ratio <= 1:
            raise BackdoorLabError(f"max_raw_ratio must be in [0, 1], got {self.max_raw_ratio}")

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        self.validate()
        if victim.is_generator:
            raise BackdoorLabError("muscle-lora trains classifiers only; this model is a generator")
        train_rows: Dataset = inputs.require("training_data", self.name)
        reference = self.clean_rows(inputs).sample(self.ref_rows, self.seed) if self.align else None
        victim.check_compatible(train_rows)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            installed = install_adapters(base_model(victim.model), rank=self.rank, alpha=self.alpha,
                                         targets=self.targets, scales=self.scales, scale_rank=self.scale_rank,
                                         scale_alpha=self.scale_alpha, train_head=self.train_head)
            summary = self.fit(victim, train_rows, reference)
        merged = merge_adapters(base_model(victim.model))
        victim.model.requires_grad_(True)
        victim.model.eval()
        findings = {**summary, "lora_layers": len(installed["lora"]), "multiscale_layer": installed["multiscale"],
                    "trainable_parameters": installed["trainable"], "merged_layers": merged,
                    "train_rows": len(train_rows), "reference_rows": len(reference) if reference else 0}
        return DefenseOutcome(victim, findings)

    def fit(self, victim: Victim, train: Dataset, reference: Dataset | None) -> dict[str, Any]:
        """The training loop (§3): AdamW on the adapters (and head), linear decay, no warm-up."""
        from transformers import get_linear_schedule_with_warmup

        model = victim.model
        params = [p for p in model.parameters() if p.requires_grad]
        rows = training_features(victim, train, self.max_length)
        ref = training_features(victim, reference, self.max_length) if reference is not None else []
        collate = training_collator(victim)
        order = random.Random(self.seed)  # training order; the reference batches draw from their own stream
        ref_order = random.Random(self.seed + 1)
        steps_per_epoch = math.ceil(len(rows) / self.batch_size)
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, 0, self.epochs * steps_per_epoch)
        counts = {"aligned": 0, "mixed": 0, "raw": 0}
        losses: list[float] = []
        model.train()
        progress = tqdm(total=self.epochs * steps_per_epoch, desc="muscle-lora", leave=False)
        for epoch in range(self.epochs):
            order.shuffle(rows)
            epoch_loss = 0.0
            for start in range(0, len(rows), self.batch_size):
                loss = self._loss(victim, collate(rows[start:start + self.batch_size]))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                if ref:
                    grads, mode = self._aligned(victim, collate(ref_order.sample(ref, min(self.batch_size, len(ref)))),
                                                params, grads, epoch)
                    counts[mode] += 1
                for parameter, grad in zip(params, grads):
                    parameter.grad = grad
                nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                epoch_loss += loss.item()
                progress.update()
            losses.append(round(epoch_loss / steps_per_epoch, 4))
            progress.set_postfix(loss=losses[-1])
        progress.close()
        model.eval()
        return {"epoch_losses": losses, "steps": self.epochs * steps_per_epoch, "gradient_steps": counts}

    def _loss(self, victim: Victim, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(victim.device) for k, v in batch.items()}
        return nn.functional.cross_entropy(victim.forward(batch).logits.float(), batch["labels"])

    def _aligned(self, victim: Victim, batch: dict[str, torch.Tensor], params: list[nn.Parameter],
                 grads: Sequence[torch.Tensor | None], epoch: int) -> tuple[list[torch.Tensor | None], str]:
        """The reference code's schedule: align fully while the clean loss is high, then raw (early
        epochs) or a mix whose raw share grows to ``max_raw_ratio``."""
        ref_loss = self._loss(victim, batch)
        ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
        norms = [g.norm() for g in ref_grads if g is not None and bool(g.any())]
        mean_norm = float(torch.stack(norms).mean()) if norms else 0.0
        if mean_norm > 5e-7 and ref_loss.item() > self.min_ref_loss:  # minRefGradNorm 5e-7
            return align_gradients(grads, ref_grads), "aligned"
        if self.max_raw_ratio > 0 and epoch >= self.align_epochs:
            raw = self.max_raw_ratio * (epoch - self.align_epochs) / max(self.epochs - self.align_epochs, 1)
            return align_gradients(grads, ref_grads, aligned_share=1 - raw), "mixed"
        return list(grads), "raw"
