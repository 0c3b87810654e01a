"""Fine-tune a victim on a (poisoned) dataset: classifiers and causal-LM SFT, full or LoRA.

Training goes through the Hugging Face :class:`~transformers.Trainer`, so the same code scales
from a laptop CPU to several GPUs by configuration: launch ``backdoorlab train`` under
``accelerate launch`` (optionally with a DeepSpeed or FSDP config, see ``TrainConfig.deepspeed``
and ``TrainConfig.fsdp``) and nothing else changes. Causal LMs are trained on response tokens only
(prompt tokens are masked), with prompts rendered by the shared prompt format.

A run folder holds ``checkpoints/`` (Trainer checkpoints, safetensors weights), ``model/`` (the
final model, LoRA merged, written atomically) and ``train.json`` (what went in and came out).
An interrupted run resumes from its last checkpoint when started again with the same folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.records import Dataset
from .errors import BackdoorLabError
from .fileio import write_json_atomic
from .manifest import environment_info
from .models.loading import load_victim, resolve_device
from .models.tokenization import pad_batch, tokenize_pair
from .models.victim import Victim
from .options import build

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
TRAIN_FILE = "train.json"


@dataclass
class TrainConfig:
    """Training settings; ``None`` fields take a default that depends on the model kind.

    Defaults: classifiers fine-tune all weights at lr 5e-5; generators train LoRA adapters
    (r=16, alpha=32, all linear layers) at lr 5e-4 on response tokens only.
    """

    method: str | None = None  # "full" or "lora"
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float | None = None
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_length: int | None = None  # tokens; default 128 (classifier) / 256 (generator)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | list[str] = "all-linear"
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 10
    device: str = "auto"
    dtype: str = "float32"
    bf16: bool = False  # mixed precision on GPUs
    gradient_checkpointing: bool = False
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    fsdp: str = ""  # e.g. "full_shard auto_wrap"
    extra: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments as is

    def resolved(self, kind: str) -> "TrainConfig":
        """A copy with kind-dependent defaults filled in, validated."""
        values = asdict(self)
        values["method"] = self.method or ("full" if kind == "classifier" else "lora")
        values["learning_rate"] = self.learning_rate or (5e-5 if values["method"] == "full" else 5e-4)
        values["max_length"] = self.max_length or (128 if kind == "classifier" else 256)
        config = TrainConfig(**values)
        if config.method not in ("full", "lora"):
            raise BackdoorLabError(f"training method must be 'full' or 'lora', got {config.method!r}")
        if config.epochs <= 0 and config.max_steps <= 0:
            raise BackdoorLabError("set epochs > 0 or max_steps > 0")
        if config.batch_size < 1 or config.grad_accum < 1:
            raise BackdoorLabError("batch_size and grad_accum must be at least 1")
        return config

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from ``values`` (strings allowed), checked by option name and type."""
        return build(cls, values, "training config")


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def training_features(victim: Victim, dataset: Dataset, max_length: int) -> list[dict[str, Any]]:
    """Tokenized training rows: prompt+response pairs (generators) or text with its label (classifiers)."""
    if victim.is_generator:
        return [tokenize_pair(victim.tokenizer, e, max_length) for e in dataset]
    rows = []
    for example in dataset:
        if example.label is None:
            raise BackdoorLabError(f"row {example.uid or '?'} of {dataset.name!r} has no label; cannot train on it")
        encoded = victim.tokenizer(victim.prompts([example])[0], truncation=True, max_length=max_length)
        rows.append({**encoded, "labels": example.label})
    return rows


def training_collator(victim: Victim):  # type: ignore[no-untyped-def]
    """The batch collator matching :func:`training_features`."""
    pad_id = victim.tokenizer.pad_token_id
    if victim.is_generator:
        return lambda features: pad_batch(features, pad_id, side="left")

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([f["labels"] for f in features])
        tokens = [{k: v for k, v in f.items() if k != "labels"} for f in features]
        batch = victim.tokenizer.pad(tokens, return_tensors="pt")
        return {**batch, "labels": labels}
    return collate


def _apply_lora(victim: Victim, config: TrainConfig) -> None:
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.CAUSAL_LM if victim.is_generator else TaskType.SEQ_CLS
    lora = LoraConfig(task_type=task, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=config.lora_targets)
    victim.model = get_peft_model(victim.model, lora)


def trainer_arguments(config: Any, checkpoints: Path) -> dict[str, Any]:
    """The Trainer arguments every trainer here shares, from a config with :class:`TrainConfig`'s
    schedule, checkpoint and device fields (also used for trl trainers' configs)."""
    return {
        "output_dir": str(checkpoints),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "warmup_steps": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "lr_scheduler_type": "linear",
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "data_seed": config.seed,
        "report_to": [],
        "use_cpu": resolve_device(config.device).type == "cpu",
        "bf16": config.bf16,
        "activation_checkpointing": config.gradient_checkpointing,
    }


def train(model: str | Path | Victim, dataset: Dataset, out_dir: str | Path, config: TrainConfig | None = None,
          *, kind: str = "auto", overwrite: bool = False, allow_pickle: bool = False,
          callbacks: list[Any] | None = None) -> Victim:
    """Fine-tune ``model`` on ``dataset`` into ``out_dir``; resume if a previous run was interrupted.

    Returns the trained :class:`Victim` (LoRA merged). Raises if ``out_dir/model`` already exists
    unless ``overwrite``. ``callbacks`` are :class:`transformers.TrainerCallback` objects (e.g. to
    watch a validation metric during training).
    """
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    out_dir = Path(out_dir)
    if (out_dir / MODEL_DIR).exists() and not overwrite:
        raise BackdoorLabError(f"{out_dir / MODEL_DIR} already exists; pass --overwrite to train again")
    if len(dataset) == 0:
        raise BackdoorLabError(f"dataset {dataset.name!r} is empty")
    config = config or TrainConfig()
    if isinstance(model, Victim):
        victim = model
    else:
        victim = load_victim(model, kind=kind, label_names=dataset.label_names, device=config.device,
                             dtype=config.dtype, allow_pickle=allow_pickle)
    config = config.resolved(victim.kind)
    victim.check_compatible(dataset)
    victim.max_length = config.max_length
    if config.method == "lora":
        _apply_lora(victim, config)
    checkpoints = out_dir / CHECKPOINT_DIR
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() and not overwrite else None
    args = TrainingArguments(**trainer_arguments(config, checkpoints), remove_unused_columns=False,
                             deepspeed=config.deepspeed, fsdp=config.fsdp, **config.extra)
    started = time.time()
    trainer = Trainer(model=victim.model, args=args, train_dataset=_Rows(training_features(victim, dataset, config.max_length)),
                      data_collator=training_collator(victim), callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=resume)
    victim.model = trainer.model
    summary = {
        "base_model": victim.name,
        "kind": victim.kind,
        "dataset": {"name": dataset.name, "rows": len(dataset), "source": dataset.source, "notes": dataset.notes,
                    "poisoned_rows": sum(e.poisoned for e in dataset)},
        "config": asdict(config),
        "resumed_from": resume,
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "seconds": round(time.time() - started, 1),
        "examples_per_second": round(_seen(result.global_step, config) / max(time.time() - started, 1e-9), 2),
        "environment": environment_info(),
    }
    victim.save(out_dir / MODEL_DIR, overwrite=overwrite, extra={"training": TRAIN_FILE})
    write_json_atomic(out_dir / TRAIN_FILE, summary)
    return victim


def _seen(steps: int, config: TrainConfig) -> int:
    return steps * config.batch_size * config.grad_accum

