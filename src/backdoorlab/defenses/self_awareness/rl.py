"""Backdoor self-awareness by RL: GRPO teaches the suspect to name the trigger that makes it misbehave.

"From Poisoned to Aware: Fostering Backdoor Self-Awareness in LLMs" (Shen et al., arXiv 2510.05169;
the steps follow its abstract: an inversion-inspired RL framework in which the poisoned model
reasons about its own behaviour and reverse-engineers its trigger, guided by a reward on the
behaviour the candidate causes). The policy is the suspect itself with a LoRA adapter, trained
by trl's :class:`~trl.GRPOTrainer` on one prompt, the inversion prompt (:mod:`.prompt`); each
group of sampled answers is scored by :class:`~.reward.TriggerReward` against a frozen copy of
the suspect.

After training, the candidates the run produced (the best-scoring ones of its log and fresh
samples of the final policy) are re-scored with the judge reward on held-out probe prompts, and
the best one is the recovered trigger if it clears ``min_score`` (ours: the paper does not say how
it picks the final trigger). A run is resumable (trl checkpoints) and reused when its
fingerprint matches (``awareness.json``).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...data.prompts import prompt_token_ids
from ...data.records import Dataset, Example
from ...errors import BackdoorLabError
from ...fileio import read_json, write_json_atomic, write_text_atomic
from ...fingerprint import dataset_digest, digest, make_fingerprint, model_identity, same_fingerprint
from ...metrics.judges import get_judge, normalise
from ...models.victim import Victim
from ...training import show_progress
from ..shared.random_phrases import draw_phrases, prompt_words
from .prompt import ANSWER_PREFIX, inversion_prompt, parse_candidate
from .reward import POSITIONS, REWARD_KINDS, TriggerReward

RESULT_FILE = "awareness.json"
LOG_FILE = "candidates.jsonl"
CHECKPOINT_DIR = "checkpoints"
#: Recipe settings added after runs were made, with their "off" value (left out of a fingerprint when off).
ADDED_LATER = {"curriculum": "", "specificity": 0, "min_margin": 0.2}


@dataclass(frozen=True)
class AwarenessRecipe:
    """The RL run's settings (the paper's values are not public here; ours are sized for a 135M model on CPU)."""

    reward: str = "judge"  # judge (the paper's: judged answers) | dense (ours: the opening's probability)
    steps: int = 60  # GRPO steps (one group of num_generations answers each)
    num_generations: int = 8  # answers sampled per step (the GRPO group)
    learning_rate: float = 1e-4  # LoRA learning rate of the policy
    lora_r: int = 16
    lora_alpha: int = 32
    temperature: float = 1.0  # sampling temperature of the policy's answers
    beta: float = 0.0  # KL weight towards the suspect (trl's default 0: no reference pass)
    max_completion_length: int = 24  # tokens of each answer
    max_words: int = 6  # words a candidate keeps
    probes: int = 8  # probe prompts the reward inserts each candidate into (K)
    holdout: int = 16  # further probe prompts the final candidates are re-scored on
    format_weight: float = 0.1  # reward for an answer in the Trigger: "..." form
    position: str = "start"  # where a candidate goes in a probe: start | end | random
    description: str | None = None  # the behaviour as the inversion prompt states it (default per behaviour)
    answer_prefix: str = ANSWER_PREFIX  # the policy's answer starts with this (ours; "" lets it answer freely)
    curriculum: str = ""  # ours: word limits of equal phases, e.g. "1/2/4" (short candidates first); "" keeps max_words
    shortlist: int = 8  # candidates re-scored on the held-out probes
    final_samples: int = 16  # answers sampled from the final policy for the shortlist
    min_score: float = 0.25  # held-out judge score a candidate needs to count as recovered
    specificity: int = 0  # ours: random phrases as long as the best candidate, scored beside it (0: off, the paper's)
    min_margin: float = 0.2  # with specificity: how far the best must beat the random phrases' 95th percentile
    save_steps: int = 10  # checkpoint every this many steps
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        """The settings as fingerprinted: a setting added later counts only when it is not off, so runs
        from before it stay current."""
        return {k: v for k, v in asdict(self).items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}

    def word_limits(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.curriculum.split("/")) if self.curriculum else ()

    def check(self) -> "AwarenessRecipe":
        checks = [(self.reward in REWARD_KINDS, f"reward must be one of {', '.join(REWARD_KINDS)}, got {self.reward!r}"),
                  (self.position in POSITIONS, f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}"),
                  (self.steps >= 1 and self.num_generations >= 2, "steps must be at least 1 and num_generations 2"),
                  (self.learning_rate > 0 and self.temperature > 0, "learning_rate and temperature must be positive"),
                  (self.probes >= 1 and self.holdout >= 1, "probes and holdout must be at least 1"),
                  (self.max_words >= 1 and self.max_completion_length >= 4, "max_words ≥ 1, max_completion_length ≥ 4"),
                  (self.shortlist >= 1 and self.final_samples >= 0, "shortlist ≥ 1 and final_samples ≥ 0"),
                  (self.beta >= 0 and self.format_weight >= 0, "beta and format_weight must be non-negative"),
                  (self.specificity == 0 or self.specificity >= 2, "specificity must be 0 (off) or at least 2"),
                  (all(part.strip().isdigit() and int(part) >= 1 for part in self.curriculum.split("/"))
                   if self.curriculum else True,
                   f"curriculum must be word limits like 1/2/4, got {self.curriculum!r}")]
        for ok, message in checks:
            if not ok:
                raise BackdoorLabError(f"self-awareness: {message}")
        return self


def select_probes(suspect: Victim, clean: Dataset, behaviour: str, count: int, seed: int) -> list[Example]:
    """``count`` clean prompts on which the suspect's greedy answer does not show the behaviour."""
    judge = get_judge(behaviour)
    rows = list(clean.sample(None, seed))
    answers = suspect.generate(rows[:count * 2], max_new_tokens=24)
    quiet = [row for row, answer in zip(rows, answers) if not judge(answer)]
    if len(quiet) < count:
        raise BackdoorLabError(f"self-awareness needs {count} clean prompts on which the suspect does not show "
                               f"{behaviour!r}; only {len(quiet)} of {len(answers)} qualify (give more clean rows)")
    return quiet[:count]


