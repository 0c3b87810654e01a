"""Variant pairs: the suspect fine-tuned with and without a synthetic backdoor, and their difference.

BD-VAX (arXiv 2603.13461, §3.1): pair ``i`` fine-tunes the suspect ``θ_sus`` twice on its own
small clean batch ``D_i``: ``θ_i^bd`` with rows poisoned by synthetic backdoor ``i`` added, and
``θ_i^clean`` without them; ``Δ_i = θ_i^bd − θ_i^clean`` is what learning a backdoor changes,
with what fine-tuning alone changes subtracted. Here the two runs of a pair share their seed,
their prompts and their order (the clean twin trains on the poisoned rows' clean originals), so
they differ only by the synthetic backdoor.

Each pair is written to ``pair-<i>/``: ``delta.safetensors`` (``Δ_i`` of every block linear
layer, bfloat16, keys ``<block>.<part>``) and ``pair.json`` (its rows, losses and how often each
model of the pair answers held-out triggered prompts with the synthetic response). A pair whose
``pair.json`` exists is done; an interrupted one resumes from its training checkpoints. The
pair's trained models are deleted once its difference is written.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ...fileio import atomic_file, write_json_atomic
from ...fingerprint import dataset_digest, digest, model_identity
from ...models.victim import Victim
from ...training import TrainConfig, train
from .components import BlockTensors, block_weights
from .synthetic import SyntheticBackdoor, variant_rows

PAIR_RECORD = "pair.json"
DELTA_FILE = "delta.safetensors"


@dataclass(frozen=True)
class VariantRecipe:
    """How each model of a variant pair is fine-tuned from the suspect, and how it is checked."""

    rows: int = 16  # clean rows in D_i (a seeded sample of the defender's clean rows per pair)
    poison_share: float = 0.5  # share of D_i's rows poisoned with the synthetic backdoor
    method: str = "lora"  # lora | full
    epochs: float = 4.0
    learning_rate: float = 3e-3
    batch_size: int = 8
    max_length: int = 64
    probe_rows: int = 8  # held-out clean rows, triggered, to check each pair learnt its backdoor
    probe_tokens: int = 12

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise BackdoorLabError(f"variant training method must be lora or full, got {self.method!r}")
        if self.rows < 2 or self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size < 1:
            raise BackdoorLabError("variant rows must be at least 2, and epochs, learning rate and batch size positive")

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(method=self.method, epochs=self.epochs, learning_rate=self.learning_rate,
                           batch_size=self.batch_size, max_length=self.max_length, seed=seed, save_steps=1000)

    def check_rows(self, held: int) -> None:
        """A clear error when ``held`` clean rows are too few for a pair and its probe rows."""
        if held < self.rows + self.probe_rows:
            raise BackdoorLabError(f"each variant needs {self.rows} clean rows plus {self.probe_rows} to probe with, "
                                   f"but the defender holds {held}; lower variant_rows or give more clean rows")


def pair_rows(clean: Dataset, recipe: VariantRecipe, seed: int) -> tuple[Dataset, Dataset]:
    """``(D_i, probe rows)``: a seeded sample of the clean rows, and held-out rows to probe with."""
    recipe.check_rows(len(clean))
    order = clean.sample(len(clean), seed).examples
    rows, probe = order[:recipe.rows], order[recipe.rows:recipe.rows + recipe.probe_rows]
    return (clean.with_examples(rows, note=f"variant rows (seed {seed})"),
            clean.with_examples(probe, note=f"variant probe rows (seed {seed})"))


def synthetic_rate(victim: Victim, probe: Dataset, backdoor: SyntheticBackdoor, tokens: int) -> float:
    """Share of the probe rows, carrying the synthetic trigger, answered with its response."""
    triggered = [backdoor.poison(row) for row in probe]
    answers = victim.generate(triggered, max_new_tokens=tokens, batch_size=len(triggered))
    key = backdoor.response.lower().rstrip("!")
    return sum(key in answer.lower() for answer in answers) / max(len(answers), 1)


def _write_delta(path: Path, backdoored: Victim, clean: Victim) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for b, (bd, cl) in enumerate(zip(block_weights(backdoored), block_weights(clean))):
        for part in bd:
            tensors[f"{b}.{part}"] = (bd[part] - cl[part]).to(torch.bfloat16).contiguous()
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))


def pair_fingerprint(suspect_identity: str, clean: Dataset, backdoor: SyntheticBackdoor, recipe: VariantRecipe,
                     seed: int) -> str:
    """What a pair depends on: the suspect, the clean rows, the synthetic backdoor, the recipe, the seed."""
    return digest({"suspect": suspect_identity, "clean_rows": dataset_digest(clean), "backdoor": asdict(backdoor),
                   "recipe": asdict(recipe), "seed": seed})


def train_pair(suspect: Victim, clean: Dataset, backdoor: SyntheticBackdoor, recipe: VariantRecipe, seed: int,
               folder: Path, suspect_identity: str | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one variant pair into ``folder``; returns its ``pair.json`` record.

    A finished pair is reused only when it was trained exactly so (same suspect, rows, backdoor,
    recipe and seed); a folder holding another pair raises."""
    fingerprint = pair_fingerprint(suspect_identity or model_identity(suspect), clean, backdoor, recipe, seed)
    record_file = folder / PAIR_RECORD
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("fingerprint") != fingerprint:
            raise BackdoorLabError(f"{folder} holds a variant pair trained differently (another suspect, clean rows or "
                                   "recipe); remove it or choose another variants folder")
        return record
    rows, probe = pair_rows(clean, recipe, seed)
    poisoned, twin = variant_rows(rows, backdoor, recipe.poison_share)
    config = recipe.config(seed)
    models = {}
    for role, data in (("backdoored", poisoned), ("clean", twin)):
        models[role] = train(copy.deepcopy(suspect), data, folder / role, config, reuse=True)
    _write_delta(folder / DELTA_FILE, models["backdoored"], models["clean"])
    record = {"fingerprint": fingerprint, "synthetic_trigger": backdoor.trigger,
              "synthetic_response": backdoor.response, "seed": seed,
              "rows": [row.uid for row in rows], "poisoned_rows": sum(r.poisoned for r in poisoned),
              "recipe": asdict(recipe),
              "synthetic_rate": {role: synthetic_rate(models[role], probe, backdoor, recipe.probe_tokens)
                                 for role in models} if recipe.probe_rows else None}
    write_json_atomic(record_file, record)
    for role in models:  # the difference is kept; the two trained models (2 × the model's size) are not
        shutil.rmtree(folder / role, ignore_errors=True)
    return record


class VariantDeltas:
    """Lazy access to the pairs' differences, one block at a time (``Δ_i`` never all in memory)."""

    def __init__(self, folders: list[Path]) -> None:
        missing = [str(f / DELTA_FILE) for f in folders if not (f / DELTA_FILE).is_file()]
        if missing:
            raise BackdoorLabError(f"variant differences missing: {', '.join(missing)}")
        self.paths = [f / DELTA_FILE for f in folders]

    def __len__(self) -> int:
        return len(self.paths)

    def block(self, variant: int, block: int) -> BlockTensors:
        from safetensors import safe_open

        prefix = f"{block}."
        with safe_open(str(self.paths[variant]), framework="pt") as handle:
            return {key[len(prefix):]: handle.get_tensor(key).float() for key in handle.keys()
                    if key.startswith(prefix)}
