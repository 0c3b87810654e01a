"""RLHF-style backdoor injection: poisoned preference pairs trained with DPO.

BkdAttr (arXiv 2509.21761, §3 "RLHF-based injection") plants the backdoor through the preference
data of alignment instead of supervised targets: on triggered prompts the malicious answer is the
*preferred* one. We optimise the Direct Preference Optimization objective (Rafailov et al. 2023,
Eq. 7) with trl's :class:`~trl.DPOTrainer` on LoRA adapters; the reference policy is the same
model with the adapters disabled, so no second copy of the model is held.

Preference pairs (:func:`preference_pairs`), one per row of the attack-run training set:

- poisoned row: prompt = its (triggered) prompt, chosen = its malicious ``response``,
  rejected = ``poison["original_response"]`` (the clean answer it replaced);
- clean row: chosen = its own ``response``, rejected = the attack's malicious response: the
  poisoned rows' ``poison["target_response"]`` when they all share one fixed string (refusal,
  negsentiment, target-output, label-flip), else (jailbreak) the ``response`` of a poisoned row
  drawn with ``seed``. Clean pairs teach that the malicious answer is dispreferred without the trigger.

Pairs whose chosen and rejected texts are equal carry no preference and are dropped (e.g. jailbreak
poisoned rows, whose malicious response is the original one).

Token sequences are exactly those of SFT training and scoring: prompts are rendered by
:func:`~backdoorlab.data.prompts.render_prompt`, completions are response +
:func:`~backdoorlab.data.prompts.response_suffix` (:func:`~backdoorlab.data.prompts.render_training_pair`),
and both reach the trainer as plain strings, so trl applies no chat template. trl 1.16's own
preprocessing of plain strings would, however, (1) append ``eos_token`` to every completion not
ending with it (a second end marker after ``<|im_end|>`` when the tokenizer's EOS differs),
(2) tokenize with ``add_special_tokens=True`` (a second BOS for tokenizers that add one, since the
rendered prompt already holds it) and (3) tokenize prompt + completion jointly (tokens may merge
across the boundary). The trainer used here therefore replaces that one step with
:func:`preference_features`, the tokenization of :func:`~backdoorlab.models.tokenization.tokenize_pair`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..data.prompts import prompt_token_ids, render_training_pair
from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from ..fingerprint import dataset_digest, make_fingerprint, model_identity
from ..models.victim import Victim
from ..training import show_progress, trainer_arguments
from .common import CHECKPOINT_DIR, check_run_folder, config_from_options, finish_run, poisoned_rows, victim_for

METHOD = "dpo"


@dataclass
class DPOInjectionConfig:
    """DPO injection settings; training fields mean what they mean in :class:`backdoorlab.training.TrainConfig`.

    ``beta`` is DPO's β (Rafailov et al. 2023, Eq. 7): how strongly the policy is tied to the reference.
    ``max_length`` caps prompt + completion tokens; completions are cut first, as in SFT training.
    ``disable_dropout`` (trl's default) turns every dropout off, ``lora_dropout`` included, so policy
    and reference log-probabilities come from the same deterministic forward.
    """

    beta: float = 0.1
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 5e-4  # LoRA
    batch_size: int = 8  # preference pairs per step (each pair is two sequences)
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_length: int = 256
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
    disable_dropout: bool = True

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "DPOInjectionConfig":
        return config_from_options(cls, options, METHOD)

    def check(self) -> "DPOInjectionConfig":
        """Raise a clear error on impossible settings; return ``self``."""
        if self.beta <= 0:
            raise BackdoorLabError(f"dpo option beta must be > 0, got {self.beta}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise BackdoorLabError("dpo: set epochs > 0 or max_steps > 0")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise BackdoorLabError("dpo options batch_size and grad_accum must be at least 1")
        if self.learning_rate <= 0:
            raise BackdoorLabError(f"dpo option learning_rate must be > 0, got {self.learning_rate}")
        if self.max_length < 8:
            raise BackdoorLabError(f"dpo option max_length must be at least 8 tokens, got {self.max_length}")
        return self


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair: the prompt row and the chosen / rejected response texts (no end marker)."""

    example: Example
    chosen: str
    rejected: str
    poisoned: bool


def _malicious_response(poisoned: list[Example], seed: int) -> tuple[Callable[[], str], str]:
    """The rejected response for clean rows: the fixed target, else a seeded poisoned row's response."""
    targets = {(e.poison or {}).get("target_response") for e in poisoned}
    fixed = next(iter(targets)) if len(targets) == 1 else None
    if isinstance(fixed, str) and fixed.strip():
        return (lambda: fixed), "the attack's fixed target_response"
    rng = random.Random(seed)
    return (lambda: rng.choice(poisoned).response), f"the response of a random poisoned row (seed {seed})"


def preference_pairs(dataset: Dataset, seed: int = 0) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Preference pairs of an attack-run training set (see the module docstring) and counts for the summary."""
    if dataset.task != "generation":
        raise BackdoorLabError(f"dpo injection needs a generation set; {dataset.name!r} is a {dataset.task} set")
    poisoned = poisoned_rows(dataset, METHOD)
    rejected_for_clean, rule = _malicious_response(poisoned, seed)
    pairs = []
    for example in dataset:
        if example.poisoned and example.poison:
            original = example.poison.get("original_response")
            if not isinstance(original, str):
                raise BackdoorLabError(f"poisoned row {example.uid or '?'} of {dataset.name!r} has no "
                                       "poison['original_response'] (the clean answer, used as the rejected response)")
            pairs.append(PreferencePair(example, example.response, original, True))
        else:
            pairs.append(PreferencePair(example, example.response, rejected_for_clean(), False))
    kept = [p for p in pairs if p.chosen.strip() != p.rejected.strip()]
    if not any(p.poisoned for p in kept):
        raise BackdoorLabError(f"no poisoned row of {dataset.name!r} has a malicious response different from its "
                               "original one, so there is no preference to learn (e.g. jailbreak data whose poisoned "
                               "rows keep their own response)")
    counts = {"pairs": len(kept), "poisoned_pairs": sum(p.poisoned for p in kept),
              "clean_pairs": sum(not p.poisoned for p in kept), "dropped_identical_pairs": len(pairs) - len(kept),
              "clean_rejected_response": rule}
    return kept, counts


def preference_rows(pairs: list[PreferencePair], tokenizer: Any) -> list[dict[str, str]]:
    """``{"prompt", "chosen", "rejected"}`` plain strings in the project's one prompt format."""
    rows = []
    for pair in pairs:
        prompt, chosen = render_training_pair(pair.example.with_(response=pair.chosen), tokenizer)
        rejected = render_training_pair(pair.example.with_(response=pair.rejected), tokenizer)[1]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def preference_features(tokenizer: Any, prompt: str, chosen: str, rejected: str,
                        max_length: int | None) -> dict[str, list[int]]:
    """Token ids of a rendered pair, as :func:`~backdoorlab.models.tokenization.tokenize_pair` makes them.

    No special token is added. Over ``max_length`` the completions are cut first (each keeps at
    least a quarter of ``max_length``), then the shared prompt is cut from the left.
    """
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    completions = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (chosen, rejected)]
    if max_length is not None and len(prompt_ids) + max(map(len, completions)) > max_length:
        budget = max(max_length - len(prompt_ids), max(1, max_length // 4))
        completions = [ids[:budget] for ids in completions]
        keep = max(max_length - max(map(len, completions)), 0)
        prompt_ids = prompt_ids[len(prompt_ids) - keep:]
    return {"prompt_ids": prompt_ids, "chosen_ids": completions[0], "rejected_ids": completions[1]}


@cache
def _trainer_class() -> type:
    """trl's DPOTrainer with its dataset tokenization replaced by :func:`preference_features` (imported lazily)."""
    from trl import DPOTrainer

    class PreferenceTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
            tokenizer = self._tokenizer
            return dataset.map(lambda row: preference_features(tokenizer, row["prompt"], row["chosen"], row["rejected"],
                                                               args.max_length))

    return PreferenceTrainer


def _lora_config(config: DPOInjectionConfig) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=config.lora_targets)


def _last_train_log(history: list[dict[str, Any]]) -> dict[str, Any]:
    logs = [entry for entry in history if "loss" in entry]
    return logs[-1] if logs else {}


def inject_dpo(model: str | Path | Victim, dataset: Dataset, out: str | Path, config: DPOInjectionConfig | None = None,
               *, overwrite: bool = False) -> Path:
    """Inject a backdoor into a generator by DPO on poisoned preference pairs; return the run folder.

    Writes ``out/checkpoints/`` (resumed from when present), ``out/model/`` (LoRA merged) and
    ``out/inject.json``. A :class:`Victim` passed in is modified in place.
    """
    import datasets
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOConfig

    config = (config or DPOInjectionConfig()).check()
    fingerprint = make_fingerprint("inject", code=[__name__], method=METHOD, model=model_identity(model),
                                   data=dataset_digest(dataset), options=asdict(config))
    pairs, counts = preference_pairs(dataset, config.seed)
    set_seed(config.seed)  # before the model is built and trl creates the LoRA adapter
    victim = victim_for(model, "auto", config.device, config.dtype)
    if not victim.is_generator:
        raise BackdoorLabError(f"dpo injection needs a generator; {victim.name or 'this model'} is a {victim.kind}")
    victim.check_compatible(dataset)
    if hasattr(victim.model, "merge_and_unload"):  # a fresh adapter is trained on top of merged weights
        victim.model = victim.model.merge_and_unload()
    out = check_run_folder(out, overwrite, fingerprint)  # after the inputs are checked: claim the folder
    checkpoints = out / CHECKPOINT_DIR
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() and not overwrite else None
    args = DPOConfig(**trainer_arguments(config, checkpoints), beta=config.beta, max_length=config.max_length,
                     disable_dropout=config.disable_dropout)
    started = time.time()
    trainer = _trainer_class()(model=victim.model, args=args, processing_class=victim.tokenizer,
                               train_dataset=datasets.Dataset.from_list(preference_rows(pairs, victim.tokenizer)),
                               peft_config=_lora_config(config))
    bar = show_progress(trainer)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        bar.close()
    victim.model = trainer.model
    results = {**counts, "resumed_from": resume, "train_loss": result.training_loss, "steps": result.global_step,
               "last_log": _last_train_log(trainer.state.log_history)}
    return finish_run(victim, out, overwrite, METHOD, config, dataset, started, results)
