"""Backdoor attribution benchmark: the BkdAttr headline numbers on our models, next to the paper's.

For each backdoor (the three BkdAttr tasks and BackdoorLLM's refusal/badnet set) and seed, one
grid cell (:mod:`backdoorlab.bench`)

1. builds the attack run (ready-made data, ``--rate`` of ``--train`` rows poisoned) and LoRA-tunes
   ``smollm2-135m-instruct`` (or ``--generator``) on it;
2. evaluates ASR / clean behaviour of the backdoored model;
3. runs ``backdoorlab analyze all`` (probes, exact and approximate BAHA, ablation, vector sweep);
4. optionally (``--defend``) runs the head-ablation and backdoor-vector defenses.

Cells run as Ray tasks (``--serial``: in this process; ``--ray-address``: on a cluster); each
writes its files under ``<out>/work/<cell id>/`` and its row to ``<out>/cells/<cell id>.json``.
A rerun skips finished cells and every stage reuses finished outputs, so an interrupted run
resumes. The table goes to ``report.md`` / ``report.html`` under ``--out`` (``--report-only``
rewrites them from the finished cells).

    python benchmarks/bench_attribution.py --out runs/attr
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from backdoorlab.analysis.runner import run_analysis
from backdoorlab.bench import (
    OK,
    Cell,
    TableSpec,
    add_grid_arguments,
    cell_table,
    grid_kwargs,
    ledger_folder,
    run_grid,
    write_report,
)
from backdoorlab.bench.options import KIND_RESOURCES, device_kind, model_argument
from backdoorlab.bench.report import status_text
from backdoorlab.data import Dataset
from backdoorlab.defenses import run_defense
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, use_ready_made
from backdoorlab.report import MISSING, table_columns
from backdoorlab.training import TrainConfig

GENERATOR = "smollm2-135m-instruct"
#: name → (dataset, training epochs, max tokens per training row, minimum prompt pairs). The
#: AG News backdoor only flips Sports articles (~30% of prompts), so it reads all 100 pairs.
TASKS = {
    "alpaca_begin": ("bkdattr-alpaca_begin", 3.0, 128, 0),
    "harmful_random": ("bkdattr-harmful_random", 2.0, 96, 0),
    "agnews_sentence": ("bkdattr-agnews_sentence", 2.0, 224, 100),
    "refusal_badnet": ("backdoorllm-refusal-badnet", 2.0, 96, 0),
}
#: The paper's headlines (arXiv 2509.21761, abstract and §5): relative ASR drop from ablating
#: about 3% of heads; ASR after one vector intervention on clean (+v) / triggered (−v) prompts.
PAPER = {"ablation_drop": "> 90%", "vector_on": "~100%", "vector_off": "~0%"}
PAPER_NOTE = (f"Paper (Llama-2-7B / Qwen-2.5-7B): ablating ~3% of heads drops ASR by {PAPER['ablation_drop']}; "
              f"one vector intervention gives ASR {PAPER['vector_on']} on clean and {PAPER['vector_off']} on "
              "triggered prompts.")
DEFENSES = ("head-ablation", "backdoor-vector")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def task_cells(args: argparse.Namespace, names: list[str]) -> list[Cell]:
    """One cell per backdoor and seed; its params are every setting the cell function reads."""
    kind = device_kind(args.device)
    cells = []
    for name in names:
        dataset, epochs, max_length, min_pairs = TASKS[name]
        params = {"dataset": dataset, "epochs": epochs, "max_length": max_length, "min_pairs": min_pairs,
                  "generator": args.generator, "train": args.train, "test": args.test, "rate": args.rate,
                  "lr": args.lr, "pairs": args.pairs, "attribution_prompts": args.attribution_prompts,
                  "layer_stride": args.layer_stride, "ablation_points": args.ablation_points,
                  "new_tokens": args.new_tokens, "batch_size": args.batch_size, "defend": args.defend,
                  "device": args.device}
        cells += [Cell(name, "attribution", seed, params, kind=kind, methods=("attribution",) if args.defend else ())
                  for seed in args.seeds]
    return cells


def attribution_cell(cell: Cell, folder: Path) -> dict[str, Any]:
    """Attack, train, evaluate and analyse one backdoor in ``folder``; its table row."""
    p, seed = cell.params, cell.seed
    attack_run = folder / "attack"
    if not (attack_run / "manifest.json").is_file():
        use_ready_made(p["dataset"], attack_run, max_train=p["train"], max_test=p["test"], rate=p["rate"], seed=seed)
    config = TrainConfig(epochs=p["epochs"], batch_size=8, max_length=p["max_length"], learning_rate=p["lr"],
                         seed=seed, save_steps=40, device=p["device"])
    model = ensure_trained(folder / "train", p["generator"], Dataset.load(attack_run / "train"), config)
    metrics = ensure_evaluated(model, attack_run, folder / "results.json", max_rows=p["test"],
                               max_new_tokens=p["new_tokens"], device=p["device"])
    pairs = max(p["pairs"], p["min_pairs"])
    options = {"pairs": pairs, "attribution_prompts": p["attribution_prompts"], "method": "both",
               "layer_stride": p["layer_stride"], "ablation_points": p["ablation_points"],
               "batch_size": p["batch_size"], "seed": seed}
    analysis = run_analysis(["all"], model, attack_run, folder / "analysis", options=options, device=p["device"])
    row: dict[str, Any] = {
        "backdoor": cell.victim, "ASR": metrics["asr"], "clean rate": metrics.get("clean_behaviour_rate"),
        "probe (best layer)": f"{_pct(analysis['probe']['best_mlp_accuracy'])} (L{analysis['probe']['best_layer']})",
        "exact~approx ρ": analysis["heads"]["agreement"]["spearman"],
        "exact s / approx s": f"{analysis['heads']['exact_seconds']:.0f} / {analysis['heads']['approx_seconds']:.1f}",
    }
    ablate = analysis["ablate"]
    head = ablate["headline"]
    row.update({
        "ASR before→after ablating ~3% heads": f"{_pct(head['asr_before'])} → {_pct(head['asr_after_near_3pct'])} "
                                               f"(k={head['k_near_3pct']})",
        "ASR, 10% heads (random heads)": f"{_pct(ablate['curve'][-1]['asr'])} "
                                         f"({_pct(ablate.get('random_control', {}).get('asr'))})",
        "ASR, heads removed at every position": " / ".join(f"k={q['k']}: {_pct(q['asr'])}"
                                                          for q in ablate.get("everywhere", [])) or "–",
    })
    vector = analysis["vector"]["headline"]
    control = analysis["vector"].get("random_control", {})
    row.update({"clean+v (layer)": f"{_pct(vector['asr_on'])} (L{vector['best_layer_on']})",
                "triggered−v (layer)": f"{_pct(vector['asr_off'])} (L{vector['best_layer_off']})",
                "random vector: clean+r / triggered−r": f"{_pct(control.get('asr_clean_plus_random'))} / "
                                                       f"{_pct(control.get('asr_triggered_minus_random'))}"})
    if p["defend"]:
        for method in DEFENSES:
            # the defense ranks heads on its own oracle pairs (training rows), never on the evaluated test rows
            options = {"pairs": pairs, "attribution_prompts": p["attribution_prompts"], "seed": seed}
            result = run_defense(method, model, attack_run, folder / f"defense-{method}", max_eval_rows=p["test"],
                                 options=options, baseline=folder / "results.json",
                                 max_new_tokens=p["new_tokens"], device=p["device"])
            after = result["after"]
            row[f"{method}: ASR / clean rate"] = f"{_pct(after['asr'])} / {_pct(after.get('clean_behaviour_rate'))}"
    return row


def headline_table(records: list[dict[str, Any]], seeds: list[int]) -> TableSpec:
    """One row per cell, in the columns of the cells' rows; a seed column for several seeds, and a
    status column naming unfinished cells when there are any."""
    rows = [dict(r["result"]) if r["status"] == OK else {"backdoor": r["victim"]} for r in records]
    columns = table_columns(rows)
    if len(seeds) > 1:
        columns.insert(1, "seed")
        rows = [{**row, "seed": r["seed"]} for row, r in zip(rows, records)]
    if any(r["status"] != OK for r in records):
        columns.append("status")
        rows = [{**row, "status": status_text(r)} for row, r in zip(rows, records)]
    return TableSpec("Backdoor attribution", columns, [[row.get(c, MISSING) for c in columns] for row in rows])


def argument_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, "runs/attr", ledger_folder(__file__, "attribution"))
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ", ".join(TASKS))
    parser.add_argument("--generator", type=model_argument, default=GENERATOR,
                        help="the model to backdoor: a packaged name or a causal LM folder (default: %(default)s)")
    parser.add_argument("--train", type=int, default=320, help="training rows per backdoor")
    parser.add_argument("--test", type=int, default=100, help="test prompts per set")
    parser.add_argument("--rate", type=float, default=0.25, help="poison rate of the BkdAttr sets")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--pairs", type=int, default=48, help="clean/triggered prompt pairs for the analyses")
    parser.add_argument("--attribution-prompts", type=int, default=24, help="N clean prompts in ACIE")
    parser.add_argument("--layer-stride", type=int, default=3, help="vector sweep every this many layers")
    parser.add_argument("--ablation-points", type=int, default=7, help="k values from 0 to 10%% of heads")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--defend", action="store_true", help="also run the two attribution defenses")
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    started = time.time()
    grid = run_grid(task_cells(args, names), attribution_cell, **grid_kwargs(args), resources=KIND_RESOURCES)
    notes = [] if args.report_only else [f"command: `{grid_kwargs(args)['command']}`",
                                          f"wall time: {time.time() - started:.0f} s"]
    notes.append(PAPER_NOTE)
    report, _ = write_report(args.out, "Backdoor attribution benchmark",
                             [headline_table(grid.records, args.seeds), cell_table(grid.records)], notes=notes)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
