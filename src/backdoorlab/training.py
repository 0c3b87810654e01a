"""Fine-tune a victim on a (poisoned) dataset: classifiers and causal-LM SFT, full or LoRA.

Training goes through the Hugging Face :class:`~transformers.Trainer`, so the same code scales
from a laptop CPU to several GPUs by configuration: launch ``backdoorlab train`` under
``accelerate launch`` (optionally with a DeepSpeed or FSDP config, see ``TrainConfig.deepspeed``
and ``TrainConfig.fsdp``) and nothing else changes. Causal LMs are trained on response tokens only
(prompt tokens are masked), with prompts rendered by the shared prompt format.

A run folder holds ``checkpoints/`` (Trainer checkpoints, safetensors weights), ``model/`` (the
final model, LoRA merged, written atomically), ``adapter/`` (with ``keep_adapter``: the LoRA
adapter on its own, unmerged, in peft's safetensors format), ``train.json`` (what went in and
came out, the Trainer's log history and the run's fingerprint) and ``.fingerprint.json``, which
claims the folder for one training: the base model's identity, the data's digest and every
setting that changes the weights. Started again on the same folder with the same fingerprint,
an interrupted run resumes from its last checkpoint and ends bit-identical to an uninterrupted
one (on the same hardware); with another fingerprint it stops with an error instead of mixing
two runs.

Runs are seeded end to end: the seed is set before the model is loaded (a classifier's new head
is drawn then) and before LoRA adapters are created; the Trainer seeds dropout and the data
order (``data_seed``) and restores the random state from a checkpoint when resuming.

A run may train with its own loss instead of the model's (a :class:`TrainingObjective`, e.g. a
defense's regularised loss); the objective's name and settings then join the fingerprint. A
classifier may instead weight its cross-entropy by label (``TrainConfig.class_weighting``, for
imbalanced data such as HSOL): :class:`ClassWeightedLoss`, with weights drawn from the training
rows' labels (:func:`class_weights`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .data.records import Dataset
from .errors import BackdoorLabError
from .fileio import atomic_directory, fresh_directory, write_json_atomic
from .fingerprint import (
    FINGERPRINT_KEY,
    dataset_digest,
    fingerprint_difference,
    make_fingerprint,
    model_identity,
    same_fingerprint,
)
from .manifest import environment_info
from .models.loading import load_victim, resolve_device
from .models.tokenization import pad_batch, tokenize_pair
from .models.victim import Victim
from .options import build
from .reuse import claim_folder

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
TRAIN_FILE = "train.json"
#: TrainConfig fields that change where and how often a run saves or logs, or where it runs, but
#: not the weights it ends with; a run may resume with other values for them.
NOT_FINGERPRINTED = ("save_steps", "save_total_limit", "logging_steps", "device", "gradient_checkpointing")
#: Values of ``TrainConfig.class_weighting``.
CLASS_WEIGHTINGS = ("none", "balanced")


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
    class_weighting: str = "none"  # classifiers: none, or balanced (label weight n_rows / (n_labels * its rows))
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
    keep_adapter: bool = False  # LoRA: also save the unmerged adapter in adapter/ beside model/
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
        if config.class_weighting not in CLASS_WEIGHTINGS:
            raise BackdoorLabError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got "
                                   f"{config.class_weighting!r}")
        if config.class_weighting != "none" and kind != "classifier":
            raise BackdoorLabError(f"class_weighting {config.class_weighting!r} weights a classifier's labels; a "
                                   f"{kind} has none (use class_weighting 'none')")
        if config.keep_adapter and config.method != "lora":
            raise BackdoorLabError("keep_adapter keeps a LoRA adapter; use it with method 'lora', not "
                                   f"{config.method!r}")
        return config

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from ``values`` (strings allowed), checked by option name and type."""
        return build(cls, values, "training config")


