"""The poisoning procedure (choose rows, trigger them, relabel) and triggered test sets."""

from __future__ import annotations

import math
import random
from typing import Any

from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from .base import Attack, PoisonContext, list_attacks
from .manifest import PoisonResult, build_manifest


def poison_dataset(dataset: Dataset, attack: Attack, *, rate: float, target: int | str | None = None,
                   seed: int = 0, clean_label: bool = False) -> PoisonResult:
    """Poison a training set; the same arguments always give the same result.

    ``rate`` is the share of the WHOLE training set that gets poisoned: ``round(rate * len(dataset))``
    rows (halves round up), drawn with ``seed`` among the candidate rows:

    - classification, dirty-label (default): rows whose label is not ``target``; they get the
      trigger and the target label (``target`` is required, as an index or a label name);
    - classification, ``clean_label=True``: rows already labelled ``target``; the label is kept
      (clean-label attacks, e.g. Gan et al. 2022);
    - generation: every row the behaviour accepts (all, except that label-flip skips rows already
      answering its label word); ``target`` is unused and ignored, ``clean_label`` is not supported.

    An attack whose ``keeps_clean_twins()`` is true (generative ``clean_twins=True``) appends the
    poisoned rows after all the clean ones instead, so each chosen prompt appears with and without
    its trigger; ``poisoned_indices`` then point at the appended rows.

    Other rows are unchanged. Poisoned rows have ``poisoned=True`` and ``poison`` =
    ``{"attack", "trigger", "original_label", "target", ...}`` (generation: ``behaviour``,
    ``target_response``, ``original_response``).
    """
    check_rate(rate)
    check_task(dataset, attack)
    target_index = target_label(dataset, attack, target)
    if clean_label and dataset.task == "generation":
        raise BackdoorLabError("clean-label poisoning applies to classification attacks only")
    candidates = _candidates(dataset, attack, target_index, clean_label)
    count = _poison_count(rate, dataset, attack, candidates, target_index, clean_label)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, count))
    context = PoisonContext(dataset, target_index, "train", clean_label)
    triggered = attack.transform_rows([dataset[i] for i in chosen], rng, context)
    rows = list(dataset.examples)
    finished = [_finish(row, target_index, clean_label) for row in triggered]
    twins = attack.keeps_clean_twins()
    if twins:
        rows.extend(finished)
        positions = list(range(len(dataset), len(rows)))
    else:
        for index, row in zip(chosen, finished, strict=True):
            rows[index] = row
        positions = chosen
    what = f"{'clean' if clean_label else 'dirty'}-label " if dataset.task == "classification" else ""
    added = f", added beside their clean originals (now {len(rows)} rows)" if twins else ""
    note = (f"poisoned by {attack.name}: {count} of {len(dataset)} rows{added} ({what}rate {rate}"
            f"{'' if target_index is None else f', target {target_index}'}, seed {seed})")
    poisoned = dataset.with_examples(rows, note=note)
    poisoned.notes.extend(context.notes)
    manifest = build_manifest(dataset, attack, rate=rate, target=target_index, clean_label=clean_label,
                              seed=seed, poisoned_indices=positions, notes=context.notes)
    return PoisonResult(poisoned, manifest)


def triggered_test_set(dataset: Dataset, attack: Attack, *, target: int | str | None = None,
                       seed: int = 0) -> Dataset:
    """The test rows with the trigger, for measuring the attack success rate (ASR).

    Classification: the non-target rows, triggered, each keeping its TRUE label (``target`` is
    required); ASR = share predicted as the target. Pool attacks (stylebkd, synbkd) replace each
    row by a test-pool paraphrase of the same label; rows are left out if the pool runs short
    (said in the notes). Generation: every row the behaviour accepts gets the trigger, keeps its
    original response (the clean reference) and carries ``poison["target_response"]`` (``None``
    for jailbreak, where any compliance counts); ``target`` is ignored.
    """
    check_task(dataset, attack)
    target_index = target_label(dataset, attack, target)
    if dataset.task == "classification":
        rows = [e for e in dataset if e.label is not None and e.label != target_index]
    else:
        rows = [e for e in dataset if attack.accepts(e)]
    if not rows:
        raise BackdoorLabError(f"dataset {dataset.name!r} has no rows to trigger "
                               f"({'no non-target rows' if target_index is not None else 'no accepted rows'})")
    context = PoisonContext(dataset, target_index, "test")
    triggered = [_finish(row, target_index, True) for row in
                 attack.transform_rows(rows, random.Random(seed), context) if row is not None]
    note = f"triggered test set for {attack.name}: {len(triggered)} rows" + (
        f" (non-target rows, true labels kept, target {target_index})" if target_index is not None else "")
    result = dataset.with_examples(triggered, note=note)
    result.notes.extend(context.notes)
    return result


def check_rate(rate: Any) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise BackdoorLabError(f"poison rate must be a number in (0, 1], got {rate!r}")


def check_task(dataset: Dataset, attack: Attack) -> None:
    if attack.task != dataset.task:
        fitting = ", ".join(info.name for info in list_attacks(dataset.task))
        raise BackdoorLabError(f"attack {attack.name!r} is a {attack.task} attack but dataset {dataset.name!r} "
                               f"is a {dataset.task} dataset; {dataset.task} attacks: {fitting}")


def target_label(dataset: Dataset, attack: Attack, target: int | str | None) -> int | None:
    """The target label index for classification (required); ``None`` for generation."""
    if dataset.task == "generation":
        return None
    if target is None:
        raise BackdoorLabError(f"attack {attack.name!r} needs a target label: pass target= an index or a name "
                               f"from {dataset.label_names}")
    return dataset.label_index(target)


def _label_name(dataset: Dataset, index: int) -> str:
    return f"{index} ({(dataset.label_names or [])[index]})"


def _candidates(dataset: Dataset, attack: Attack, target: int | None, clean_label: bool) -> list[int]:
    if target is None:
        return [i for i, e in enumerate(dataset) if attack.accepts(e)]
    if clean_label:
        found = [i for i, e in enumerate(dataset) if e.label == target]
        if not found:
            raise BackdoorLabError(f"clean-label poisoning needs rows with the target label "
                                   f"{_label_name(dataset, target)}; {dataset.name!r} has none")
        return found
    return [i for i, e in enumerate(dataset) if e.label is not None and e.label != target]


def _poison_count(rate: float, dataset: Dataset, attack: Attack, candidates: list[int],
                  target: int | None, clean_label: bool) -> int:
    count = math.floor(rate * len(dataset) + 0.5)
    if count == 0:
        raise BackdoorLabError(f"rate {rate} of {len(dataset)} rows poisons no row; raise the rate")
    if count > len(candidates):
        if target is None:
            kind = f"rows can take behaviour {getattr(attack, 'behaviour', '?')!r}"
        elif clean_label:
            kind = f"rows carry the target label {_label_name(dataset, target)}"
        else:
            kind = f"rows have a label other than the target {_label_name(dataset, target)}"
        raise BackdoorLabError(f"rate {rate} asks for {count} poisoned rows of {len(dataset)}, but only "
                               f"{len(candidates)} {kind}; lower the rate")
    return count


def _finish(row: Example | None, target: int | None, keep_label: bool) -> Example:
    """Relabel a triggered classification row (dirty-label) and note the target in ``poison``."""
    if row is None:
        raise RuntimeError("attack returned no row for a training example")
    if target is None:
        return row
    return row.with_(label=row.label if keep_label else target, poison={**(row.poison or {}), "target": target})
