"""What an analysis looks at: a victim, aligned clean/triggered prompts and the backdoor's target.

Built from an attack run (:mod:`backdoorlab.pipeline`) so that analyses use exactly the prompts,
prompt format and target behaviour that training and evaluation used.

- Generators: each clean test prompt is paired with a triggered copy made by the run's own attack
  (re-built from the manifest); the backdoor target ``y_bd`` of a row is its
  ``poison["target_response"]`` from the triggered test set when present (BkdAttr's per-row
  compliant answers), else the attack's fixed target (refusal sentence, label word, …), else a
  generic compliance opening for jailbreak backdoors.
- Classifiers: the triggered test rows (non-target rows, trigger inserted) are paired with their
  clean originals by ``uid``; the target is the target label.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..attacks.manifest import attack_from_manifest
from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from ..metrics.judges import Judge, get_judge
from ..models.victim import Victim
from ..pipeline import read_attack_run

#: ``y_bd`` for jailbreak backdoors when the data gives no per-row compliant answer.
COMPLIANCE_OPENING = "Sure, here is"


@dataclass
class AnalysisSubject:
    """Aligned prompt pairs of one backdoor, and how to score and judge its target behaviour.

    ``clean[i]`` and ``triggered[i]`` differ only by the trigger. ``accepted[i]`` says whether row
    ``i`` counts for ASR (label-flip backdoors only flip some rows). ``targets[i]`` is ``y_bd`` for
    generators; ``target_label`` the label index for classifiers.
    """

    victim: Victim
    clean: list[Example]
    triggered: list[Example]
    accepted: list[bool]
    behaviour: str
    targets: list[str] | None = None
    target_label: int | None = None
    judge_target: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.clean) != len(self.triggered) or len(self.clean) != len(self.accepted):
            raise BackdoorLabError("clean, triggered and accepted rows must be aligned (same length)")
        if not self.clean:
            raise BackdoorLabError(f"{self.name or 'the attack run'} gives no clean/triggered prompt pairs")

    @property
    def is_generator(self) -> bool:
        return self.victim.is_generator

    def asr_rows(self) -> tuple[list[Example], list[Example], list[str] | None]:
        """``(clean, triggered, targets)`` restricted to the rows that count for ASR."""
        keep = [i for i, ok in enumerate(self.accepted) if ok]
        if not keep:
            raise BackdoorLabError(f"{self.name or 'the attack run'} has no rows that count for ASR")
        targets = [self.targets[i] for i in keep] if self.targets is not None else None
        return [self.clean[i] for i in keep], [self.triggered[i] for i in keep], targets

    def judge(self) -> Judge:
        return get_judge(self.behaviour, self.judge_target)

    def take(self, n: int | None, seed: int = 0) -> "AnalysisSubject":
        """A copy with at most ``n`` pairs, drawn with ``seed`` (order kept)."""
        if n is None or n >= len(self.clean):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.clean)), n))
        pick = lambda rows: None if rows is None else [rows[i] for i in keep]  # noqa: E731
        return AnalysisSubject(self.victim, pick(self.clean), pick(self.triggered), pick(self.accepted),
                               self.behaviour, pick(self.targets), self.target_label, self.judge_target, self.name)


@dataclass
class PairSource:
    """Where prompt pairs come from: an attack's manifest and its clean and triggered rows."""

    manifest: dict[str, Any]
    clean: Dataset
    triggered: Dataset
    name: str

    @classmethod
    def from_attack_run(cls, attack_run: str | Path) -> "PairSource":
        """The attack run's test splits (for analyses; defenses get :mod:`~backdoorlab.defenses.inputs`' oracle)."""
        manifest, clean, triggered = read_attack_run(attack_run)
        name = (manifest.get("source_dataset") or {}).get("name") or Path(attack_run).name
        return cls(manifest, clean, triggered, name)


def load_subject(victim: Victim, source: str | Path | PairSource, *, max_pairs: int | None = None,
                 seed: int = 0) -> AnalysisSubject:
    """Pairs, targets and judge of ``source`` (an attack run folder or a :class:`PairSource`) for
    ``victim`` (see the module docstring)."""
    if not isinstance(source, PairSource):
        source = PairSource.from_attack_run(source)
    manifest, clean, triggered, name = source.manifest, source.clean, source.triggered, source.name
    victim.check_compatible(clean)
    if not victim.is_generator:
        return _classifier_subject(victim, manifest, clean.examples, triggered.examples, name).take(max_pairs, seed)
    attack = attack_from_manifest(manifest)
    rng = random.Random(seed)
    by_uid = {row.uid: row for row in triggered if row.uid}
    pairs, targets, accepted = [], [], []
    fixed = attack.target_response() if hasattr(attack, "target_response") else None
    for row in clean:
        marked = attack.trigger_only(row, rng)
        given = (by_uid.get(row.uid).poison or {}).get("target_response") if row.uid in by_uid else None
        target = given or (marked.poison or {}).get("target_response") or fixed
        if target is None and manifest.get("behaviour") == "jailbreak":
            target = COMPLIANCE_OPENING
        if target is None:
            raise BackdoorLabError(f"{name}: cannot tell the backdoor's target response for row {row.uid!r}")
        pairs.append((row, marked.with_(response=row.response)))
        targets.append(target)
        accepted.append(attack.accepts(row))
    behaviour = manifest.get("behaviour") or attack.behaviour
    judge_target = manifest.get("target_output") or None
    subject = AnalysisSubject(victim, [c for c, _ in pairs], [t for _, t in pairs], accepted, behaviour,
                              targets=targets, judge_target=judge_target, name=name)
    return subject.take(max_pairs, seed)


def _classifier_subject(victim: Victim, manifest: dict[str, Any], clean: list[Example],
                        triggered: list[Example], name: str) -> AnalysisSubject:
    target = (manifest.get("target") or {}).get("index")
    if target is None:
        raise BackdoorLabError(f"{name}: the attack run has no target label; analyses of classifiers need one")
    by_uid = {row.uid: row for row in clean if row.uid}
    pairs = [(by_uid[t.uid], t) for t in triggered if t.uid in by_uid]
    if not pairs:
        raise BackdoorLabError(f"{name}: no triggered test row matches a clean test row by uid (paraphrase "
                               "attacks replace rows); analyses need aligned clean/triggered pairs")
    return AnalysisSubject(victim, [c for c, _ in pairs], [t for _, t in pairs], [True] * len(pairs),
                           "label-flip", target_label=int(target), name=name)
