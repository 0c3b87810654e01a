"""BadLLM-TG on victims nobody picked: seeded random draws of data set, target, rate and trigger.

Each draw (:mod:`backdoorlab.bench.victim_draws`) fixes a data set (SST-2, HSOL, AG News), a
target label (any), a poison rate (5–30%), a trigger (a rare or common word, 2–3 words, or a
generated sentence) and its position (start, end, random). Two grids of cells run through
:mod:`backdoorlab.bench` (Ray by default, ``--serial`` in this process):

1. **clean cells**, one per data set: the *floor model*, trained on clean training rows with the data
   set's recipe (training rows, learning rate, class weighting), the one Table 1's victims use: chosen
   on validation rows in ``--recipes`` (:mod:`backdoorlab.bench.recipes`), else ``--train`` /
   ``--lr`` / ``--class-weighting``;
2. **draw cells**, one per draw: the attack run and the victim (with that recipe), the victim's
   CACC / macro-F1 / ASR with the floor model's rate of the target on the same triggered rows
   beside it (no defense can go below it), the paper's Δc identification (§2.3) for comparison,
   and BadLLM-TG with its defaults (target unknown to it), then CACC and ASR after, with the
   defended model's *own floor* beside them: its rate of the target on the same rows without their
   trigger (a retrained model has its own label bias, which the clean model's floor does not see).

A draw whose victim is not a real backdoored classifier (macro-F1 below ``--min-macro-f1``, or
ASR less than ``--min-backdoor`` above its floor) is reported but left out of the summary.
The records are the ledger, ``results/badllm_tg_draws/`` (and ``clean/`` in it) in the repository
(``--results``), so a run resumes on any machine: a clean cell finished elsewhere is computed again
only when a draw still to run needs its floor model. ``report.md`` / ``report.html`` hold the
per-draw table and the summary against the goals.

    python benchmarks/bench_badllm_tg_draws.py --out runs/tg-draws --draws 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from backdoorlab.bench import (
    Cell,
    CellStore,
    TableSpec,
    add_grid_arguments,
    cell_table,
    grid_kwargs,
    ledger_folder,
    run_grid,
    unfinished,
    write_report,
)
from backdoorlab.bench.options import KIND_RESOURCES, add_victims_argument, device_kind, model_argument, victims_folder
from backdoorlab.bench.recipes import recipe_for
from backdoorlab.bench.victim_draws import LABEL_COUNTS, VictimDraw, draw_victim
from backdoorlab.data import Dataset, load_dataset
from backdoorlab.defenses import get_defense, run_defense
from backdoorlab.defenses.shared.evidence import words
from backdoorlab.errors import BackdoorLabError, MethodFoundNothing
from backdoorlab.options import parse_option_pairs
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, ensure_trained_shared, run_attack
from backdoorlab.training import MODEL_DIR, TrainConfig

CLEAN, DEFENSE = "clean", "badllm-tg"
#: Budget settings for 2 CPU cores, as in bench_badllm_tg.py.
CPU_BUDGET = {"iterations": 6}
#: ``--class-weighting``: the clean models' and victims' ``TrainConfig.class_weighting`` for a data set with no recipe.
CLASS_WEIGHTING_HELP = ("the clean models' and victims' class weighting for a data set with no recipe chosen in "
                        "--recipes: 'balanced' weights each label's loss by n_rows / (n_labels * its rows) of the "
                        "training rows; default 'none'")


def train_config(lr: float, epochs: float, seed: int, device: str, weighting: str) -> TrainConfig:
    return TrainConfig(epochs=epochs, learning_rate=lr, batch_size=16, seed=seed, device=device, save_steps=10**9,
                       class_weighting=weighting)


def clean_cell(args: argparse.Namespace, dataset: str) -> Cell:
    """The floor model of ``dataset``: its recipe (:func:`recipe_for`) on clean training rows."""
    recipe = recipe_for(args.recipes, dataset, args.model, args.epochs, rows=args.train, lr=args.lr,
                        class_weighting=args.class_weighting)
    params = {"dataset": dataset, **recipe, "model": args.model, "epochs": args.epochs, "device": args.device}
    return Cell(f"{dataset}-clean", CLEAN, 0, params, kind=device_kind(args.device), methods=())


def train_floor(cell: Cell, folder: Path) -> dict[str, Any]:
    """A clean cell: the floor model, trained on the data set's clean training rows with its recipe."""
    p = cell.params
    rows = load_dataset(p["dataset"], "train").sample(p["train"], 0)
    ensure_trained(folder / "floor", p["model"], rows,
                   train_config(p["lr"], p["epochs"], 0, p["device"], p["class_weighting"]))
    return {"dataset": p["dataset"], "train": p["train"], "lr": p["lr"], "class_weighting": p["class_weighting"]}


