"""Choose the classification victims' training recipe on validation rows: how many training rows,
which learning rate and which class weighting give a real model (macro-F1 on held-out rows).

Each cell trains one classifier (``minilm-l6`` by default, batch 16) on ``rows`` clean rows of a
data set's training split and scores it on ``--validation`` other rows of that split; the test
split is never read. The validation rows are the same for every cell of a data set (the split is
shuffled once, with seed 0); each seed draws its training rows from the rest. The records are the
ledger ``results/victim_recipe/``; the page marks them as validation runs. The Table 1 benchmark
reads its victims' recipe of each data set from this ledger (:mod:`backdoorlab.bench.recipes`).

A recipe is ``DATASET:ROWS:LR:WEIGHTING`` (``hsol:1000:2e-4:none``); ``--recipes`` lists them.

    python benchmarks/bench_victim_recipe.py --seeds 0,1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from backdoorlab.bench.cell import Cell
from backdoorlab.bench.grid import run_grid
from backdoorlab.bench.recipes import MACRO_F1_BAR, validation_split
from backdoorlab.bench.options import KIND_RESOURCES, add_grid_arguments, device_kind, grid_kwargs, ledger_folder, model_argument
from backdoorlab.bench.report import TableSpec, status_text, write_report
from backdoorlab.bench.store import OK
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import clean_accuracy, macro_f1
from backdoorlab.models.loading import load_victim
from backdoorlab.pipeline import ensure_trained
from backdoorlab.training import CLASS_WEIGHTINGS, TrainConfig

NAME = "victim_recipe"
#: HSOL at the Table 1 recipe (1000 rows, lr 2e-4) with and without class weighting, at lower rates, and with more rows.
DEFAULT_RECIPES = ("hsol:1000:2e-4:none", "hsol:1000:2e-4:balanced", "hsol:1000:5e-5:none", "hsol:1000:1e-4:none",
                   "hsol:3000:1e-4:none", "hsol:3000:2e-4:none", "hsol:6000:1e-4:none", "hsol:6000:1e-4:balanced")


def parse_recipe(text: str) -> dict[str, Any]:
    """``DATASET:ROWS:LR:WEIGHTING`` as cell params."""
    try:
        dataset, rows, lr, weighting = text.split(":")
        recipe = {"dataset": dataset, "rows": int(rows), "lr": float(lr), "class_weighting": weighting}
    except ValueError:
        raise BackdoorLabError(f"recipe {text!r} is not DATASET:ROWS:LR:WEIGHTING (e.g. hsol:1000:2e-4:none)") from None
    if weighting not in CLASS_WEIGHTINGS or recipe["rows"] < 1 or recipe["lr"] <= 0:
        raise BackdoorLabError(f"recipe {text!r}: weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, rows and lr "
                               "positive")
    return recipe


def recipe_name(p: dict[str, Any]) -> str:
    return f"{p['dataset']}-{p['rows']}rows-lr{p['lr']:g}-{p['class_weighting']}"


def recipe_cell(cell: Cell, folder: Path) -> dict[str, Any]:
    """Train on the recipe's rows; macro-F1, accuracy and predicted label shares on the validation rows."""
    p = cell.params
    train_rows, validation = validation_split(p["dataset"], p["validation"], p["rows"], cell.seed)
    config = TrainConfig(epochs=p["epochs"], learning_rate=p["lr"], batch_size=16, seed=cell.seed, device=p["device"],
                         save_steps=10**9, class_weighting=p["class_weighting"])
    model = ensure_trained(folder / "train", p["model"], train_rows, config)
    predictions = load_victim(model, device=p["device"]).predict(validation, 64)
    labels = [e.label for e in validation]
    return {"macro_f1": macro_f1(predictions, labels), "accuracy": clean_accuracy(predictions, labels),
            "predicted_shares": [predictions.count(k) / len(predictions) for k in range(train_rows.num_labels)],
            "label_shares": [labels.count(k) / len(labels) for k in range(train_rows.num_labels)]}


def cells(args: argparse.Namespace) -> list[Cell]:
    found = []
    for text in args.recipes:
        recipe = parse_recipe(text)
        params = {**recipe, "validation": args.validation, "model": args.model, "epochs": args.epochs,
                  "device": args.device}
        found += [Cell(recipe_name(recipe), "recipe", seed, params, kind=device_kind(args.device), methods=())
                  for seed in args.seeds]  # no defense runs: no method's code counts
    return found


def _mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_recipe.setdefault(record["victim"], []).append(record)
    rows = []
    for name, group in by_recipe.items():
        done = [r["result"] for r in group if r["status"] == OK]
        waiting = [status_text(r) for r in group if r["status"] != OK]
        f1s = [r["macro_f1"] for r in done]
        shares = " / ".join(f"{statistics.fmean(s):.3f}" for s in zip(*(r["predicted_shares"] for r in done)))
        rows.append([name, len(done), _mean_sd(f1s), _mean_sd([r["accuracy"] for r in done]), shares,
                     ("yes" if statistics.fmean(f1s) >= MACRO_F1_BAR else "no") if f1s else "",
                     ", ".join(waiting)])
    table = TableSpec("Victim recipes on validation rows (mean ± sd over seeds)",
                      ["recipe", "seeds", "macro-F1", "accuracy", "predicted label shares", f"macro-F1 ≥ {MACRO_F1_BAR}",
                       "missing"], rows,
                      note=f"{args.validation} validation rows carved from each training split (shuffle seed 0); "
                           f"{args.model}, {args.epochs:g} epochs, batch 16; the test split is never read.")
    markdown, _ = write_report(args.out, "Victim recipes (validation)", [table])
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), metavar="DATASET:ROWS:LR:WEIGHTING")
    parser.add_argument("--validation", type=int, default=600, help="validation rows carved from each training split")
    parser.add_argument("--model", type=model_argument, default="minilm-l6")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--device", default="auto")
    add_grid_arguments(parser, "runs/victim-recipe", ledger_folder(__file__, NAME))
    args = parser.parse_args(argv)
    try:
        result = run_grid(cells(args), recipe_cell, **grid_kwargs(args), resources=KIND_RESOURCES)
        markdown = report(result.records, args)
    except BackdoorLabError as error:
        print(f"bench_victim_recipe: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
