"""The classification victims' training recipe (training rows, learning rate, class weighting) of
each data set, chosen on validation rows carved from its training split, never on test rows.

``benchmarks/bench_victim_recipe.py`` scores recipes into its ledger (``results/victim_recipe/``);
:func:`chosen_recipe` reads that ledger and picks, for one data set, model and epoch count, the
cheapest recipe (fewest rows) whose mean validation macro-F1 passes :data:`MACRO_F1_BAR` over at
least :data:`MIN_SEEDS` seeds, the best one when none passes, or nothing when none was scored (the
benchmark's own defaults then apply). Because the choice is read from records, a new validation
run changes the params (and so the cells) of that data set's victims only.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data import Dataset, load_dataset
from ..errors import BackdoorLabError

#: The macro-F1 a victim's clean model must reach on validation rows to count as a real classifier.
MACRO_F1_BAR = 0.75
#: Seeds a recipe needs in the ledger before it can be chosen.
MIN_SEEDS = 2
#: The shuffle that carves the validation rows (the same rows for every recipe and seed).
VALIDATION_SHUFFLE_SEED = 0


@dataclass(frozen=True)
class VictimRecipe:
    rows: int
    lr: float
    class_weighting: str
    macro_f1: float  # mean over the seeds scored
    seeds: int
    passes: bool  # macro_f1 >= MACRO_F1_BAR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_split(dataset: str, validation: int, rows: int, seed: int,
                     data_dir: str | Path | None = None) -> tuple[Dataset, list[Any]]:
    """``(training rows, validation rows)`` of ``dataset``'s training split: ``validation`` rows fixed
    across seeds, and ``rows`` others drawn with ``seed``."""
    data = load_dataset(dataset, "train", data_dir=data_dir)
    if validation + rows > len(data):
        raise BackdoorLabError(f"{dataset}'s training split has {len(data)} rows; {validation} validation + {rows} "
                               "training rows do not fit")
    order = list(range(len(data)))
    random.Random(VALIDATION_SHUFFLE_SEED).shuffle(order)
    held_out = [data[i] for i in order[:validation]]
    rest = data.with_examples([data[i] for i in order[validation:]],
                              note=f"training split less {validation} validation rows")
    return rest.sample(rows, seed), held_out


def chosen_recipe(ledger: str | Path, dataset: str, model: str, epochs: float) -> VictimRecipe | None:
    """The recipe for ``dataset``'s victims of ``model`` trained ``epochs`` epochs (module docstring)."""
    scores: dict[tuple[int, float, str], list[float]] = {}
    for path in sorted(Path(ledger).glob("*.json")) if Path(ledger).is_dir() else []:
        record = json.loads(path.read_text(encoding="utf-8"))
        p = record.get("params") or {}
        if record.get("status") != "ok" or p.get("dataset") != dataset or p.get("model") != model \
                or p.get("epochs") != epochs:
            continue
        key = (int(p["rows"]), float(p["lr"]), str(p["class_weighting"]))
        scores.setdefault(key, []).append(float(record["result"]["macro_f1"]))
    recipes = [VictimRecipe(rows, lr, weighting, statistics.fmean(f1s), len(f1s), statistics.fmean(f1s) >= MACRO_F1_BAR)
               for (rows, lr, weighting), f1s in scores.items() if len(f1s) >= MIN_SEEDS]
    if not recipes:
        return None
    passing = [r for r in recipes if r.passes]
    if passing:
        return min(passing, key=lambda r: (r.rows, -r.macro_f1))
    return max(recipes, key=lambda r: r.macro_f1)


def recipe_for(ledger: str | Path, dataset: str, model: str, epochs: float, *, rows: int, lr: float,
               class_weighting: str) -> dict[str, Any]:
    """``{"train", "lr", "class_weighting"}`` of ``dataset``'s victims: the recipe :func:`chosen_recipe` reads in
    ``ledger``, else the given defaults (a benchmark's ``--train`` / ``--lr`` / ``--class-weighting``)."""
    recipe = chosen_recipe(ledger, dataset, model, epochs)
    if recipe is None:
        return {"train": rows, "lr": lr, "class_weighting": class_weighting}
    return {"train": recipe.rows, "lr": recipe.lr, "class_weighting": recipe.class_weighting}