class TrainingObjective(Protocol):
    """A training loss that replaces the model's own: ``loss(model, inputs)`` gets the model being
    trained (LoRA-wrapped where LoRA is used) and one collated batch (:func:`training_collator`) and
    returns a scalar, a per-batch mean (the Trainer divides it for gradient accumulation).
    ``name`` and the JSON-able ``settings()`` identify it in the run's fingerprint.

    An objective that needs to know more about each row than its tokens (which group it belongs
    to, say) also defines ``row_extras(example) -> dict[str, int]``: those integers join the row's
    features and reach :meth:`loss` as ``[batch]`` tensors (the objective removes them before
    calling the model)."""

    name: str

    def settings(self) -> dict[str, Any]: ...

    def loss(self, model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...


def class_weights(dataset: Dataset) -> torch.Tensor:
    """Balanced label weights of a classification dataset: ``n_rows / (n_labels * rows of the label)``
    for each of its ``label_names`` (as scikit-learn's ``"balanced"``), 0 for a label without rows
    (it has no loss to weight). Over the dataset's rows the weights average 1 when every label has rows."""
    if not dataset.label_names:
        raise BackdoorLabError(f"dataset {dataset.name!r} has no labels to weight")
    n_labels = len(dataset.label_names)
    counts = torch.zeros(n_labels, dtype=torch.float64)
    for example in dataset:
        if example.label is None or not 0 <= example.label < n_labels:
            raise BackdoorLabError(f"row {example.uid or '?'} of {dataset.name!r} has label {example.label!r}, not one "
                                   f"of its {n_labels} labels; cannot weight it")
        counts[example.label] += 1
    weights = torch.where(counts > 0, len(dataset) / (n_labels * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


class ClassWeightedLoss:
    """A classifier's cross-entropy with a weight per label (a :class:`TrainingObjective`): the batch
    loss is ``sum_i w[y_i] * CE_i / batch_rows``, an unbiased estimate of the label-balanced risk
    (with :func:`class_weights`, the mean of the per-label mean losses) that equals the plain mean
    cross-entropy when all weights are 1. Used for ``TrainConfig.class_weighting``, which (with the
    data's digest) fingerprints it, so it does not name itself in the fingerprint."""

    name = "class-weighted-cross-entropy"

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights.detach().float()

    def settings(self) -> dict[str, Any]:
        return {"weights": [round(float(w), 8) for w in self.weights]}

    def loss(self, model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        logits = model(**inputs).logits.float()
        rows = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return (rows * self.weights.to(logits.device)[labels]).mean()


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
    """The batch collator matching :func:`training_features`: token lists are padded, and per-row
    integers (a classifier's ``labels``, an objective's :meth:`TrainingObjective.row_extras`) become
    one ``[batch]`` tensor each."""
    pad_id = victim.tokenizer.pad_token_id

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        scalars = [k for k, v in features[0].items() if isinstance(v, int)]
        per_row = {k: torch.tensor([f[k] for f in features]) for k in scalars}
        tokens = [{k: v for k, v in f.items() if k not in per_row} for f in features]
        batch = (pad_batch(tokens, pad_id, side="left") if victim.is_generator
                 else dict(victim.tokenizer.pad(tokens, return_tensors="pt")))
        return {**batch, **per_row}
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
        "disable_tqdm": True,  # progress is drawn by show_progress(), whatever the log level
    }


@functools.cache
def _progress_bar_class() -> type:
    """The progress callback's class, built on first use so that importing this module stays cheap."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class LossProgressBar(TrainerCallback):
        """One tqdm bar over the optimizer steps, showing the last logged training loss."""

        def __init__(self) -> None:
            self.bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                                dynamic_ncols=True)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4g}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return LossProgressBar


def show_progress(trainer: Any) -> Any:
    """Make ``trainer`` (a Trainer, or a trl trainer configured by :func:`trainer_arguments`) draw one
    progress bar with the current loss instead of printing its raw log dicts; returns the bar's
    callback, whose ``close()`` ends the bar if training stops with an error."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    bar = _progress_bar_class()()
    trainer.add_callback(bar)
    return bar


@contextmanager
def _library_progress_bars_off() -> Iterator[None]:
    """Hide transformers' own progress bars (loading, checkpoint writes) so training shows only its own."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def train_fingerprint(model_id: str, kind: str, dataset: Dataset, config: TrainConfig,
                      objective: TrainingObjective | None = None) -> dict[str, Any]:
    """What a run's final weights depend on: the base model's identity (:func:`model_identity`), its
    kind, the data's digest and the settings (``config`` resolved for ``kind``) except
    :data:`NOT_FINGERPRINTED`, plus the digest of the training code. ``keep_adapter`` counts only when on,
    ``class_weighting`` only when not ``"none"`` and the ``objective`` (name and settings) only when given, so
    runs from before any of them stay current."""
    settings = {k: v for k, v in asdict(config.resolved(kind)).items() if k not in NOT_FINGERPRINTED}
    if not settings["keep_adapter"]:
        del settings["keep_adapter"]
    if settings["class_weighting"] == "none":
        del settings["class_weighting"]
    extra = {} if objective is None else {"objective": {"name": objective.name, "settings": objective.settings()}}
    return make_fingerprint("train", code=[__name__], model=model_id, kind=kind, dataset=dataset_digest(dataset), config=settings,
                            **extra)


def trained_model(out_dir: str | Path, model: str | Path | Victim, dataset: Dataset,
                  config: TrainConfig | None = None, *, kind: str = "auto",
                  objective: TrainingObjective | None = None) -> Path | None:
    """``out_dir/model`` if it was trained from ``model`` on ``dataset`` with ``config`` (and
    ``objective``), ``None`` if ``out_dir`` holds no finished model; raises if its model was trained
    otherwise."""
    kind = model.kind if isinstance(model, Victim) else kind
    return _finished(Path(out_dir), model_identity(model), dataset, config or TrainConfig(), kind, objective)


def _finished(out_dir: Path, model_id: str, dataset: Dataset, config: TrainConfig, kind: str,
              objective: TrainingObjective | None = None) -> Path | None:
    folder = out_dir / MODEL_DIR
    if not folder.is_dir():
        return None
    record = _read_record(out_dir / TRAIN_FILE)
    stored = record.get(FINGERPRINT_KEY)
    trained_kind = record.get("kind") if kind == "auto" else kind
    if stored is None or trained_kind not in ("classifier", "generator"):
        why = f"{TRAIN_FILE} does not record how it was trained"
    else:
        expected = train_fingerprint(model_id, trained_kind, dataset, config, objective)
        if same_fingerprint(stored, expected):
            return folder
        why = f"it was trained with other {', '.join(fingerprint_difference(stored, expected))}"
    raise BackdoorLabError(f"{folder} is not the model asked for ({why}); pass --overwrite to train again, "
                           "or choose another output folder")


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _prepared_victim(model: str | Path | Victim, dataset: Dataset, config: TrainConfig, kind: str,
                     allow_pickle: bool) -> tuple[Victim, TrainConfig]:
    """The victim to train (LoRA adapters added) and ``config`` resolved for it; every random
    initialisation here (a classifier's new head, LoRA weights) is drawn from ``config.seed``."""
    from transformers import set_seed

    set_seed(config.seed)
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
    return victim, config


def train(model: str | Path | Victim, dataset: Dataset, out_dir: str | Path, config: TrainConfig | None = None,
          *, kind: str = "auto", overwrite: bool = False, reuse: bool = False, allow_pickle: bool = False,
          callbacks: list[Any] | None = None, objective: TrainingObjective | None = None) -> Victim:
    """Fine-tune ``model`` on ``dataset`` into ``out_dir``; resume if a previous run was interrupted.

    Returns the trained :class:`Victim` (LoRA merged). ``out_dir`` is claimed by the run's
    fingerprint (:func:`train_fingerprint`): checkpoints are resumed from only when it matches, and
    a folder holding another run raises. ``overwrite`` first replaces ``out_dir`` by an empty folder.
    A finished ``out_dir/model`` raises unless ``overwrite``, or with ``reuse`` is loaded and
    returned when it was trained exactly so. ``callbacks`` are :class:`transformers.TrainerCallback`
    objects (e.g. to watch a validation metric during training). ``objective`` replaces the model's
    loss by its own (:class:`TrainingObjective`); it is part of the fingerprint. It cannot be combined
    with ``config.class_weighting``, which weights the model's own cross-entropy.
    """
    out_dir = Path(out_dir)
    if (out_dir / MODEL_DIR).exists() and not (overwrite or reuse):
        raise BackdoorLabError(f"{out_dir / MODEL_DIR} already exists; pass --overwrite to train again")
    if len(dataset) == 0:
        raise BackdoorLabError(f"dataset {dataset.name!r} is empty")
    config = config or TrainConfig()
    if objective is not None and config.class_weighting != "none":
        raise BackdoorLabError(f"class_weighting {config.class_weighting!r} weights the model's own loss, which the "
                               f"objective {objective.name!r} replaces; use one or the other")
    kind = model.kind if isinstance(model, Victim) else kind
    model_id = model_identity(model)  # before training or --overwrite can change what it names
    if reuse and not overwrite and _finished(out_dir, model_id, dataset, config, kind, objective):
        return load_victim(out_dir / MODEL_DIR, device=config.device, dtype=config.dtype)
    with _library_progress_bars_off():
        victim, config = _prepared_victim(model, dataset, config, kind, allow_pickle)
        fingerprint = train_fingerprint(model_id, victim.kind, dataset, config, objective)
        if overwrite:
            fresh_directory(out_dir)
        claim_folder(out_dir, fingerprint, "a training run")
        summary = _fit(victim, dataset, config, out_dir / CHECKPOINT_DIR, callbacks, objective)
        # train.json before model/, so that a folder with a model/ always says how it was trained
        write_json_atomic(out_dir / TRAIN_FILE, {**summary, FINGERPRINT_KEY: fingerprint,
                                                 "environment": environment_info()})
        if config.keep_adapter:  # before model/, whose saving merges the adapter into the weights
            save_adapter(victim.model, out_dir / ADAPTER_DIR)
        victim.save(out_dir / MODEL_DIR, overwrite=overwrite, extra={"training": TRAIN_FILE})
    return victim


def _fit(victim: Victim, dataset: Dataset, config: TrainConfig, checkpoints: Path,
         callbacks: list[Any] | None, objective: TrainingObjective | None = None) -> dict[str, Any]:
    """Run the Trainer on ``victim`` (resuming from the last checkpoint in ``checkpoints``); return
    what ``train.json`` records about the run."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    args = TrainingArguments(**trainer_arguments(config, checkpoints), remove_unused_columns=False,
                             deepspeed=config.deepspeed, fsdp=config.fsdp, **config.extra)
    started = time.time()
    if config.class_weighting == "balanced":  # train() refuses it beside an objective of the caller's
        objective = ClassWeightedLoss(class_weights(dataset))
    trainer_class, extra = (Trainer, {}) if objective is None else (_objective_trainer_class(), {"objective": objective})
    trainer = trainer_class(model=victim.model, args=args,
                            train_dataset=_Rows(_features(victim, dataset, config.max_length, objective)),
                            data_collator=training_collator(victim), callbacks=callbacks, **extra)
    bar = show_progress(trainer)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        bar.close()
    victim.model = trainer.model
    seconds = time.time() - started
    return {
        "base_model": victim.name,
        "kind": victim.kind,
        "dataset": {"name": dataset.name, "rows": len(dataset), "source": dataset.source, "notes": dataset.notes,
                    "poisoned_rows": sum(e.poisoned for e in dataset)},
        "config": asdict(config),
        **({"class_weights": objective.settings()["weights"]} if isinstance(objective, ClassWeightedLoss) else {}),
        "resumed_from": resume,
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "seconds": round(seconds, 1),
        "examples_per_second": round(_seen(result.global_step, config) / max(seconds, 1e-9), 2),
        "log_history": trainer.state.log_history,
    }


def _features(victim: Victim, dataset: Dataset, max_length: int,
              objective: TrainingObjective | None) -> list[dict[str, Any]]:
    """The training rows, with the objective's per-row integers (``row_extras``) where it has them."""
    features = training_features(victim, dataset, max_length)
    extras = getattr(objective, "row_extras", None)
    if extras is not None:
        for feature, example in zip(features, dataset):
            feature.update(extras(example))
    return features


@functools.cache
def _objective_trainer_class() -> type:
    """A Trainer whose loss is a :class:`TrainingObjective`'s, built on first use."""
    from transformers import Trainer

    class ObjectiveTrainer(Trainer):
        def __init__(self, *args: Any, objective: TrainingObjective, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.objective = objective
            self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it over accumulation steps

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss = self.objective.loss(model, inputs)
            return (loss, None) if return_outputs else loss

    return ObjectiveTrainer


def save_adapter(model: Any, folder: Path) -> Path:
    """Write a peft model's adapter (weights in safetensors, its config) into ``folder`` atomically."""
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return folder


def _seen(steps: int, config: TrainConfig) -> int:
    return steps * config.batch_size * config.grad_accum

