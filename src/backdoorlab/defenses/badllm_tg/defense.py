"""BadLLM-TG: trigger inversion with an LLM trigger generator, then adversarial training.

Zhang et al., "BadLLM-TG: A Backdoor Defender powered by LLM Trigger Generator", arXiv 2603.15692:

1. §2.3, Eq. 4 — identify the target label ŷ from confidence changes in early training of the
   clean pretrained model (:mod:`backdoorlab.defenses.badllm_tg.target_label`) and split D* into
   D_tgt and D_n-tgt;
2. §2.4, Eqs. 5–8 — learn the generator's prompt by prompt-driven RL with the victim's loss as
   reward (:mod:`backdoorlab.defenses.badllm_tg.trigger_search`);
3. §2.5, Eq. 9 — apply G(·; p̂) to the training set, keep every row's label, and fine-tune the
   suspect on D* ∪ G(D*).

Variants (``variant``): ``"faithful"`` — the target is the Δc majority label (``identify="delta"``),
the generator studies raw D_tgt rows and performs every rewrite itself (``rewrite="llm"``), as in
the paper; ``"evidence"`` (default) — the target is found by screening every label's evidence on the
suspect (``identify="screen"``, :mod:`backdoorlab.defenses.shared.label_screening`; it falls back
to Δc when no phrase flips ``min_flip_rate`` of the rows), the generator also
reads n-grams mined from the high-Δc rows (:mod:`backdoorlab.defenses.shared.evidence`), ranked by the
victim's loss with each inserted alone (a cheap probe with the same reward), untried evidence
stands in for proposals it cannot make, the pattern's phrases are inserted rather than
paraphrased in (``rewrite="insert"``), which small local generators need, and the search keeps
going after the first working trigger so that adversarial training covers every trigger found
(``all_triggers``). Adversarial training then departs from Eq. 9 in two ways that matter when
poisoned rows are a large share of the target label: G is applied to the non-target rows only
(``adv_rows="non-target"``; applied to all of D*, most rewritten rows keep the target label and the
trigger stays predictive of it), and target-label rows that contain a working trigger phrase are
dropped (``drop_triggered``); ``adv_rows="kept"`` instead applies G to every row kept after that drop,
which keeps the labels' shares (with "non-target" the target label shrinks, to a seventh of the set
on a four-label task at 20% poisoning), and ``adv_class_weighting="balanced"`` weights the labels'
losses instead; and the clean pretrained model is retrained on that set
(``start_from="base"``, 3 epochs at 2e-4) instead of fine-tuning the suspect (the authors' draft
code; 2 epochs at 2e-5), which on SST-2/BadNets left ASR at 31% against 0% from the base.

The defender's inputs: the suspect's training rows (required), the target label when it is known
(``--target-label``: identification is skipped) and the clean pretrained model (``--pretrained``),
required to retrain from it (``start_from="base"``) and to compute Δc (when the target is not given).

Work files (all reused on a rerun): ``target.json``, ``delta.json`` (when Δc was needed), ``evidence.json``, ``iterations.json``,
``trigger.json`` (the recovered pattern), ``adversarial-set/`` and ``adversarial-training/``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...fileio import write_json_atomic
from ...llm.backends import BACKENDS, get_backend
from ...models.victim import Victim
from ...training import CLASS_WEIGHTINGS, TrainConfig, train
from ..base import Defense, DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.evidence import Evidence, words
from ..shared.label_screening import label_evidence, pick_target, screen_label
from .paraphrase_probe import load_pools, pool_lookalikes, score_pools
from .target_label import STATISTICS, confidence_change, identify_target, record_confidences
from .trigger_pattern import REWRITE_MODES, PatternApplier, TriggerPattern
from .trigger_search import SearchConfig, TriggerSearch

VARIANTS = ("evidence", "faithful")
IDENTIFY = ("screen", "delta")
START_FROM = ("suspect", "base")
ADV_ROWS = ("all", "non-target", "kept")


@register_defense
@dataclass
class BadLLMTG(Defense):
    """Options below; BadLLM-TG needs no clean data, only the poisoned training set and the suspect
    (and the clean pretrained model to retrain or to compute Δc)."""

    name = "badllm-tg"
    description = "BadLLM-TG: LLM trigger generator tuned by prompt-driven RL, then adversarial training"
    needs = ("training_data",)
    uses = ("target_label", "pretrained_model")
    needs_when = {"pretrained_model": "with start_from=base or no --target-label"}  # retrained, or the Δc scout
    moved_options = {
        "target": "the target label is a defender input: pass --target-label (run_defense(target_label=...))",
        "base_model": "the clean pretrained model is a defender input: pass --pretrained MODEL "
                      "(run_defense(pretrained_model=...))"}
    variant: str = "evidence"  # evidence (mined n-grams guide the generator) | faithful (the paper as written)
    generator: str = "local"  # local | openai
    generator_model: str | None = None  # local default: smollm2-135m-instruct
    base_url: str | None = None  # openai: the API root, e.g. http://localhost:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the endpoint's key
    rewrite: str | None = None  # llm | insert | llm+insert; default by variant
    identify_epochs: float = 1.0  # training window of the target-identification scout (§2.3)
    identify_records: int = 5  # confidence records taken in that window (at least 2)
    identify_lr: float = 5e-5  # learning rate of the scout
    identify: str | None = None  # screen (each label's evidence tried on the suspect) | delta (paper §2.3); default by variant
    statistic: str = "variance"  # confidence change Δc of a row: variance | difference
    top_fraction: float = 0.05  # share of rows, largest Δc first, whose majority label is the target
    min_majority: float = 0.6  # smallest share of those rows the majority label needs
    evidence_fraction: float = 1.0  # suspects: this share of the target-label rows, largest Δc first
    evidence_mined: int = 40  # n-grams mined, then screened by the victim's loss ...
    evidence_shown: int = 10  # ... and the best this many shown to the generator
    iterations: int = 8  # prompt-search iterations (§2.4)
    candidates: int = 2  # trigger patterns the generator proposes per iteration
    eval_rows: int = 24  # non-target rows each pattern is scored on
    loss_threshold: float = 0.2  # a pattern whose victim loss falls to this is found
    all_triggers: bool | None = None  # keep searching and train on every working pattern; default by variant
    working_flip_rate: float = 0.8  # a pattern "works" when it flips this share of the evaluation rows
    min_flip_rate: float = 0.5  # below this for the best pattern: no trigger found, no adversarial training
    temperature: float = 0.7  # the generator's sampling temperature
    paraphrase_pools: list[str] = field(default_factory=list)  # files of your rows paraphrased (style/syntax hypotheses)
    adv_fraction: float = 1.0  # share of the rows rewritten for adversarial training
    adv_rows: str | None = None  # all (the paper: G applied to D*) | non-target (G applied to D_n-tgt) | kept (G applied to the rows kept after drop_triggered); default by variant
    adv_class_weighting: str = "none"  # none | balanced: adversarial training weights each label's loss (TrainConfig.class_weighting)
    drop_triggered: bool | None = None  # drop target-label rows holding a working trigger (or like its pool); default by variant
    adv_epochs: float | None = None  # default: 2 from the suspect, 3 from the base model
    adv_lr: float | None = None  # default: 2e-5 from the suspect, 2e-4 from the base model (our MiniLM recipe)
    start_from: str | None = None  # suspect (fine-tune it) | base (retrain the clean model); default by variant
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.check()  # bad options fail when the defense is built, before any model is loaded

    def check(self) -> None:
        choices = {"variant": (self.variant, VARIANTS), "generator": (self.generator, BACKENDS),
                   "statistic": (self.statistic, STATISTICS),
                   "identify": (self.identification, IDENTIFY), "start_from": (self.starting_point, START_FROM),
                   "adv_rows": (self.adversarial_rows, ADV_ROWS),
                   "adv_class_weighting": (self.adv_class_weighting, CLASS_WEIGHTINGS)}
        if self.rewrite is not None:
            choices["rewrite"] = (self.rewrite, REWRITE_MODES)
        for option, (value, allowed) in choices.items():
            if value not in allowed:
                raise BackdoorLabError(f"badllm-tg option {option} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0 < self.adv_fraction <= 1 or not 0 < self.evidence_fraction <= 1:
            raise BackdoorLabError("adv_fraction and evidence_fraction must be in (0, 1]")
        if (self.adv_epochs is not None and self.adv_epochs <= 0) or self.identify_epochs <= 0:
            raise BackdoorLabError("adv_epochs and identify_epochs must be positive")
        if not 0 < self.top_fraction <= 1:
            raise BackdoorLabError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 <= self.min_majority <= 1:
            raise BackdoorLabError(f"min_majority must be in [0, 1], got {self.min_majority}")
        if self.identify_records < 2:
            raise BackdoorLabError(f"identify_records must be at least 2, got {self.identify_records}")
        if min(self.iterations, self.candidates, self.eval_rows, self.batch_size) < 1:
            raise BackdoorLabError("iterations, candidates, eval_rows and batch_size must be at least 1")
        if self.loss_threshold < 0 or self.temperature < 0:
            raise BackdoorLabError("loss_threshold and temperature must not be negative")

    @property
    def identification(self) -> str:
        return self.identify or ("screen" if self.variant == "evidence" else "delta")

    @property
    def starting_point(self) -> str:
        return self.start_from or ("base" if self.variant == "evidence" else "suspect")

    @property
    def adversarial_rows(self) -> str:
        return self.adv_rows or ("non-target" if self.variant == "evidence" else "all")

    @property
    def drops_triggered(self) -> bool:
        return self.variant == "evidence" if self.drop_triggered is None else bool(self.drop_triggered)

    @property
    def collect_all(self) -> bool:
        return self.variant == "evidence" if self.all_triggers is None else bool(self.all_triggers)

    @property
    def rewrite_mode(self) -> str:
        return self.rewrite or ("insert" if self.variant == "evidence" else "llm")

    def needs_pretrained(self, target_given: bool) -> bool:
        """Whether these settings train the clean pretrained model: to retrain it, or as the Δc scout
        (identification without a given target, or evidence ranked by Δc)."""
        ranked = self.evidence_fraction < 1 and self.variant == "evidence"
        return self.starting_point == "base" or not target_given or ranked

    def check_inputs(self, inputs: DefenderInputs) -> None:
        super().check_inputs(inputs)
        if inputs.pretrained_model is None and self.needs_pretrained(inputs.target_label is not None):
            why = ("retrains it (start_from=base)" if self.starting_point == "base"
                   else "trains it to compute Δc (no target label given)")
            raise BackdoorLabError(f"badllm-tg {why} and needs the clean pretrained model the suspect was fine-tuned "
                                   "from; pass it with --pretrained MODEL")
        training = inputs.training_data
        if inputs.target_label is not None and training is not None:
            training.label_index(inputs.target_label)  # a label the training rows do not have fails here

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        self.check()
        self.check_inputs(inputs)
        if victim.is_generator:
            raise BackdoorLabError("badllm-tg defends text classifiers; the model given is a generator")
        train_set: Dataset = inputs.require("training_data", self.name)
        victim.check_compatible(train_set)
        given = None if inputs.target_label is None else train_set.label_index(inputs.target_label)
        pretrained = inputs.pretrained_model
        identification, delta = self.find_target(victim, train_set, workdir, target=given, pretrained=pretrained)
        target = identification["target"]
        names = train_set.label_names or [str(i) for i in range(train_set.num_labels)]
        evidence = self._evidence(train_set, delta, target, workdir)
        backend = get_backend(self.generator, model=self.generator_model, base_url=self.base_url,
                              api_key_env=self.api_key_env, device=self.device)
        applier = PatternApplier(backend, self.rewrite_mode, seed=self.seed)
        result, evidence = self._search(victim, backend, applier, train_set, target, names[target], evidence, workdir)
        findings: dict[str, Any] = {
            "target_identification": {k: v for k, v in identification.items() if k != "top_rows"},
            "variant": self.variant, "rewrite": self.rewrite_mode, "generator": backend.describe(),
            "evidence": [e.to_dict() for e in evidence], "trigger": result.to_dict()}
        pool = self._probe_pools(victim, train_set, target, findings)
        if pool is not None and findings["paraphrase_pool"]["flip_rate"] <= result.flip_rate:
            findings["paraphrase_pool_not_used"] = "the phrase pattern flips at least as many rows"
            pool = None
        if pool is None and result.flip_rate >= self.min_flip_rate:
            patterns = result.working if self.collect_all else [result.best]
            kept = [e for e in train_set
                    if not (self.drops_triggered and e.label == target and _holds(e.text, patterns))]
            sources = {"all": train_set,
                       "non-target": train_set.with_examples([e for e in train_set if e.label != target],
                                                             note="non-target rows"),
                       "kept": train_set.with_examples(kept, note="rows kept")}[self.adversarial_rows]
            adversarial = self._adversarial_set(sources, applier, patterns, workdir).examples
            described = [p.describe() for p in patterns]
        elif pool is not None:
            adversarial, kept = pool.examples, list(train_set)
            if self.drops_triggered:  # no phrase marks the poisoned rows: drop the target rows that read like the pool
                lookalike = pool_lookalikes([e.text for e in pool], [e.text for e in train_set], seed=self.seed)
                kept = [e for e, flag in zip(train_set, lookalike) if not (flag and e.label == target)]
            described = [f"paraphrase pool {findings['paraphrase_pool']['pool']}"]
        else:
            findings["adversarial_training"] = (
                f"skipped: the best pattern flips {result.flip_rate:.0%} of the rows, below min_flip_rate="
                f"{self.min_flip_rate}; no trigger was recovered, so the model is returned unchanged")
            warnings.warn(f"badllm-tg: {findings['adversarial_training']}", stacklevel=2)
            return DefenseOutcome(victim, findings, model_changed=False)
        from_suspect = self.starting_point == "suspect"
        model = victim if from_suspect else self._load_pretrained(pretrained, train_set)
        config = TrainConfig(method="full", epochs=self.adv_epochs or (2.0 if from_suspect else 3.0),
                             learning_rate=self.adv_lr or (2e-5 if from_suspect else 2e-4),
                             batch_size=self.batch_size, seed=self.seed, device=self.device, save_steps=10**9,
                             class_weighting=self.adv_class_weighting)
        combined = train_set.with_examples([*kept, *adversarial],
                                           note="D* ∪ G(D*) (BadLLM-TG adversarial training set)")
        trained = train(model, combined, workdir / "adversarial-training", config, reuse=True)
        findings.update({"adversarial_patterns": described, "adv_rows": self.adversarial_rows,
                         "start_from": self.starting_point, "dropped_triggered_rows": len(train_set) - len(kept),
                         "adversarial_rows": len(adversarial), "training_rows": len(combined)})
        return DefenseOutcome(trained, findings)

    def _probe_pools(self, victim: Victim, train_set: Dataset, target: int, findings: dict[str, Any]) -> Dataset | None:
        """The paraphrase pool whose rows the suspect moves most toward ``target`` (:mod:`.paraphrase_probe`),
        when it flips ``min_flip_rate`` of them; every pool's score goes into ``findings``. The caller uses it
        when it flips more rows than the best phrase pattern (a weak victim flips some rows for a label's own
        words, e.g. "good" on SST-2, so a phrase can pass ``min_flip_rate`` without being the trigger)."""
        if not self.paraphrase_pools:
            return None
        pools = load_pools(self.paraphrase_pools, train_set.num_labels)
        scores = sorted(score_pools(victim, pools, [target], rows=self.eval_rows, seed=self.seed), key=lambda s: s.loss)
        findings["paraphrase_pools"] = [s.to_dict() for s in scores]
        if scores[0].flip_rate < self.min_flip_rate:
            return None
        findings["paraphrase_pool"] = scores[0].to_dict()
        return pools[scores[0].pool]

    # ------------------------------------------------------------------ steps
    def find_target(self, victim: Victim, train_set: Dataset, workdir: Path, *, pretrained: str | None,
                    target: int | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        """The target label (``target`` when given, else screened or by Δc) and the rows' Δc when it was
        needed (computed with a scout trained from the clean ``pretrained`` model; ``None``: no Δc possible)."""
        path = workdir / "target.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            return saved["identification"], self._delta(pretrained, train_set, workdir, compute=False)
        labels = [e.label for e in train_set]
        mines_ranked = self.evidence_fraction < 1 and (
            self.variant == "evidence" or (target is None and self.identification == "screen"))
        delta = self._delta(pretrained, train_set, workdir, compute=mines_ranked or (
            target is None and self.identification == "delta"))
        if target is not None:
            identification: dict[str, Any] = {"target": int(target), "given": True, "method": "given"}
        elif self.identification == "screen":
            identification = self._screen(victim, train_set, delta, workdir)
            if identification["target"] is None:
                delta = self._delta(pretrained, train_set, workdir, compute=True)
                found = identify_target(delta, labels, top_fraction=self.top_fraction, min_majority=self.min_majority)
                identification.update(found.to_dict(train_set.label_names), method="screen, then delta",
                                      statistic=self.statistic)
        else:
            assert delta is not None
            found = identify_target(delta, labels, top_fraction=self.top_fraction, min_majority=self.min_majority)
            identification = {**found.to_dict(train_set.label_names), "given": False, "method": "delta",
                              "statistic": self.statistic}
        write_json_atomic(path, {"identification": identification})
        return identification, delta

    def _delta(self, pretrained: str | None, train_set: Dataset, workdir: Path, *, compute: bool) -> np.ndarray | None:
        """Every row's confidence change Δc from the scout (§2.3), saved in ``delta.json``; ``None`` when not
        computed yet and ``compute`` is false."""
        path = workdir / "delta.json"
        if path.is_file():
            return np.array(json.loads(path.read_text(encoding="utf-8"))["delta"])
        if not compute:
            return None
        scout = self._load_pretrained(pretrained, train_set)
        trajectory = record_confidences(scout, train_set, workdir / "scout", epochs=self.identify_epochs,
                                        records=self.identify_records, learning_rate=self.identify_lr,
                                        batch_size=self.batch_size, seed=self.seed)
        shutil.rmtree(workdir / "scout", ignore_errors=True)
        delta = confidence_change(trajectory, self.statistic)
        write_json_atomic(workdir / "confidences.json", {"uids": [e.uid for e in train_set],
                                                         "trajectory": trajectory.round(5).tolist()})
        write_json_atomic(path, {"statistic": self.statistic, "delta": [round(float(d), 6) for d in delta]})
        return delta

    def _screen(self, victim: Victim, train_set: Dataset, delta: np.ndarray | None, workdir: Path) -> dict[str, Any]:
        """Screen every label's evidence on the suspect (:mod:`.label_screening`); the chosen label's mined
        evidence is kept as ``evidence.json``. ``target`` is ``None`` when no phrase flips ``min_flip_rate``."""
        names = train_set.label_names or [str(i) for i in range(train_set.num_labels)]
        screens = [screen_label(victim, train_set, label, delta, fraction=self.evidence_fraction,
                                mined=self.evidence_mined, eval_rows=self.eval_rows, seed=self.seed)
                   for label in tqdm(range(len(names)), desc="badllm-tg: screening each label", leave=False)]
        best = pick_target(screens)
        found = best.flip_rate >= self.min_flip_rate
        result: dict[str, Any] = {"target": best.label if found else None,
                                  "target_name": names[best.label] if found else None, "given": False,
                                  "method": "screen", "flip_rate": round(best.flip_rate, 4),
                                  "labels": {names[s.label]: s.to_dict() for s in screens}}
        if found and self.variant == "evidence":
            write_json_atomic(workdir / "evidence.json", [e.to_dict() for e in best.evidence])
        elif not found and self.paraphrase_pools:  # no phrase works: try the style/syntax hypotheses
            pools = load_pools(self.paraphrase_pools, train_set.num_labels)
            scores = score_pools(victim, pools, range(len(names)), rows=self.eval_rows, seed=self.seed)
            top = max(scores, key=lambda s: s.probability)
            result["paraphrase_pools"] = [s.to_dict() for s in scores]
            if top.flip_rate >= self.min_flip_rate:
                result.update(target=top.label, target_name=names[top.label], method="screen (paraphrase pools)",
                              flip_rate=round(top.flip_rate, 4))
        return result

    def _load_pretrained(self, pretrained: str | None, train_set: Dataset) -> Victim:
        """The pretrained model with its new classification head drawn from ``seed``, so that what is
        trained from it does not depend on what ran before in the process (a resumed run included)."""
        import torch

        from ...models.loading import load_victim

        if pretrained is None:
            raise BackdoorLabError("badllm-tg needs the clean pretrained model the suspect was fine-tuned from; "
                                   "pass it with --pretrained MODEL")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return load_victim(pretrained, kind="classifier", label_names=train_set.label_names, device=self.device)

    def _evidence(self, train_set: Dataset, delta: np.ndarray | None, target: int, workdir: Path) -> list[Evidence]:
        """N-grams over-represented in the target label's (top-Δc) rows; mined whether or not the target was given."""
        path = workdir / "evidence.json"
        if path.is_file():
            return [Evidence(**e) for e in json.loads(path.read_text(encoding="utf-8"))]
        evidence = [] if self.variant != "evidence" else label_evidence(
            train_set, target, delta, fraction=self.evidence_fraction, top_k=self.evidence_mined)
        write_json_atomic(path, [e.to_dict() for e in evidence])
        return evidence

    def _search(self, victim: Victim, backend: Any, applier: PatternApplier, train_set: Dataset, target: int,
                target_name: str, evidence: list[Evidence], workdir: Path) -> tuple[Any, list[Evidence]]:
        config = SearchConfig(iterations=self.iterations, candidates=self.candidates, eval_rows=self.eval_rows,
                              loss_threshold=self.loss_threshold, temperature=self.temperature,
                              stop_at_threshold=not self.collect_all, working_flip_rate=self.working_flip_rate,
                              seed=self.seed)
        search = TriggerSearch(victim, backend, applier, target=target, target_name=target_name,
                               target_texts=[e.text for e in train_set if e.label == target],
                               other_texts=[e.text for e in train_set if e.label != target], evidence=evidence,
                               use_evidence=self.variant == "evidence", config=config,
                               log_path=workdir / "iterations.json")
        screened_path = workdir / "evidence-screened.json"
        if evidence and not screened_path.is_file():
            write_json_atomic(screened_path, [e.to_dict() for e in search.screen(evidence, self.evidence_shown)])
        if screened_path.is_file():
            search.evidence = [Evidence(**e) for e in json.loads(screened_path.read_text(encoding="utf-8"))]
        result = search.run()
        write_json_atomic(workdir / "trigger.json", result.to_dict())
        return result, search.evidence

    def _adversarial_set(self, train_set: Dataset, applier: PatternApplier, patterns: list[TriggerPattern],
                         workdir: Path) -> Dataset:
        folder = workdir / "adversarial-set"
        if (folder / "dataset.json").is_file():
            return Dataset.load(folder)
        rows = train_set.sample(max(1, round(len(train_set) * self.adv_fraction)), self.seed)
        rewrites = applier.apply_each([e.text for e in rows], patterns)
        examples = [e.with_(text=t, uid=f"{e.uid}/g") for e, t in zip(rows, rewrites.texts)]
        described = " | ".join(p.describe() for p in patterns)
        adversarial = rows.with_examples(examples, name=f"{train_set.name}-badllm-tg",
                                         note=f"G(x; p) with p in [{described}]; labels kept")
        adversarial.save(folder, overwrite=True)
        return adversarial


def _holds(text: str, patterns: list[TriggerPattern]) -> bool:
    """Whether ``text`` contains every phrase of one of the patterns (as whole words)."""
    padded = f" {' '.join(words(text))} "
    return any(p.phrases and all(f" {' '.join(words(x))} " in padded for x in p.phrases) for p in patterns)
