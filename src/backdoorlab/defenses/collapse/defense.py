"""``backdoor-collapse``: remove an unknown backdoor by aggregating it with known ones, then recovering.

"Backdoor Collapse: Eliminating Unknown Threats via Known Backdoor Aggregation in Language Models"
(arXiv 2510.10265, ACL 2026; the method is called Locphylax). Injecting backdoors of one's own into
an already-backdoored model makes the unknown and the known backdoors share a region of
representation space; training the known ones away then takes the unknown one with them.

1. **Stage I, aggregation by injection**: fine-tune the suspect on the defender's clean rows
   plus copies carrying each known trigger with the known behaviour (:mod:`.known`), with
   ``L_inj + α · L_cluster`` (:mod:`.cluster`), which pulls the known triggers' final-layer states
   into one cluster.
2. **Stage II, recovery**: fine-tune the Stage I model on the same clean rows plus the
   known-triggered copies with their clean answers (true labels), overwriting the aggregated region.

Settings the reimplementation gives (LoRA r 16, α = 1, lr 2e-5, 3 epochs, clean : t1 : t2 = 1 : 1 : 1)
are the starting point; ours are documented in ``docs/backdoor_collapse.md``. The defender checks
both stages on held-out clean rows of its own (``validation_rows``): Stage I must make the known
triggers work, Stage II must remove them; the rates are in the findings. Nothing here reads the
suspect's trigger, its attack run or a clean reference model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ...training import TrainConfig, train
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from .cluster import ClusterObjective
from .known import DEFAULT_PREFIX, DEFAULT_TRIGGERS, POSITIONS, KnownBackdoors, parse_triggers, triggers_for_every_label

INJECTION_DIR, RECOVERY_DIR = "injection", "recovery"
DEFAULT_TRIGGER_OPTION = "|".join(DEFAULT_TRIGGERS)
#: Default learning rates per training method (lora: chosen on the known triggers' validation rows).
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}


@register_defense
@dataclass
class BackdoorCollapse(CleanRowsDefense):
    """Known-backdoor injection with a cluster loss (Stage I), then recovery fine-tuning (Stage II)."""

    name: ClassVar[str] = "backdoor-collapse"
    description: ClassVar[str] = ("inject known backdoors so the unknown one aggregates with them, then fine-tune the "
                                  "known ones away (Backdoor Collapse / Locphylax); no trigger needed")

    max_clean: int = 100  # clean rows the stages train on (each also copied once per known trigger)
    validation_rows: int = 16  # further clean rows, held out, to check that Stage I injects and Stage II removes
    triggers: str = DEFAULT_TRIGGER_OPTION  # known triggers, separated by '|'
    position: str = "random"  # where a known trigger goes: start | end | random (a word gap)
    prefix: str = DEFAULT_PREFIX  # generators: the known behaviour puts this before the answer
    known_target: int = 0  # classifiers: the label the known triggers flip to
    every_label: bool = False  # classifiers: a pair of known triggers towards every label instead (ours)
    alpha: float = 1.0  # weight of the cluster loss in Stage I (0: injection without aggregation)
    method: str | None = None  # lora | full; default lora for generators, full for classifiers
    injection_epochs: float = 3.0  # epochs of Stage I (known-trigger injection with the cluster loss)
    recovery_epochs: float = 3.0  # epochs of Stage II (recovery; 0: stop after Stage I)
    learning_rate: float | None = None  # both stages; default 2e-4 (lora), 2e-5 (full)
    batch_size: int = 8  # rows per training step
    lora_r: int = 16  # LoRA rank of both stages (method lora)
    lora_alpha: int = 32  # LoRA scaling alpha (not the cluster weight alpha)
    max_length: int | None = None  # tokens per row; default: the suspect model's own limit

    def __post_init__(self) -> None:
        checks = [(self.method in (None, "lora", "full"), f"method must be lora or full, got {self.method!r}"),
                  (self.alpha >= 0, f"alpha must be non-negative, got {self.alpha}"),
                  (self.injection_epochs > 0, f"injection_epochs must be positive, got {self.injection_epochs}"),
                  (self.recovery_epochs >= 0, f"recovery_epochs must be non-negative, got {self.recovery_epochs}"),
                  (self.learning_rate is None or self.learning_rate > 0,
                   f"learning_rate must be positive, got {self.learning_rate}"),
                  (self.max_clean >= 1 and self.batch_size >= 1 and self.lora_r >= 1,
                   "max_clean, batch_size and lora_r must be at least 1"),
                  (self.validation_rows >= 0, f"validation_rows must be non-negative, got {self.validation_rows}"),
                  (self.position in POSITIONS, f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")]
        for ok, message in checks:
            if not ok:
                raise BackdoorLabError(f"{self.name}: {message}")
        self.known()

    def known(self, label_names: list[str] | None = None) -> KnownBackdoors:
        """The known backdoors; with ``every_label`` and a classifier's ``label_names``, a pair per label."""
        if self.every_label and label_names:
            triggers, targets = triggers_for_every_label(len(label_names))
            if self.triggers != DEFAULT_TRIGGER_OPTION:
                given = parse_triggers(self.triggers)
                if len(given) != len(triggers):
                    raise BackdoorLabError(f"{self.name}: every_label with {len(label_names)} labels needs "
                                           f"{len(triggers)} triggers (a pair per label), got {len(given)}")
                triggers = given
            return KnownBackdoors(triggers, self.position, targets, self.prefix)
        return KnownBackdoors(parse_triggers(self.triggers), self.position, (self.known_target,), self.prefix)

    def split_rows(self, inputs: DefenderInputs) -> tuple[Dataset, Dataset]:
        """``(training, validation)``: a seeded sample of the defender's clean rows, the last
        ``validation_rows`` held out for the defender's own checks."""
        rows: Dataset = inputs.require("clean_rows", self.name).sample(self.max_clean + self.validation_rows, self.seed)
        held = min(self.validation_rows, max(len(rows) - 1, 0))
        if len(rows) - held < 1:
            raise BackdoorLabError(f"{self.name} needs clean reference rows; got none")
        examples = list(rows)
        return (rows.with_examples(examples[:len(examples) - held], name=f"{rows.name}-train"),
                rows.with_examples(examples[len(examples) - held:], name=f"{rows.name}-validation"))

    def config(self, victim: Victim, epochs: float) -> TrainConfig:
        method = self.method or ("lora" if victim.is_generator else "full")
        return TrainConfig(method=method, epochs=epochs, learning_rate=self.learning_rate or DEFAULT_LEARNING_RATE[method],
                           batch_size=self.batch_size, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                           max_length=self.max_length or victim.max_length, seed=self.seed, save_steps=10**9)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if self.every_label and victim.is_generator:
            raise BackdoorLabError(f"{self.name}: every_label puts known triggers towards each label of a classifier; "
                                   f"{victim.name or 'this model'} is a generator")
        clean, validation = self.split_rows(inputs)
        known = self.known(clean.label_names)
        injection_rows = known.injection_rows(clean, self.seed)  # checks the known targets are labels of the rows
        findings: dict[str, Any] = {"clean_rows": len(clean), "validation_rows": len(validation),
                                    "clean_source": clean.source, "method": self.config(victim, 1).method,
                                    "triggers": list(known.triggers),
                                    **({} if victim.is_generator else {"known_targets": list(known.target_labels)}),
                                    "suspect_known_rate": self.known_rates(victim, known, validation)}
        objective = ClusterObjective(alpha=self.alpha)
        injected = train(victim, injection_rows, Path(workdir) / INJECTION_DIR,
                         self.config(victim, self.injection_epochs), reuse=True, objective=objective)
        findings["injection"] = {"known_rate": self.known_rates(injected, known, validation),
                                 **_loss_summary(objective.history)}
        if self.recovery_epochs == 0:
            return DefenseOutcome(injected, findings)
        recovered = train(injected, known.recovery_rows(clean, self.seed), Path(workdir) / RECOVERY_DIR,
                          self.config(victim, self.recovery_epochs), reuse=True)
        findings["recovery"] = {"known_rate": self.known_rates(recovered, known, validation)}
        return DefenseOutcome(recovered, findings)

    def known_rates(self, victim: Victim, known: KnownBackdoors, validation: Dataset) -> dict[str, float]:
        """Per known trigger, the share of the held-out rows that show the known behaviour with it."""
        return {trigger: known.shows_behaviour(victim, list(validation), i, self.seed + 1)
                for i, trigger in enumerate(known.triggers)} if len(validation) else {}


def _loss_summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """The first and last tenth of the batches' loss terms (empty when this process reused a finished stage)."""
    if not history:
        return {}
    tenth = max(1, len(history) // 10)

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}
    return {"loss_first": mean(history[:tenth]), "loss_last": mean(history[-tenth:])}
