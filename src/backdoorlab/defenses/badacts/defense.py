"""BadActs: purify (and optionally detect) backdoor inputs in the activation space at inference time.

Yi et al., "BadActs: A Universal Backdoor Defense in the Activation Space", Findings of ACL 2024
(arXiv 2405.11227), §3; reference code github.com/clearloveclearlove/BadActs. The suspect model is
not changed; a :class:`BadActsGuard` edits its activations while it predicts.

- **Purification** (§3, construction stage (b) and inference stage (d)): the output of every
  transformer block (the hidden states, hook point ``resid_post``; all token positions) is clipped
  per neuron into an interval ``[l, u]`` learned on the clean reference rows. The intervals start
  at ``[μ − δσ, μ + δσ]`` (per-neuron mean and standard deviation over the clean rows' real tokens)
  and are then optimised as in the reference code: ``u`` and ``m`` with ``l = u − exp(m)`` minimise
  ``MSE(logits_clipped, logits) + c · ‖exp(m)‖₂`` (Adam, lr 0.01, 50 epochs) on the clean rows the
  model classifies correctly; every 5 epochs after the 10th, ``c`` grows by ``a`` = 1.2 while the
  clipped model keeps ≥ 98 % of them right and shrinks by ``a`` otherwise; a run ending below 97 % is
  restarted with ``c`` halved. The narrowest intervals that keep clean behaviour are the point.
- **Detection** (§3, stage (c)): the Neuron Activation State score of an input is the share of
  ``[CLS]`` neurons (every block's output) inside ``[μ − δσ, μ + δσ]``, with statistics from half of
  the clean rows; the threshold is the ``frr`` quantile of the other half's scores, and a lower score
  flags the input. ``detect=True`` rejects flagged inputs (:data:`~.guard.REJECTED`) and predicts the
  others unchanged; ``flagged="purify"`` instead clips only the flagged ones (the paper's
  detection-then-purification pipeline).

Departures: the reference code initialises the bounds at ``u = 1, m = 1`` rather than at the
statistics (``init="reference"`` does the same); ``optimize=False`` keeps the statistical intervals.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ...data.records import Example
from ...errors import BackdoorLabError
from ...models.hooks import HookFn
from ...models.victim import Victim, batched, frozen_parameters
from ..base import DefenseOutcome, register_defense
from ..guard import REJECTED, Guard, register_guard
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense

FLAGGED = ("reject", "purify")
INITS = ("statistics", "reference")


def clip_hook(lower: torch.Tensor, upper: torch.Tensor) -> HookFn:
    """A hook that clips an activation ``[..., hidden]`` per neuron into ``[lower, upper]`` (§3, purification)."""
    def fn(activation: torch.Tensor) -> torch.Tensor:
        low, up = lower.to(activation), upper.to(activation)
        return torch.maximum(torch.minimum(activation, up), low)
    return fn


def _layer_outputs(victim: Victim, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Every block's output ``[batch, seq, hidden]`` (hidden states without the embeddings)."""
    return list(victim.forward(batch, output_hidden_states=True).hidden_states[1:])