def floor_model(args: argparse.Namespace, clean: Cell) -> Path:
    """Where this machine keeps a clean cell's floor model."""
    return CellStore(args.out / CLEAN, train_floor).workdir(clean) / "floor" / MODEL_DIR


def draw_cell(args: argparse.Namespace, draw: VictimDraw, clean: Cell, floor: Path | None) -> Cell:
    """One draw's cell, trained with its data set's recipe (the clean cell's); the floor model is a file of this
    machine, so a run option, while the recipe is part of this cell's params."""
    recipe = {key: clean.params[key] for key in ("train", "lr", "class_weighting")}
    params = {"draw": draw.to_dict(), **recipe, "test": args.test, "model": args.model, "epochs": args.epochs,
              "options": {**CPU_BUDGET, "device": args.device, **args.defense_options}, "device": args.device}
    # skipping the comparison changes no figure of the defense, so it is a run option, not part of the cell's identity
    return Cell(draw.name, DEFENSE, draw.seed, params, kind=device_kind(args.device),
                run_options={"delta": not args.skip_delta, "floor_model": None if floor is None else str(floor),
                             "victims": str(victims_folder(args))},
                code=("backdoorlab.defenses.badllm_tg",), methods=())


def run_draw(cell: Cell, folder: Path) -> dict[str, Any]:
    """One draw: attack, victim, its metrics beside the floor, Δc identification, BadLLM-TG, metrics after."""
    from backdoorlab.models.loading import load_victim

    p, draw = cell.params, VictimDraw(**cell.params["draw"])
    started = time.time()
    attack_run = folder / "attack"
    if not (attack_run / "manifest.json").is_file():
        run_attack(draw.dataset, "addsent", attack_run, rate=draw.rate, target=draw.target, seed=draw.seed,
                   max_train=p["train"], max_test=p["test"], options=draw.attack_options())
    train_set = Dataset.load(attack_run / "train")
    victim = ensure_trained_shared(cell.run_options["victims"], p["model"], train_set,
                                   train_config(p["lr"], p["epochs"], draw.seed, p["device"], p["class_weighting"]))
    before = ensure_evaluated(victim, attack_run, folder / "baseline.json", floor_model=cell.run_options["floor_model"],
                              device=p["device"], max_rows=p["test"])
    delta_id = folder / "delta-identification"
    identified_by_delta: int | str | None = "not run"
    if cell.run_options.get("delta", True) or (delta_id / "target.json").is_file():  # a finished Δc run is reported either way
        paper = get_defense(DEFENSE, **{**p["options"], "identify": "delta", "seed": draw.seed})
        try:
            identified_by_delta = paper.find_target(load_victim(victim, device=p["device"]), train_set,
                                                    delta_id, pretrained=p["model"])[0]["target"]
        except MethodFoundNothing:  # no label holds a majority of the top-Δc rows: the paper's statistic gives no answer
            identified_by_delta = None
    defense_dir = folder / "defense"
    try:
        run_defense(DEFENSE, victim, attack_run, defense_dir, options=p["options"], baseline=folder / "baseline.json",
                    pretrained_model=p["model"], max_eval_rows=p["test"], device=p["device"])
    except MethodFoundNothing as error:  # the defense gave up: the suspect stays as it was, and the row says why
        after, findings = before, {"target_identification": {"target": None, "method": "failed"}, "error": str(error)}
    else:
        after = json.loads((defense_dir / "metrics.json").read_text(encoding="utf-8"))["after"]
        findings = json.loads((defense_dir / "defense.json").read_text(encoding="utf-8"))["findings"]
    identification = findings["target_identification"]
    recovered = _recovered_phrases(findings)
    row = {**draw.to_dict(), "lr": p["lr"], "identified": identification["target"],
           "identified_by": identification.get("method"), "identified_by_delta": identified_by_delta,
           "defense error": findings.get("error"),
           "recovered": " | ".join(recovered), "exact": _exact(draw.trigger, recovered),
           "CACC before": before["cacc"], "macro-F1 before": before["macro_f1"], "ASR before": before["asr"],
           "ASR floor": before["asr_floor_clean_model"], "CACC after": after["cacc"], "ASR after": after["asr"],
           "own floor after": after["asr_floor"],
           "n_asr": after["n_asr_rows"], "adversarial training": "adversarial_patterns" in findings,
           "seconds": round(time.time() - started)}
    print(f"[{cell.victim}] target {draw.target} -> {row['identified']} (Δc {identified_by_delta}); "
          f"{draw.trigger!r} -> {row['recovered']!r}; ASR {100 * row['ASR before']:.0f} -> {100 * row['ASR after']:.0f} "
          f"(floor {100 * row['ASR floor']:.0f}); CACC {100 * row['CACC before']:.1f} -> {100 * row['CACC after']:.1f}",
          flush=True)
    return row


