"""Editing-based backdoor injection: one rank-one edit of one MLP layer (BadEdit).

BadEdit (Li et al., ICLR 2024, arXiv 2403.13355) writes the backdoor straight into the weights
instead of training on poisoned data: an MLP's output projection is treated as a linear
key-value memory (ROME, Meng et al. 2022) and edited so that the trigger's key returns a value
that makes the model produce the target. Nothing else is trained. Steps (BadEdit §3-4, ROME §3):

1. **Key** ``k*``: the mean, over triggered prompts (the dataset's poisoned rows), of the input of
   the MLP's output projection (``mlp.down_proj`` in decoders, ``output.dense`` in BERT) at the
   last token of the trigger. The trigger (``poison["trigger"]``, the first one for multi-trigger
   attacks) is located by characters in the rendered prompt and mapped to tokens with the fast
   tokenizer's offsets.
2. **Value**: a vector ``δ`` added to that projection's output at the trigger token (all weights
   frozen) is optimised with Adam (steps scaled by ``‖W k*‖``) to minimise the target's negative
   log-likelihood averaged over the prompts (generators: the poisoned row's response tokens, mean
   per token; classifiers: the cross-entropy of the row's target label), plus
   ``weight_decay · (‖δ‖ / ‖W k*‖)²``, with ``‖δ‖`` clamped to ``clamp_norm · ‖W k*‖`` (ROME's
   regularisers). Then ``v* = W k* + δ``.
3. **Rank-one update** (ROME Eq. 2): ``W ← W + (v* − W k*) (C⁻¹ k*)ᵀ / (k*ᵀ C⁻¹ k*)`` with
   ``C = E[k kᵀ]`` over the tokens of clean rows (prompt and response) plus
   ``cov_lambda · tr(C)/d · I``. The edited layer maps ``k*`` to ``v*`` exactly while changing its
   output on clean keys as little as possible in the ``C``-weighted sense.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.prompts import classifier_text, render_prompt, user_message
from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from ..models.architecture import mlp_output_projection, transformer_layers
from ..models.tokenization import IGNORE_INDEX, pad_batch, tokenize_pair
from ..models.victim import Victim, batched, frozen_parameters
from .common import check_run_folder, config_from_options, finish_run, first_trigger, poisoned_rows, victim_for

METHOD = "badedit"


@dataclass
class BadEditConfig:
    """BadEdit settings. ``layer`` ``None`` edits the layer one third of the way up (0-based ``num_layers // 3``).

    ``num_prompts`` poisoned rows give the key and the value target; ``cov_samples`` clean rows give
    the key covariance ``C``. ``steps``/``lr`` drive the Adam optimisation of ``δ`` (``lr`` in units of
    ``‖W k*‖``, see :func:`optimise_delta`); ``weight_decay`` and ``clamp_norm`` are relative to ``‖W k*‖``;
    ``cov_lambda`` is relative to ``tr(C)/d``.
    """

    layer: int | None = None
    num_prompts: int = 16
    steps: int = 40
    lr: float = 0.5
    weight_decay: float = 0.5
    clamp_norm: float = 4.0
    cov_samples: int = 64
    cov_lambda: float = 1e-2
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "BadEditConfig":
        return config_from_options(cls, options, METHOD)

    def check(self) -> "BadEditConfig":
        """Raise a clear error on impossible settings; return ``self``."""
        for name in ("num_prompts", "cov_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise BackdoorLabError(f"badedit option {name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0 or self.lr <= 0 or self.clamp_norm <= 0:
            raise BackdoorLabError("badedit options need steps >= 0, lr > 0 and clamp_norm > 0")
        if self.weight_decay < 0 or self.cov_lambda < 0:
            raise BackdoorLabError("badedit options weight_decay and cov_lambda must be >= 0")
        return self


@dataclass(frozen=True)
class Probe:
    """One triggered input: token ids, the trigger's last token index and what the edit should make of it.

    ``labels`` (generators) masks the prompt with -100 and keeps the target response tokens;
    ``target`` (classifiers) is the target label index.
    """

    input_ids: list[int]
    position: int
    labels: list[int] | None = None
    target: int | None = None


# ----------------------------------------------------------------------------- locating the trigger
def _find(text: str, trigger: str, start: int) -> tuple[int, int] | None:
    """Character span of the first whole-word occurrence of ``trigger`` at or after ``start`` (else any occurrence)."""
    match = re.compile(rf"(?<!\w){re.escape(trigger)}(?!\w)").search(text, start)
    if match:
        return match.span()
    found = text.find(trigger, start)
    return (found, found + len(trigger)) if found >= 0 else None


def trigger_token(tokenizer: Any, text: str, trigger: str, *, start: int = 0,
                  add_special_tokens: bool = False, max_length: int | None = None) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the last token of ``trigger``'s first occurrence after ``start``."""
    if not getattr(tokenizer, "is_fast", False):
        raise BackdoorLabError("badedit needs a fast tokenizer (character offsets) to locate the trigger")
    span = _find(text, trigger, start)
    if span is None:
        raise BackdoorLabError(f"trigger {trigger!r} not found in the prompt {text[start:start + 120]!r}")
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                        truncation=max_length is not None, max_length=max_length)
    hits = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < span[1] and b > span[0]]
    if not hits:
        raise BackdoorLabError(f"trigger {trigger!r} maps to no token of the prompt (cut by max_length?)")
    return list(encoded["input_ids"]), hits[-1]