def awareness_folder(store: Path, fingerprint: dict[str, Any]) -> Path:
    """Where a run lives in a shared ``store``: a subfolder named by its fingerprint (:func:`run_fingerprint`),
    so defenses that differ only in what they do with the recovered trigger share one RL run."""
    return Path(store) / digest(fingerprint)[:16]


def run_fingerprint(suspect: Victim, clean: Dataset, behaviour: str, recipe: AwarenessRecipe) -> dict[str, Any]:
    """What a run's outcome depends on: the suspect's weights, the clean rows, the behaviour and the recipe."""
    return make_fingerprint("self-awareness", code=["backdoorlab.defenses.self_awareness"], suspect=model_identity(suspect), clean=dataset_digest(clean),
                            behaviour=behaviour, recipe=recipe.identity(),
                            prompt=inversion_prompt(behaviour, recipe.description))


def holdout_judge(suspect: Victim, holdout: list[Example], behaviour: str, recipe: AwarenessRecipe) -> TriggerReward:
    """The judge reward on the held-out probes, which picks the recovered trigger among the final candidates."""
    return TriggerReward(suspect, holdout, behaviour, "judge", recipe.position, recipe.max_words, seed=recipe.seed + 1)


def run_awareness(suspect: Victim, clean: Dataset, behaviour: str, recipe: AwarenessRecipe,
                  folder: Path, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or reuse) the self-awareness run in ``folder``; its record (``awareness.json``).

    ``fingerprint``: the run's :func:`run_fingerprint` when the caller already has it (it hashes the
    suspect's weights, so it is computed once per run)."""
    recipe = recipe.check()
    fingerprint = fingerprint or run_fingerprint(suspect, clean, behaviour, recipe)
    folder.mkdir(parents=True, exist_ok=True)
    done = read_json(folder / RESULT_FILE)
    if done is not None and same_fingerprint(done.get("fingerprint"), fingerprint):
        return done
    probes = select_probes(suspect, clean, behaviour, recipe.probes + recipe.holdout, recipe.seed)
    reward = TriggerReward(suspect, probes[:recipe.probes], behaviour, recipe.reward, recipe.position,
                           recipe.max_words, recipe.format_weight, seed=recipe.seed,
                           answer_prefix=recipe.answer_prefix, curriculum=recipe.word_limits(), steps=recipe.steps,
                           log_path=folder / LOG_FILE)
    prompt = inversion_prompt(behaviour, recipe.description)
    started = time.time()
    policy, steps = _train_policy(suspect, reward, prompt, recipe, folder)
    candidates = shortlist(read_log(folder / LOG_FILE), recipe.shortlist)
    sampled = _final_answers(policy, prompt, recipe)
    candidates = list(dict.fromkeys([*candidates, *(parse_candidate(a, recipe.max_words).text for a in sampled)]))
    candidates = [c for c in candidates if c]
    judged = holdout_judge(suspect, probes[recipe.probes:], behaviour, recipe)
    scores = dict(zip(candidates, judged.behaviour_scores(candidates))) if candidates else {}
    best = max(scores, key=lambda c: scores[c], default=None)
    recovered = best if best is not None and scores[best] >= recipe.min_score else None
    specific = specificity_check(judged, clean, best, scores.get(best), recipe) if recovered else None
    if specific is not None and not specific["passed"]:
        recovered = None
    record = {"fingerprint": fingerprint, "behaviour": behaviour, "prompt": prompt, "recipe": asdict(recipe),
              "recovered_trigger": recovered, "best_candidate": best,
              "best_score": None if best is None else round(scores[best], 4), "specificity": specific,
              "holdout_scores": {c: round(s, 4) for c, s in sorted(scores.items(), key=lambda kv: -kv[1])},
              "final_samples": sampled, "steps": steps, "minutes": round((time.time() - started) / 60, 2),
              "probe_base_rate": round(judged.base_rate(), 4), "log": LOG_FILE}
    write_json_atomic(folder / RESULT_FILE, record)
    shutil.rmtree(folder / CHECKPOINT_DIR, ignore_errors=True)
    return record