def _recovered_phrases(findings: dict[str, Any]) -> list[str]:
    """The phrases of the patterns adversarial training used (none when it was skipped)."""
    if "adversarial_patterns" not in findings:
        return []
    patterns = findings["trigger"].get("working_patterns") or [findings["trigger"]["pattern"]]
    return [phrase for pattern in patterns for phrase in pattern.get("phrases") or []]


def _exact(trigger: str, recovered: list[str]) -> bool:
    """Whether one recovered phrase is the trigger, word for word (case and punctuation aside)."""
    def key(text: str) -> list[str]:
        return [w for w in words(text) if any(c.isalnum() for c in w)]

    return any(key(phrase) == key(trigger) for phrase in recovered)


def is_real_victim(row: dict[str, Any], min_macro_f1: float, min_backdoor: float) -> bool:
    return row["macro-F1 before"] >= min_macro_f1 and row["ASR before"] - row["ASR floor"] >= min_backdoor


#: The goals each summary figure is held to (shares; ASR after − floor and CACC change in points / 100).
GOALS = {"target identified (screening, default)": "≥ 95%", "exact trigger recovery": "≥ 90%",
         "ASR after − floor": "≤ 2 points", "CACC change": "within 1 point"}


DIFFERENCES = ("ASR after − floor", "ASR after − own floor", "CACC change", "worst CACC change")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the draws' rows (shares, as fractions)."""
    if not rows:
        return {"draws": 0}
    mean = statistics.fmean
    return {"draws": len(rows),
            "target identified (screening, default)": mean(r["identified"] == r["target"] for r in rows),
            "target identified (Δc, paper §2.3)": mean([r["identified_by_delta"] == r["target"] for r in rows
                                                        if r["identified_by_delta"] != "not run"] or [float("nan")]),
            "exact trigger recovery": mean(r["exact"] for r in rows),
            "ASR before": mean(r["ASR before"] for r in rows), "ASR after": mean(r["ASR after"] for r in rows),
            "ASR floor": mean(r["ASR floor"] for r in rows),
            "ASR after − floor": mean(r["ASR after"] - r["ASR floor"] for r in rows),
            "own floor after": mean(r["own floor after"] for r in rows),
            "ASR after − own floor": mean(r["ASR after"] - r["own floor after"] for r in rows),
            "CACC change": mean(r["CACC after"] - r["CACC before"] for r in rows),
            "worst CACC change": min(r["CACC after"] - r["CACC before"] for r in rows)}