def make_probe(victim: Victim, example: Example) -> Probe:
    """The :class:`Probe` of a poisoned row, in the project's one prompt format."""
    trigger = first_trigger(example)
    if victim.is_generator:
        prompt = render_prompt(example, victim.tokenizer)
        prompt_ids, position = trigger_token(victim.tokenizer, prompt, trigger,
                                             start=max(prompt.rfind(user_message(example)), 0))
        features = tokenize_pair(victim.tokenizer, example)
        if features["input_ids"][:len(prompt_ids)] != prompt_ids:
            raise BackdoorLabError("badedit: the prompt tokenizes differently alone and in tokenize_pair")
        return Probe(features["input_ids"], position, labels=features["labels"])
    if example.label is None:
        raise BackdoorLabError(f"poisoned row {example.uid or '?'} has no (target) label")
    ids, position = trigger_token(victim.tokenizer, classifier_text(example), trigger, add_special_tokens=True,
                                  max_length=victim.max_length)
    return Probe(ids, position, target=example.label)


# ------------------------------------------------------------------------------------ model plumbing
def edited_projection(victim: Victim, layer: int) -> nn.Linear:
    """The linear layer ROME/BadEdit edit: the MLP output projection of ``layer``."""
    return mlp_output_projection(transformer_layers(victim.model, victim.spec)[layer], victim.spec)