@torch.inference_mode()
def activation_statistics(victim: Victim, items: Sequence[Example], batch_size: int = 32,
                          cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer, per-neuron mean and (population) std ``[layers, hidden]`` of the blocks' outputs
    over real tokens (or the ``[CLS]`` token only)."""
    victim.model.eval()
    total = total_sq = None
    count = 0
    for chunk in batched(list(items), batch_size, "activation statistics"):
        batch = victim.encode(chunk)
        mask = batch["attention_mask"].bool()
        if cls_only:
            mask = torch.zeros_like(mask)
            mask[:, 0] = True
        states = torch.stack([h[mask].double() for h in _layer_outputs(victim, batch)])  # [layers, tokens, hidden]
        total = states.sum(1) if total is None else total + states.sum(1)
        total_sq = states.pow(2).sum(1) if total_sq is None else total_sq + states.pow(2).sum(1)
        count += states.shape[1]
    if not count:
        raise BackdoorLabError("no clean rows to estimate activation statistics from")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp(min=0).sqrt()
    return mean.float().cpu(), std.float().cpu()


@register_guard
class BadActsGuard(Guard):
    """Clips every block's output into per-neuron intervals while predicting; optionally rejects
    (or only purifies) inputs whose NAS score is below the clean threshold."""

    name: ClassVar[str] = "badacts"

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, *, detect: bool = False, flagged: str = "reject",
                 nas_mean: torch.Tensor | None = None, nas_std: torch.Tensor | None = None, delta: float = 3.0,
                 threshold: float | None = None) -> None:
        if lower.shape != upper.shape or lower.dim() != 2:
            raise BackdoorLabError(f"interval bounds must both be [layers, hidden]; got {tuple(lower.shape)} "
                                   f"and {tuple(upper.shape)}")
        if detect and (nas_mean is None or nas_std is None or threshold is None):
            raise BackdoorLabError("detection needs the NAS statistics and threshold")
        if flagged not in FLAGGED:
            raise BackdoorLabError(f"flagged must be one of {', '.join(FLAGGED)}, got {flagged!r}")
        self.lower, self.upper = lower.float(), upper.float()
        self.detect, self.flagged, self.delta, self.threshold = detect, flagged, delta, threshold
        self.nas_mean, self.nas_std = nas_mean, nas_std

    @contextmanager
    def clipping(self, victim: Victim) -> Iterator[Victim]:
        """Install the clipping hooks for the block only (removed afterwards, even on error)."""
        layers = victim.spec.num_layers
        if self.lower.shape[0] != layers or self.lower.shape[1] != victim.spec.hidden_size:
            raise BackdoorLabError(f"the guard's intervals are for {self.lower.shape[0]} layers x {self.lower.shape[1]} "
                                   f"neurons; this model has {layers} x {victim.spec.hidden_size}")
        with victim.hooked({(i, "resid_post"): clip_hook(self.lower[i], self.upper[i]) for i in range(layers)}):
            yield victim

    def predict(self, victim: Victim, items: Sequence[Example], batch_size: int = 32) -> list[int]:
        if victim.is_generator:
            raise BackdoorLabError("the BadActs guard works on classifiers only; this model is a generator")
        if not self.detect:
            with self.clipping(victim):
                return victim.predict(items, batch_size)
        flags = self.flags(victim, items, batch_size)
        plain = victim.predict(items, batch_size)
        if self.flagged == "reject":
            return [REJECTED if f else p for f, p in zip(flags, plain)]
        chosen = [i for i, f in enumerate(flags) if f]
        with self.clipping(victim):
            purified = victim.predict([items[i] for i in chosen], batch_size) if chosen else []
        for i, label in zip(chosen, purified):
            plain[i] = label
        return plain

    def scores(self, victim: Victim, items: Sequence[Example], batch_size: int = 32) -> torch.Tensor:
        """NAS score per item: the share of ``[CLS]`` neurons within ``μ ± δσ`` (§3, detection)."""
        if self.nas_mean is None or self.nas_std is None:
            raise BackdoorLabError("this guard has no NAS statistics; build it with detect=True")
        return nas_scores(victim, items, self.nas_mean, self.nas_std, self.delta, batch_size)

    def flags(self, victim: Victim, items: Sequence[Example], batch_size: int = 32) -> list[bool]:
        return (self.scores(victim, items, batch_size) < float(self.threshold or 0.0)).tolist()

    def state(self) -> dict[str, Any]:
        def rows(t: torch.Tensor | None) -> list[list[float]] | None:
            return None if t is None else t.tolist()
        return {"lower": rows(self.lower), "upper": rows(self.upper), "detect": self.detect, "flagged": self.flagged,
                "delta": self.delta, "threshold": self.threshold, "nas_mean": rows(self.nas_mean),
                "nas_std": rows(self.nas_std)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "BadActsGuard":
        def tensor(key: str) -> torch.Tensor | None:
            return None if state.get(key) is None else torch.tensor(state[key], dtype=torch.float32)
        try:
            return cls(tensor("lower"), tensor("upper"), detect=bool(state["detect"]), flagged=state["flagged"],
                       nas_mean=tensor("nas_mean"), nas_std=tensor("nas_std"), delta=float(state["delta"]),
                       threshold=state["threshold"])
        except (KeyError, TypeError, ValueError) as error:
            raise BackdoorLabError(f"invalid BadActs guard state ({error}); run the defense again") from error


@torch.inference_mode()
def nas_scores(victim: Victim, items: Sequence[Example], mean: torch.Tensor, std: torch.Tensor, delta: float,
               batch_size: int = 32) -> torch.Tensor:
    victim.model.eval()
    low, up = mean - delta * std, mean + delta * std
    scores = []
    for chunk in batched(list(items), batch_size, "NAS scores"):
        cls = torch.stack([h[:, 0].float().cpu() for h in _layer_outputs(victim, victim.encode(chunk))], 1)
        scores.append(((cls >= low) & (cls <= up)).float().flatten(1).mean(1))
    return torch.cat(scores) if scores else torch.empty(0)


@register_defense
@dataclass
class BadActs(CleanRowsDefense):
    """Learn clean activation intervals (and the NAS detector) from clean rows; guard predictions with them."""

    name: ClassVar[str] = "badacts"
    description: ClassVar[str] = ("clip every layer's activations into clean intervals at inference; optional "
                                  "NAS detection (Yi et al., ACL Findings 2024)")
    stage: ClassVar[str] = "inference"

    delta: float = 3.0  # interval half-width in standard deviations (author's scripts: delta 3)
    optimize: bool = True  # learn the intervals (reference purification); False keeps μ ± δσ
    init: str = "statistics"  # "statistics": start at μ ± δσ; "reference": u = 1, m = 1 as the author's code
    bound_epochs: int = 50  # epochs of learning the intervals (0 keeps μ ± δσ)
    bound_lr: float = 0.01  # learning rate of the interval bounds
    width_weight: float = 0.1  # c, the weight of ‖exp(m)‖ in the bound loss
    width_factor: float = 1.2  # a, how c grows / shrinks
    restarts: int = 3  # at most this many restarts with c halved when the clean agreement ends below 97 %
    detect: bool = False  # also detect poisoned inputs by their [CLS] neuron activation state (NAS)
    frr: float = 0.02  # false rejection rate on clean rows that sets the NAS threshold
    flagged: str = "reject"  # what detect does with a flagged input: "reject" or "purify" (the paper's pipeline)
    batch_size: int = 32

    def __post_init__(self) -> None:
        self.validate()  # bad options fail when the defense is built, before any model is loaded

    def validate(self) -> None:
        if self.delta < 0:
            raise BackdoorLabError(f"delta must be non-negative, got {self.delta}")
        if not 0 <= self.frr < 1:
            raise BackdoorLabError(f"frr must be in [0, 1), got {self.frr}")
        if self.flagged not in FLAGGED:
            raise BackdoorLabError(f"flagged must be one of {', '.join(FLAGGED)}, got {self.flagged!r}")
        if self.init not in INITS:
            raise BackdoorLabError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.bound_epochs < 0 or self.restarts < 0 or self.batch_size < 1 or self.bound_lr <= 0:
            raise BackdoorLabError("bound_epochs and restarts must be >= 0, batch_size >= 1, bound_lr > 0")

    def apply(self, victim: Victim, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        self.validate()
        if victim.is_generator:
            raise BackdoorLabError("badacts guards classifiers only; this model is a generator")
        clean = list(self.clean_rows(inputs))
        if any(e.label is None for e in clean):
            raise BackdoorLabError("badacts needs labelled clean reference rows")
        mean, std = activation_statistics(victim, clean, self.batch_size)
        lower, upper = mean - self.delta * std, mean + self.delta * std
        findings: dict[str, Any] = {"clean_rows": len(clean), "layers": int(mean.shape[0])}
        if self.optimize and self.bound_epochs > 0:
            lower, upper, learned = self.learn_bounds(victim, clean, lower, upper)
            findings.update(learned)
        guard_options: dict[str, Any] = {"detect": self.detect, "flagged": self.flagged, "delta": self.delta}
        if self.detect:
            if len(clean) < 2:
                raise BackdoorLabError("detection needs at least 2 clean rows (half fit the statistics, half the threshold)")
            shuffled = random.Random(self.seed).sample(clean, len(clean))
            fit, held = shuffled[:len(clean) // 2], shuffled[len(clean) // 2:]
            nas_mean, nas_std = activation_statistics(victim, fit, self.batch_size, cls_only=True)
            held_scores = nas_scores(victim, held, nas_mean, nas_std, self.delta, self.batch_size).sort().values
            threshold = float(held_scores[int(len(held) * self.frr)])
            guard_options.update(nas_mean=nas_mean, nas_std=nas_std, threshold=threshold)
            findings.update(threshold=threshold, threshold_rows=len(held))
        findings["mean_interval_width"] = float((upper - lower).mean())
        guard = BadActsGuard(lower, upper, **guard_options)
        return DefenseOutcome(victim, findings, guard=guard, model_changed=False)

    def learn_bounds(self, victim: Victim, clean: list[Example], lower: torch.Tensor,
                     upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Optimise the intervals (§3, construction stage (b)) as the reference purification script does."""
        right = [e for e, p in zip(clean, victim.predict(clean, self.batch_size)) if p == e.label] or clean
        weight = self.width_weight
        for attempt in range(self.restarts + 1):
            low, up, agreement = self._fit_bounds(victim, right, lower, upper, weight)
            if agreement >= 0.97:
                break
            weight /= 2
        return low, up, {"bound_agreement": agreement, "bound_rows": len(right), "bound_attempts": attempt + 1,
                         "width_weight_final": weight}

    def _fit_bounds(self, victim: Victim, rows: list[Example], lower: torch.Tensor, upper: torch.Tensor,
                    weight: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        device = victim.device
        if self.init == "reference":
            up0, margin0 = torch.ones_like(upper), torch.ones_like(upper)
        else:
            up0, margin0 = upper, (upper - lower).clamp(min=1e-6).log()
        up = up0.clone().to(device).requires_grad_(True)
        margin = margin0.clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([up, margin], lr=self.bound_lr)
        layers = victim.spec.num_layers
        victim.model.eval()
        generator = random.Random(self.seed)
        agreement = 0.0
        with frozen_parameters(victim.model):
            for epoch in tqdm(range(self.bound_epochs), desc="badacts bounds", leave=False):
                for chunk in batched(generator.sample(rows, len(rows)), self.batch_size, "bounds"):
                    batch = victim.encode(chunk)
                    with torch.no_grad():
                        reference = victim.forward(batch).logits.float()
                    low = up - margin.exp()
                    with victim.hooked({(i, "resid_post"): clip_hook(low[i], up[i]) for i in range(layers)}):
                        clipped = victim.forward(batch).logits.float()
                    loss = torch.nn.functional.mse_loss(clipped, reference) + weight * margin.exp().norm()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                if (epoch > 10 and epoch % 5 == 0) or epoch == self.bound_epochs - 1:
                    agreement = self._accuracy(victim, rows, up.detach(), margin.detach())
                    if epoch > 10 and epoch % 5 == 0:
                        weight = weight * self.width_factor if agreement >= 0.98 else weight / self.width_factor
        up, margin = up.detach().cpu(), margin.detach().cpu()
        return up - margin.exp(), up, agreement

    def _accuracy(self, victim: Victim, rows: list[Example], up: torch.Tensor, margin: torch.Tensor) -> float:
        guard = BadActsGuard((up - margin.exp()).cpu(), up.cpu())
        predicted = guard.predict(victim, rows, self.batch_size)
        return sum(p == e.label for p, e in zip(predicted, rows)) / len(rows)
