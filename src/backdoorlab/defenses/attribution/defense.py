"""Mitigations built on backdoor attribution (arXiv 2509.21761 §5.2–5.3).

Both find the backdoor's attention heads with BAHA on clean/triggered prompt pairs, then edit
weights (:mod:`backdoorlab.defenses.shared.weight_edits`). The study assumes the defender holds triggered
examples; that is oracle knowledge, so both declare the ``oracle`` input: pairs built on rows
disjoint from every row the result is measured on (:func:`~backdoorlab.defenses.inputs.oracle_examples`),
and ``defense.json`` records their use.

- ``head-ablation``: remove the top ``top_fraction`` of heads from the model;
- ``backdoor-vector``: project the backdoor vector's direction out of the residual stream.
  ``direction="triggered-mean"`` uses the study's vector (summed triggered mean contributions of
  the top heads); the default ``"difference"`` subtracts the same heads' clean mean contributions
  first, which drops the part every prompt shares and so spares clean behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...analysis.runner import Analysis, AnalysisConfig
from ...analysis.subject import PairSource
from ...analysis.vector import backdoor_vector
from ...errors import BackdoorLabError
from ...models.victim import Victim
from ..base import Defense, DefenseOutcome, register_defense
from ..inputs import DefenderInputs, OracleExamples
from ..shared.weight_edits import project_out, remove_heads

DIRECTIONS = ("difference", "triggered-mean")


@dataclass
class _AttributionDefense(Defense):
    needs: ClassVar[tuple[str, ...]] = ("oracle",)

    top_fraction: float = 0.03  # share of heads ranked as the backdoor's (the study's ~3%)
    method: str = "exact"  # head attribution: exact | approx (attribution patching) | both
    pairs: int = 64  # clean/triggered prompt pairs drawn from the oracle rows
    attribution_prompts: int = 32  # clean prompts in the ACIE average
    batch_size: int = 16  # rows per forward pass
    seed: int = 0  # seed of the pair sample

    def analysis(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> Analysis:
        oracle: OracleExamples = inputs.require("oracle", self.name)
        config = AnalysisConfig(pairs=self.pairs, attribution_prompts=self.attribution_prompts, method=self.method,
                                top_fraction=self.top_fraction, batch_size=self.batch_size, seed=self.seed)
        source = PairSource(oracle.manifest, oracle.clean, oracle.triggered, oracle.name)
        return Analysis(victim, source, workdir / "analysis", config)

    def __post_init__(self) -> None:
        self.check()  # bad options fail when the defense is built, before any model is loaded

    def check(self) -> None:
        """Raise a clear error on impossible options (those shared with ``analyze`` are checked as there)."""
        try:
            self.analysis_config().check()
        except BackdoorLabError as error:
            raise BackdoorLabError(f"{self.name}: {error}") from None

    def analysis_config(self) -> AnalysisConfig:
        """The ``analyze`` settings these options stand for."""
        return AnalysisConfig(pairs=self.pairs, attribution_prompts=self.attribution_prompts, method=self.method,
                              top_fraction=self.top_fraction, batch_size=self.batch_size, seed=self.seed)


@register_defense
@dataclass
class HeadAblation(_AttributionDefense):
    """Remove the top attributed heads (their output-projection columns are zeroed)."""

    name: ClassVar[str] = "head-ablation"
    description: ClassVar[str] = "BAHA-rank heads on triggered/clean pairs, zero the top ones' output weights"

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        heads = self.analysis(victim, inputs, workdir).top_heads()
        remove_heads(victim, heads)
        return DefenseOutcome(victim, {"removed_heads": [list(h) for h in heads]})


@register_defense
@dataclass
class BackdoorVectorDefense(_AttributionDefense):
    """Project the backdoor vector's direction out of every residual-stream writer."""

    name: ClassVar[str] = "backdoor-vector"
    description: ClassVar[str] = "BAHA-rank heads, build the backdoor vector, project it out of the weights"

    direction: str = "difference"  # difference (triggered minus clean head means) | triggered-mean (the study's)

    def check(self) -> None:
        super().check()
        if self.direction not in DIRECTIONS:
            raise BackdoorLabError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if self.direction not in DIRECTIONS:
            raise BackdoorLabError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        analysis = self.analysis(victim, inputs, workdir)
        heads = analysis.top_heads()
        triggered, clean = analysis.head_means()
        vector = backdoor_vector(victim, triggered, heads)
        if self.direction == "difference":
            vector = vector - backdoor_vector(victim, clean, heads)
        project_out(victim, vector)
        return DefenseOutcome(victim, {"heads": [list(h) for h in heads], "direction": self.direction,
                                       "vector_norm": float(vector.norm())})