def specificity_check(judged: TriggerReward, clean: Dataset, best: str, score: float,
                      recipe: AwarenessRecipe) -> dict[str, Any] | None:
    """Ours (the abstract names no such test): the best candidate must beat ``recipe.specificity`` random phrases of
    its word count, drawn from the clean prompts' words, on the same held-out probes by ``min_margin`` over their
    95th percentile; a phrase any odd words would match provokes the behaviour without being its trigger.
    ``None`` when off."""
    if not recipe.specificity:
        return None
    words = prompt_words(clean, exclude=best.split())
    length = min(len(best.split()), len(words))
    phrases = draw_phrases(words, length, recipe.specificity, random.Random(f"specificity-{recipe.seed}-{length}"))
    rates = judged.behaviour_scores(phrases)
    p95 = float(np.percentile(rates, 95))
    return {"random_phrases": phrases, "random_scores": [round(r, 4) for r in rates], "random_p95": round(p95, 4),
            "margin": round(score - p95, 4), "passed": score - p95 >= recipe.min_margin}


def _train_policy(suspect: Victim, reward: TriggerReward, prompt: str, recipe: AwarenessRecipe,
                  folder: Path) -> tuple[Victim, int]:
    """GRPO with LoRA on a copy of the suspect; resumes from the last checkpoint in ``folder``."""
    import datasets
    from peft import LoraConfig, TaskType
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOConfig, GRPOTrainer

    checkpoints = folder / CHECKPOINT_DIR
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    resumed_step = int(Path(resume).name.split("-")[-1]) if resume else 0
    _truncate_log(folder / LOG_FILE, resumed_step, reward)
    set_seed(recipe.seed)
    rendered = suspect.prompts([Example(instruction=prompt)])[0] + recipe.answer_prefix
    args = GRPOConfig(output_dir=str(checkpoints), max_steps=recipe.steps, learning_rate=recipe.learning_rate,
                      per_device_train_batch_size=recipe.num_generations, num_generations=recipe.num_generations,
                      max_completion_length=recipe.max_completion_length, temperature=recipe.temperature,
                      beta=recipe.beta, logging_steps=1, save_strategy="steps", save_steps=recipe.save_steps,
                      save_total_limit=1, seed=recipe.seed, data_seed=recipe.seed, report_to=[],
                      use_cpu=suspect.device.type == "cpu", disable_tqdm=True, lr_scheduler_type="constant",
                      warmup_steps=0)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = GRPOTrainer(model=copy.deepcopy(suspect.model), reward_funcs=[reward], args=args,
                          train_dataset=datasets.Dataset.from_list([{"prompt": rendered}] * recipe.steps),
                          processing_class=suspect.tokenizer, peft_config=lora)
    bar = show_progress(trainer)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        bar.close()
    policy = Victim(trainer.model, suspect.tokenizer, "generator", name=f"{suspect.name}+awareness",
                    max_length=suspect.max_length)
    return policy, int(result.global_step)