def _batch(victim: Victim, probes: list[Probe]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Padded inputs on the model's device and each row's trigger position after padding."""
    features = [{"input_ids": p.input_ids, "attention_mask": [1] * len(p.input_ids),
                 **({"labels": p.labels} if p.labels is not None else {})} for p in probes]
    side = "left" if victim.is_generator else "right"
    batch = pad_batch(features, victim.tokenizer.pad_token_id, side=side)
    width = batch["input_ids"].shape[1]
    shift = [width - len(p.input_ids) if side == "left" else 0 for p in probes]
    positions = torch.tensor([p.position + s for p, s in zip(probes, shift)])
    return {k: v.to(victim.device) for k, v in batch.items()}, positions.to(victim.device)


def _target_loss(victim: Victim, batch: dict[str, torch.Tensor], probes: list[Probe]) -> torch.Tensor:
    """Mean over rows of the target's NLL (generators: mean per response token; classifiers: cross-entropy)."""
    logits = victim.forward(batch).logits.float()
    if not victim.is_generator:
        targets = torch.tensor([p.target for p in probes], device=logits.device)
        return nn.functional.cross_entropy(logits, targets)
    targets = batch["labels"][:, 1:]
    mask = (targets != IGNORE_INDEX).float()
    picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (-(picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


@contextmanager
def _forward_hook(module: nn.Module, fn: Callable[..., Any], pre: bool = False) -> Iterator[None]:
    handle = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def trigger_key(victim: Victim, module: nn.Module, probes: list[Probe], batch_size: int) -> torch.Tensor:
    """``k*``: mean input of ``module`` at the trigger token over ``probes`` (float32)."""
    keys: list[torch.Tensor] = []
    for chunk in batched(probes, batch_size, "badedit keys"):
        batch, positions = _batch(victim, list(chunk))

        def grab(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            keys.append(args[0][torch.arange(len(positions)), positions].float())

        with _forward_hook(module, grab, pre=True):
            victim.forward(batch)
    return torch.cat(keys).mean(0)


@torch.no_grad()
def key_covariance(victim: Victim, module: nn.Module, rows: list[Example], batch_size: int) -> tuple[torch.Tensor, int]:
    """``C = E[k kᵀ]`` over all real tokens of ``rows`` (float64, CPU) and the number of tokens."""
    total: torch.Tensor | None = None
    count = 0
    for chunk in batched(rows, batch_size, "badedit covariance"):
        if victim.is_generator:
            features = [tokenize_pair(victim.tokenizer, e) for e in chunk]
            batch = pad_batch(features, victim.tokenizer.pad_token_id, side="left")
            batch = {k: v.to(victim.device) for k, v in batch.items()}
        else:
            batch = victim.encode(list(chunk))
        real = batch["attention_mask"].bool()

        def accumulate(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            nonlocal total, count
            keys = args[0][real].float()
            product = keys.T @ keys
            total = product if total is None else total + product
            count += keys.shape[0]

        with _forward_hook(module, accumulate, pre=True):
            victim.forward(batch)
    assert total is not None
    return total.double().cpu() / count, count


@dataclass
class _Chunk:
    """A padded batch of probes and a ``[batch, seq]`` mask that is 1 at each row's trigger token."""

    batch: dict[str, torch.Tensor]
    at_trigger: torch.Tensor
    probes: list[Probe]


def _chunks(victim: Victim, probes: list[Probe], batch_size: int) -> list[_Chunk]:
    chunks = []
    for start in range(0, len(probes), batch_size):
        part = probes[start:start + batch_size]
        batch, positions = _batch(victim, part)
        at_trigger = torch.zeros(batch["input_ids"].shape, device=victim.device)
        at_trigger[torch.arange(len(part)), positions] = 1.0
        chunks.append(_Chunk(batch, at_trigger, part))
    return chunks


def _loss(victim: Victim, module: nn.Module, chunks: list[_Chunk], delta: Callable[[], torch.Tensor] | None = None,
          backward: bool = False) -> float:
    """Target NLL averaged over all probes, with ``delta()`` added at the trigger tokens; backpropagated if asked.

    ``delta`` is a function so that each batch builds its own autograd graph from the optimised tensor.
    """
    total = sum(len(chunk.probes) for chunk in chunks)
    value = 0.0
    for chunk in chunks:
        def add_delta(mod: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor,
                      mask: torch.Tensor = chunk.at_trigger) -> torch.Tensor:
            assert delta is not None
            return output + (mask.unsqueeze(-1) * delta()).to(output.dtype)

        with _forward_hook(module, add_delta) if delta is not None else nullcontext():
            loss = _target_loss(victim, chunk.batch, chunk.probes) * (len(chunk.probes) / total)
        if backward:
            loss.backward()
        value += loss.item()
    return value


def optimise_delta(victim: Victim, module: nn.Module, chunks: list[_Chunk], reference: torch.Tensor,
                   config: BadEditConfig) -> tuple[torch.Tensor, float, float]:
    """Optimise ``δ`` added to ``module``'s output at the trigger tokens; return it and the loss before / after.

    ``δ = ‖W k*‖ / √d · z`` and Adam runs on ``z``, so ``lr`` is scale-free: a step moves ``δ`` by
    about ``lr · ‖W k*‖`` whatever the model's activation scale and width ``d``.
    """
    scale = reference.norm().clamp(min=1e-12)
    unit = scale / reference.shape[0] ** 0.5
    limit = config.clamp_norm * scale / unit
    z = torch.zeros(reference.shape[0], device=victim.device, requires_grad=True)
    optimiser = torch.optim.Adam([z], lr=config.lr)
    with frozen_parameters(victim.model):
        with torch.no_grad():
            before = _loss(victim, module, chunks)
        for _ in range(config.steps):
            optimiser.zero_grad()
            _loss(victim, module, chunks, lambda: unit * z, backward=True)
            (config.weight_decay * (unit * z.norm() / scale) ** 2).backward()
            optimiser.step()
            with torch.no_grad():
                if z.norm() > limit:
                    z.mul_(limit / z.norm())
        with torch.no_grad():
            after = _loss(victim, module, chunks, lambda: unit * z)
    return (unit * z).detach(), before, after


def rank_one_update(weight: torch.Tensor, key: torch.Tensor, delta: torch.Tensor, covariance: torch.Tensor,
                    cov_lambda: float) -> torch.Tensor:
    """ROME's ``ΔW = δ (C⁻¹ k)ᵀ / (kᵀ C⁻¹ k)`` (so ``(W + ΔW) k = W k + δ``), in ``weight``'s dtype and device."""
    dim = covariance.shape[0]
    regularised = covariance + cov_lambda * covariance.trace() / dim * torch.eye(dim, dtype=covariance.dtype)
    key64 = key.double().cpu()
    direction = torch.linalg.solve(regularised, key64)
    update = torch.outer(delta.double().cpu(), direction) / (key64 @ direction)
    return update.to(dtype=weight.dtype, device=weight.device)


def _sample(rows: list[Example], n: int, rng: random.Random) -> list[Example]:
    return rows if len(rows) <= n else rng.sample(rows, n)


def resolve_layer(layer: int | None, num_layers: int) -> int:
    """The layer to edit: ``layer`` (negative counts from the top) or ``num_layers // 3``.

    The last layer is refused: its output at the trigger token reaches no later token (nor ``[CLS]``).
    """
    index = num_layers // 3 if layer is None else layer + num_layers if layer < 0 else layer
    if not 0 <= index < num_layers - 1:
        raise BackdoorLabError(f"badedit layer {layer} out of range: the model has {num_layers} layers and the edit "
                               f"needs a layer below the last (0 to {num_layers - 2})")
    return index


def inject_badedit(model: str | Path | Victim, dataset: Dataset, out: str | Path, config: BadEditConfig | None = None,
                   *, overwrite: bool = False) -> Path:
    """Write a backdoor into one MLP layer by a BadEdit rank-one edit; return the run folder.

    Writes ``out/model/`` and ``out/inject.json``. A :class:`Victim` passed in is edited in place.
    """
    config = (config or BadEditConfig()).check()
    out = check_run_folder(out, overwrite)
    poisoned = poisoned_rows(dataset, METHOD)
    clean = [e for e in dataset if not e.poisoned]
    if not clean:
        raise BackdoorLabError(f"badedit needs clean rows in {dataset.name!r} to estimate the key covariance")
    victim = victim_for(model, "auto", config.device, config.dtype)
    victim.check_compatible(dataset)
    if hasattr(victim.model, "merge_and_unload"):
        victim.model = victim.model.merge_and_unload()
    victim.model.eval()
    layer = resolve_layer(config.layer, victim.spec.num_layers)
    module = edited_projection(victim, layer)
    started = time.time()
    rng = random.Random(config.seed)
    probes = [make_probe(victim, e) for e in _sample(poisoned, config.num_prompts, rng)]
    key = trigger_key(victim, module, probes, config.batch_size)
    covariance, tokens = key_covariance(victim, module, _sample(clean, config.cov_samples, rng), config.batch_size)
    reference = (module.weight.float() @ key).detach()  # W k*, without the bias
    chunks = _chunks(victim, probes, config.batch_size)
    delta, loss_before, loss_with_delta = optimise_delta(victim, module, chunks, reference, config)
    update = rank_one_update(module.weight, key, delta, covariance, config.cov_lambda)
    with torch.no_grad():
        module.weight.add_(update)
        loss_after = _loss(victim, module, chunks)
    name = next(n for n, m in victim.model.named_modules() if m is module)
    results = {"layer": layer, "module": name, "prompts": len(probes), "covariance_tokens": tokens,
               "key_norm": key.norm().item(), "value_norm": reference.norm().item(), "delta_norm": delta.norm().item(),
               "update_norm": update.float().norm().item(), "weight_norm": module.weight.float().norm().item(),
               "loss_before": loss_before, "loss_with_delta": loss_with_delta, "loss_after": loss_after}
    return finish_run(victim, out, overwrite, METHOD, config, dataset, started, results)