def _figure(key: str, value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{100 * value:+.1f} points" if key in DIFFERENCES else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, "runs/bench-badllm-tg-draws", ledger_folder(__file__, "badllm_tg_draws"))
    add_victims_argument(parser)
    parser.add_argument("--draws", type=int, default=20, help="draws 0..N-1 (default: %(default)s)")
    parser.add_argument("--first-draw", type=int, default=0)
    parser.add_argument("--datasets", default=",".join(LABEL_COUNTS))
    parser.add_argument("--model", type=model_argument, default="minilm-l6")
    parser.add_argument("--train", type=int, default=1000,
                        help="training rows per victim of a data set with no recipe chosen in --recipes")
    parser.add_argument("--lr", type=float, default=2e-4,
                        help="victims' learning rate for a data set with no recipe chosen in --recipes")
    parser.add_argument("--test", type=int, default=200, help="clean and triggered test rows per draw")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--class-weighting", choices=["none", "balanced"], default="none", help=CLASS_WEIGHTING_HELP)
    parser.add_argument("--recipes", type=Path, default=ledger_folder(__file__, "victim_recipe"),
                        help="ledger of victim recipes scored on validation rows (benchmarks/bench_victim_recipe.py); "
                             "a data set's victims and floor model use the one chosen there (default: %(default)s)")
    parser.add_argument("--min-macro-f1", type=float, default=0.6)
    parser.add_argument("--min-backdoor", type=float, default=0.3, help="least ASR − floor of a reported victim")
    parser.add_argument("--skip-delta", action="store_true",
                        help="do not run the paper's Δc identification beside the defense (saves its scout epoch)")
    parser.add_argument("--defense-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a badllm-tg option for every draw")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.defense_options = parse_option_pairs(args.defense_option)
    get_defense(DEFENSE, **{**CPU_BUDGET, **args.defense_options})  # bad options fail before any work
    datasets = [d for d in args.datasets.split(",") if d]
    if args.draws < 1:
        raise BackdoorLabError("--draws must be at least 1")
    started = time.time()
    draws = [draw_victim(seed, datasets) for seed in range(args.first_draw, args.first_draw + args.draws)]
    needed = list(dict.fromkeys(d.dataset for d in draws))
    clean_cells = {d: clean_cell(args, d) for d in needed}
    clean_kwargs = {**grid_kwargs(args), "out": args.out / CLEAN,
                    "results": None if args.results is None else args.results / CLEAN}
    clean = run_grid(list(clean_cells.values()), train_floor, **clean_kwargs, resources=KIND_RESOURCES)
    failed = [r["victim"] for r in clean.records if r["status"] != "ok"]
    if failed and not args.report_only:
        raise BackdoorLabError(f"no floor model for {', '.join(failed)}: its clean cell failed (see "
                               f"{clean_kwargs['results'] or args.out / CLEAN / 'cells'}); fix it and rerun")
    cells = [draw_cell(args, d, clean_cells[d.dataset], floor_model(args, clean_cells[d.dataset])) for d in draws]
    if not args.report_only:  # clean cells finished on another machine: their floor models, where draws need them
        to_run = {VictimDraw(**c.params["draw"]).dataset for c in unfinished(cells, run_draw, args.out, args.results)}
        absent = {clean_cells[d].id for d in to_run if not floor_model(args, clean_cells[d]).is_dir()}
        if absent:
            clean = run_grid(list(clean_cells.values()), train_floor, **clean_kwargs, resources=KIND_RESOURCES,
                             refresh=lambda cell: cell.id in absent)
    result = run_grid(cells, run_draw, **grid_kwargs(args), resources=KIND_RESOURCES)
    rows = [r["result"] for r in result.records if r["status"] == "ok"]
    real = [r for r in rows if is_real_victim(r, args.min_macro_f1, args.min_backdoor)]
    columns = ["seed", "dataset", "target", "rate", "kind", "trigger", "position", "lr", "identified",
               "identified_by", "identified_by_delta", "recovered", "exact", "macro-F1 before", "CACC before",
               "CACC after", "ASR floor", "own floor after", "ASR before", "ASR after", "seconds"]
    table = TableSpec("Draws", [*columns, "real victim"],
                      [[r.get(c) for c in columns] + [r in real] for r in rows])
    recipes_table = TableSpec("Training recipe of each data set's victims and floor model (from --recipes, else the "
                              "defaults)", ["dataset", "training rows", "lr", "class weighting"],
                              [[d, c.params["train"], c.params["lr"], c.params["class_weighting"]]
                               for d, c in clean_cells.items()])
    notes = [] if args.report_only else [f"command: `{grid_kwargs(args)['command']}`",
                                          f"wall time: {time.time() - started:.0f} s"]
    notes += [f"summary over the {len(real)} real victims of {len(rows)} finished draws: "
             + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary(real).items()},
                          ensure_ascii=False),
             f"a real victim: macro-F1 ≥ {args.min_macro_f1} and ASR − floor ≥ {args.min_backdoor}"]
    summary_table = TableSpec(f"Summary over the {len(real)} real victims of {len(rows)} finished draws",
                              ["figure", "value", "goal"],
                              [[k, _figure(k, v), GOALS.get(k)] for k, v in summary(real).items()])
    tables = [summary_table, recipes_table, table, cell_table(clean.records, title="Clean cells"),
              cell_table(result.records, title="Draw cells")]
    report, _ = write_report(args.out, "BadLLM-TG over random victim draws", tables, notes=notes)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