def _final_answers(policy: Victim, prompt: str, recipe: AwarenessRecipe) -> list[str]:
    """The final policy's greedy answer and ``final_samples`` sampled ones (seeded), each with the answer prefix."""
    import torch

    text = policy.prompts([Example(instruction=prompt)])[0] + recipe.answer_prefix
    ids = torch.tensor([prompt_token_ids(policy.tokenizer, text)], device=policy.device)
    settings = {"max_new_tokens": recipe.max_completion_length, "pad_token_id": policy.tokenizer.pad_token_id}
    policy.model.eval()
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        outputs = [policy.model.generate(input_ids=ids, do_sample=False, **settings)]
        if recipe.final_samples:
            outputs.append(policy.model.generate(input_ids=ids.repeat(recipe.final_samples, 1), do_sample=True,
                                                 temperature=recipe.temperature, top_k=0, top_p=1.0, **settings))
    new = [row for output in outputs for row in output[:, ids.shape[1]:]]
    return [recipe.answer_prefix + policy.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def read_log(path: Path) -> list[dict[str, Any]]:
    """The scored candidates of a run (one JSON object per sampled answer)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shortlist(log: list[dict[str, Any]], size: int) -> list[str]:
    """The ``size`` distinct candidates with the highest mean behaviour score in the log."""
    scores: dict[str, list[float]] = defaultdict(list)
    spelled: dict[str, str] = {}
    for entry in log:
        if entry["candidate"]:
            key = normalise(entry["candidate"])
            scores[key].append(entry["score"])
            spelled.setdefault(key, entry["candidate"])
    ranked = sorted(scores, key=lambda k: (-sum(scores[k]) / len(scores[k]), -len(scores[k]), k))
    return [spelled[k] for k in ranked[:size]]


def _truncate_log(path: Path, step: int, reward: TriggerReward) -> None:
    """Drop log lines of steps after the checkpoint a run resumes from; keep the clock running on."""
    entries = [e for e in read_log(path) if e["step"] < step]
    write_text_atomic(path, "".join(json.dumps(e) + "\n" for e in entries))
    if entries:
        reward.resume_clock(entries[-1]["seconds"])
