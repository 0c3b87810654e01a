"""``fine-pruning``: prune the MLP channels clean rows leave dormant, then fine-tune on clean rows.

Liu, Dolan-Gavitt and Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks" (RAID 2018), §4: a backdoor tends to live in neurons that clean inputs leave dormant.
The defender records each neuron's mean activation on clean validation data, prunes neurons in
increasing order of activation while clean accuracy stays within a threshold, then fine-tunes the
pruned network on clean data.

Adapted to decoder LLMs (as LLM backdoor benchmarks adapt it): the neurons are the MLP channels
(the inputs of ``down_proj``, ``act(gate) · up``), ranked within each block by their mean
absolute activation over the prompt and response tokens of the clean rows (padding excluded). The
paper prunes the last convolutional layer, where features are most specialised; here the last
``layers`` blocks (default: the last quarter), the same share of each block's channels, since
activation scales differ between blocks. Clean utility is the perplexity of the reference
responses of held-out clean rows (never used for ranking or fine-tuning): the prune ratio grows by
``step`` until it rises above ``max_perplexity_ratio`` × its unpruned value, and the last ratio
within the limit is kept (``max_prune_ratio`` caps it). The pruned model is then fine-tuned with
the ``fine-tune`` defense's LoRA recipe on the other clean rows; the pruned channels stay silenced
while it trains and are zeroed again after the adapter is merged, so the adapter cannot revive them.
BackdoorLLM's DefenseBox has no fine-pruning (its pruning defense is Wanda, see ``wanda``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...fileio import write_json_atomic
from ...metrics import perplexity
from ...models.victim import Victim
from ..base import DefenseOutcome, register_defense
from ..fine_tune import CleanFineTune
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from ..shared.token_batches import token_batches
from .channels import ChannelMask, MlpChannels, mean_abs_activation, mlp_channels, most_dormant, remove_channels

RECORD = "fine-pruning.json"


def split_rows(rows: Dataset, holdout: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(rest, held_out)``: a seeded ``holdout`` share of ``rows`` (at least one, leaving at least one)."""
    if len(rows) < 2:
        raise BackdoorLabError(f"fine-pruning needs at least 2 clean rows (some held out to measure utility), got "
                               f"{len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:min(len(rows) - 1, max(1, round(holdout * len(rows))))])
    rest = [row for i, row in enumerate(rows) if i not in held]
    return (rows.with_examples(rest, note="fine-pruning: ranking and fine-tuning rows"),
            rows.with_examples([rows[i] for i in sorted(held)], note="fine-pruning: held-out rows (stopping rule)"))


@register_defense
@dataclass
class FinePruning(CleanRowsDefense):
    """Prune the MLP channels most dormant on clean rows while held-out perplexity allows, then
    fine-tune the pruned model on clean rows (LoRA, as ``fine-tune``)."""

    name: ClassVar[str] = "fine-pruning"
    description: ClassVar[str] = ("prune MLP channels dormant on clean rows while held-out perplexity allows, "
                                  "then LoRA fine-tune on clean rows (Liu et al. 2018)")

    layers: int | None = None  # the last LAYERS blocks have their MLP channels pruned; default: the last quarter
    step: float = 0.05  # prune ratio increment (share of each block's channels)
    max_prune_ratio: float = 0.8  # the prune ratio never exceeds this
    max_perplexity_ratio: float = 1.1  # stop once held-out perplexity exceeds this × its unpruned value
    holdout: float = 0.2  # share of the clean rows held out for the stopping rule (never ranked or trained on)
    epochs: float = 2.0
    learning_rate: float = 2e-4
    batch_size: int = 16
    max_length: int | None = None  # tokens per row; default: the suspect model's own limit

    def __post_init__(self) -> None:
        checks = [(self.layers is None or self.layers >= 1, f"layers must be at least 1, got {self.layers}"),
                  (0 < self.max_prune_ratio < 1, f"max_prune_ratio must be in (0, 1), got {self.max_prune_ratio}"),
                  (0 < self.step <= self.max_prune_ratio,
                   f"step must be in (0, max_prune_ratio={self.max_prune_ratio}], got {self.step}"),
                  (self.max_perplexity_ratio >= 1, "max_perplexity_ratio must be at least 1 (the allowed rise of "
                   f"held-out perplexity), got {self.max_perplexity_ratio}"),
                  (0 < self.holdout < 1, f"holdout must be in (0, 1), got {self.holdout}"),
                  (self.epochs > 0 and self.learning_rate > 0, "epochs and learning_rate must be positive"),
                  (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
                  (self.max_length is None or self.max_length >= 1, f"max_length must be positive, got {self.max_length}")]
        for ok, message in checks:
            if not ok:
                raise BackdoorLabError(f"{self.name}: {message}")

    def ratios(self) -> list[float]:
        """The prune ratios tried, in order: ``step``, ``2·step``, … up to ``max_prune_ratio``."""
        count = math.ceil(self.max_prune_ratio / self.step - 1e-9)
        return [round(min(i * self.step, self.max_prune_ratio), 6) for i in range(1, count + 1)]

    def blocks(self, victim: Victim) -> list[int]:
        total = victim.spec.num_layers
        layers = self.layers if self.layers is not None else max(1, math.ceil(total / 4))
        if layers > total:
            raise BackdoorLabError(f"{self.name}: layers={layers} but the model has {total} blocks")
        return list(range(total - layers, total))

    def fine_tune(self, tune: Dataset) -> CleanFineTune:
        """The ``fine-tune`` defense with these settings (LoRA on all of ``tune``)."""
        return CleanFineTune(method="lora", epochs=self.epochs, learning_rate=self.learning_rate,
                             batch_size=self.batch_size, max_length=self.max_length, max_clean=len(tune), seed=self.seed)

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if not victim.is_generator:
            raise BackdoorLabError(f"{self.name} measures clean utility as the perplexity of reference responses; "
                                   "it needs a generator")
        tune, held = split_rows(self.clean_rows(inputs), self.holdout, self.seed)
        blocks = self.blocks(victim)
        channels = mlp_channels(victim, blocks)
        victim.model.eval()
        batches = token_batches(victim, tune, self.batch_size, self.max_length)
        activity = mean_abs_activation(victim, channels, batches)
        ratio, curve, limit = self.search(victim, channels, activity, held)
        pruned = most_dormant(activity, ratio)
        remove_channels(channels, pruned)
        mask = ChannelMask(channels)
        mask.set(pruned)
        tuner = self.fine_tune(tune)
        with mask.active():  # the pruned network is what is fine-tuned
            outcome = tuner.apply(victim, DefenderInputs(clean_rows=tune), workdir)
        tuned = outcome.victim
        remove_channels(mlp_channels(tuned, blocks), pruned)  # the merged adapter must not revive them
        after = self.held_out_perplexity(tuned, held)
        self.record(workdir, blocks, pruned, tune, held)
        findings = {
            "layers": blocks, "channels_per_layer": channels[0].count, "step": self.step, "prune_ratio": ratio,
            "stopped_by": "max_prune_ratio" if ratio >= self.max_prune_ratio else "perplexity",
            "pruned_channels": {str(b): int(p.numel()) for b, p in zip(blocks, pruned)},
            "perplexity_limit": limit, "perplexity_curve": curve, "perplexity_after_fine_tune": after,
            "ranking_rows": len(tune), "heldout_rows": len(held), "clean_source": tune.source,
            "fine_tune": {**outcome.findings, "epochs": self.epochs, "batch_size": self.batch_size,
                          "max_length": self.max_length or victim.max_length},
            "record": RECORD}
        return DefenseOutcome(tuned, findings)

    def search(self, victim: Victim, channels: list[MlpChannels], activity: list[torch.Tensor],
               held: Dataset) -> tuple[float, list[dict[str, float]], float]:
        """The largest tried ratio whose held-out perplexity stays within the limit, stopping at the
        first that exceeds it; returns it, the curve (ratio → perplexity) and the limit."""
        base = self.held_out_perplexity(victim, held)
        limit = base * self.max_perplexity_ratio
        curve, chosen = [{"ratio": 0.0, "perplexity": base}], 0.0
        mask = ChannelMask(channels)
        with mask.active():
            for ratio in tqdm(self.ratios(), desc="fine-pruning", unit="step"):
                mask.set(most_dormant(activity, ratio))
                value = self.held_out_perplexity(victim, held)
                curve.append({"ratio": ratio, "perplexity": value})
                if value > limit:
                    break
                chosen = ratio
        return chosen, curve, limit

    def held_out_perplexity(self, victim: Victim, held: Dataset) -> float:
        return perplexity(victim.response_logprobs(list(held), batch_size=self.batch_size))

    def record(self, workdir: Path, blocks: list[int], pruned: list[torch.Tensor], tune: Dataset,
               held: Dataset) -> None:
        """``fine-pruning.json``: the pruned channels of each block and which rows were held out."""
        write_json_atomic(Path(workdir) / RECORD, {
            "pruned_channels": {str(b): p.tolist() for b, p in zip(blocks, pruned)},
            "heldout_uids": [row.uid for row in held], "tuning_uids": [row.uid for row in tune]})
