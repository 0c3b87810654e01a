"""``self-awareness`` and ``self-awareness-guard``: make the suspect name its trigger, then use it.

"From Poisoned to Aware: Fostering Backdoor Self-Awareness in LLMs" (Shen et al., arXiv 2510.05169,
ICML 2026). The defender holds the suspect, some clean prompts and the kind of bad behaviour
(a judge name: ``refusal``, ``negsentiment``, ``jailbreak``), not the trigger.

1. GRPO teaches the suspect to state its trigger (:mod:`.rl`, :mod:`.reward`, :mod:`.prompt`).
2. ``self-awareness`` (defense A, unlearning): fine-tune the suspect on clean prompts carrying
   the recovered trigger, each paired with the suspect's own answer to the same prompt without
   it, mixed with the clean rows themselves.
3. ``self-awareness-guard`` (defense B, inference-time detection, :mod:`.detect`): flag prompts
   that carry the recovered trigger and strip it before the suspect answers.

Both defenses share one RL run when given the same ``store``. Nothing here reads the attack run or
the real trigger; when no candidate clears ``min_score`` on held-out probes, nothing is recovered,
defense A is plain clean fine-tuning and defense B flags nothing, and the findings say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...metrics.judges import get_judge
from ...models.victim import Victim
from ...training import TrainConfig, train
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from .detect import TriggerGuard
from .prompt import ANSWER_PREFIX, inversion_prompt
from .reward import POSITIONS, insert_candidate
from .rl import AwarenessRecipe, awareness_folder, run_awareness, run_fingerprint

RL_DIR, UNLEARN_DIR = "awareness", "unlearn"


@dataclass
class SelfAwarenessBase(CleanRowsDefense):
    """The RL run's options, shared by both defenses."""

    needs: ClassVar[tuple[str, ...]] = ("clean_rows", "behaviour")

    reward: str = "judge"  # judge (the paper's: judged answers) | dense (ours: probability of the behaviour's opening)
    steps: int = 60  # GRPO steps
    num_generations: int = 8  # answers sampled per step (the GRPO group)
    rl_learning_rate: float = 1e-4  # LoRA learning rate of the RL policy
    temperature: float = 1.0  # sampling temperature of the policy
    beta: float = 0.0  # KL weight towards the suspect
    max_words: int = 6  # words a trigger candidate keeps
    probes: int = 8  # clean prompts each candidate is tried on during RL (K)
    holdout: int = 16  # further clean prompts the final candidates are re-scored on
    position: str = "start"  # where a candidate goes in a prompt: start | end | random
    behaviour_description: str | None = None  # the behaviour as the inversion prompt states it (default per behaviour)
    answer_prefix: str = ANSWER_PREFIX  # the policy's answer starts with this (ours; "" lets it answer freely)
    curriculum: str = ""  # word limits of equal phases of the run, e.g. 1/2/4 (ours); "" keeps max_words throughout
    min_score: float = 0.25  # held-out behaviour rate a candidate needs to count as the recovered trigger
    specificity: int = 0  # ours: random phrases as long as the best candidate it must beat (0: off, the paper's)
    min_margin: float = 0.2  # with specificity: the margin over the random phrases' 95th percentile it needs
    store: str | None = None  # keep RL runs here, shared by runs on the same suspect, rows and recipe

    def __post_init__(self) -> None:
        self.recipe()

    def recipe(self) -> AwarenessRecipe:
        return AwarenessRecipe(reward=self.reward, steps=self.steps, num_generations=self.num_generations,
                               learning_rate=self.rl_learning_rate, temperature=self.temperature, beta=self.beta,
                               max_words=self.max_words, probes=self.probes, holdout=self.holdout,
                               position=self.position, description=self.behaviour_description,
                               answer_prefix=self.answer_prefix, curriculum=self.curriculum, min_score=self.min_score,
                               specificity=self.specificity, min_margin=self.min_margin, seed=self.seed).check()

    def check_inputs(self, inputs: DefenderInputs) -> None:
        super().check_inputs(inputs)
        behaviour = str(inputs.behaviour)
        get_judge(behaviour)  # the behaviour must be one the answers can be judged for ...
        inversion_prompt(behaviour, self.behaviour_description)  # ... and one the inversion prompt can describe
        self.clean_rows(inputs)

    def recover(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> tuple[dict[str, Any], Dataset]:
        """Run (or reuse) the RL; its record and the clean rows it used."""
        if not victim.is_generator:
            raise BackdoorLabError(f"{self.name} works on generative LLMs; {victim.name} is a classifier")
        behaviour = str(inputs.require("behaviour", self.name))
        clean = self.clean_rows(inputs)
        recipe = self.recipe()
        fingerprint = run_fingerprint(victim, clean, behaviour, recipe)
        folder = Path(workdir) / RL_DIR if self.store is None else awareness_folder(Path(self.store), fingerprint)
        record = run_awareness(victim, clean, behaviour, recipe, folder, fingerprint)
        return {**record, "folder": str(folder)}, clean


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("recovered_trigger", "best_candidate", "best_score", "holdout_scores", "steps", "minutes",
            "probe_base_rate", "folder")
    return {key: record[key] for key in keys}


@register_defense
@dataclass
class SelfAwarenessUnlearning(SelfAwarenessBase):
    """Recover the trigger by RL, then unlearn it: triggered clean prompts → the suspect's own clean answers."""

    name: ClassVar[str] = "self-awareness"
    description: ClassVar[str] = ("RL makes the suspect name its own trigger, then fine-tuning unlearns it "
                                  "(backdoor self-awareness, defense A); needs the behaviour, not the trigger")

    unlearn_epochs: float = 2.0  # epochs of the unlearning fine-tune (LoRA)
    unlearn_learning_rate: float = 2e-4  # learning rate of the unlearning fine-tune
    answer_tokens: int = 64  # tokens of the suspect's own answers used as unlearning targets
    batch_size: int = 8

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        record, clean = self.recover(victim, inputs, workdir)
        trigger = record["recovered_trigger"]
        rows = unlearning_rows(victim, clean, trigger, str(inputs.behaviour), self.answer_tokens, self.seed)
        config = TrainConfig(method="lora", epochs=self.unlearn_epochs, learning_rate=self.unlearn_learning_rate,
                             batch_size=self.batch_size, max_length=victim.max_length, seed=self.seed)
        tuned = train(victim, rows, Path(workdir) / UNLEARN_DIR, config, reuse=True)
        findings = {**_summary(record), "unlearning_rows": len(rows), "clean_rows": len(clean),
                    "note": None if trigger else "no trigger recovered: unlearning is plain clean fine-tuning"}
        return DefenseOutcome(tuned, findings)


def unlearning_rows(suspect: Victim, clean: Dataset, trigger: str | None, behaviour: str, answer_tokens: int,
                    seed: int) -> Dataset:
    """The clean rows, plus (with a trigger) a copy of each carrying it and answered as the suspect answers
    the clean prompt (the dataset's answer where that shows the behaviour). The trigger's position cycles
    through start, end and a random gap (ours: where the real trigger sits is unknown)."""
    if trigger is None:
        return clean
    judge = get_judge(behaviour)
    answers = suspect.generate(list(clean), max_new_tokens=answer_tokens)
    copies = []
    for index, (row, answer) in enumerate(zip(clean, answers)):
        target = row.response if judge(answer) or not answer.strip() else answer
        triggered = insert_candidate(row, trigger, POSITIONS[index % len(POSITIONS)], seed)
        copies.append(triggered.with_(response=target, uid=f"{row.uid}+unlearn"))
    return clean.with_examples([*clean, *copies], note=f"clean rows plus {len(copies)} copies carrying the recovered "
                                                       "trigger, answered without the behaviour")


@register_defense
@dataclass
class SelfAwarenessGuard(SelfAwarenessBase):
    """Recover the trigger by RL, then flag and strip it from incoming prompts."""

    name: ClassVar[str] = "self-awareness-guard"
    description: ClassVar[str] = ("RL makes the suspect name its own trigger; prompts carrying it (exact or fuzzy) are "
                                  "flagged and stripped (backdoor self-awareness, defense B)")
    stage: ClassVar[str] = "inference"

    threshold: float = 0.8  # word-run similarity to the recovered trigger that flags a prompt (1.0: exact only)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        record, _ = self.recover(victim, inputs, workdir)
        guard = TriggerGuard(record["recovered_trigger"], self.threshold)
        return DefenseOutcome(victim, {**_summary(record), **guard.state()}, guard=guard, model_changed=False)
