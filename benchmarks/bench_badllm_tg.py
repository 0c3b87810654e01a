"""BadLLM-TG benchmark: the paper's Table 1 on our models, the poison-rate sweep, and target-label
identification accuracy.

Table 1: SST-2, HSOL and AG News × Wordbkd (``badnets``), Sentbkd (``addsent``), Stylebkd
(``stylebkd``, Bible style) and Synbkd (``synbkd``) × {No defense, ONION, RAP, MuScleLoRA, BadActs,
BadLLM-TG}, poison rate 20%, target label 1, victim ``minilm-l6`` (any BERT-like classifier by
``--model``). Each cell reports CACC and ASR on the attack run's clean and triggered test rows; the
last row averages over cells. The sweep repeats one dataset × attack at several poison rates.

The work is two grids of cells (:mod:`backdoorlab.bench`), run as Ray tasks (``--serial``: in this
process; ``--ray-address``: on a cluster): first one victim cell per dataset × attack × rate × seed
(the attack run and the victim trained on it, under ``<out>/victims/work/<cell id>/``), then one
cell per victim and defense (under ``<out>/work/<cell id>/``), which measures the undefended victim
and the defended model on the same rows. The defense cells' records are the ledger,
``results/badllm_tg/<cell id>.json`` in the repository (``--results``); the victims are scratch
work (``<out>/victims/cells/``), trained only for defense cells that are not finished. A rerun
skips finished cells whose code is unchanged and every stage reuses finished outputs, so an
interrupted run resumes, on another machine too. The tables (and the sweep's plot) go to
``report.md`` / ``report.html`` under ``--out``; ``--report-only`` prints them from the ledger and
marks the other cells "not run" or "stale".

Sizes are arguments; the defaults fit 2 CPU cores (see docs/historical/benchmarks.md for the figures and the
time they took).

    python benchmarks/bench_badllm_tg.py --out runs/tg
    python benchmarks/bench_badllm_tg.py --out runs/tg --sweep-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backdoorlab.attacks.run import AttackRun
from backdoorlab.bench import (
    ERROR,
    OK,
    Cell,
    CellStore,
    TableSpec,
    add_grid_arguments,
    cell_table,
    grid_kwargs,
    ledger_folder,
    pivot_table,
    run_grid,
    unfinished,
    write_report,
)
from backdoorlab.bench.options import KIND_RESOURCES, device_kind, model_argument
from backdoorlab.bench.recipes import recipe_for, validation_split
from backdoorlab.data import Dataset, load_dataset
from backdoorlab.defenses import get_defense, run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.paraphrasers import make_pool, save_pool
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, run_attack
from backdoorlab.training import MODEL_DIR, TrainConfig

DATASETS = ("sst2", "hsol", "agnews")
ATTACKS = {"badnets": "Wordbkd", "addsent": "Sentbkd", "stylebkd": "Stylebkd", "synbkd": "Synbkd"}
DEFENSES = ("none", "fine-tune", "onion", "rap", "muscle-lora", "badacts", "badllm-tg", "backdoor-collapse")
#: Paper Table 1 averages (arXiv 2603.15692), in percent: ASR per defense, and BadLLM-TG's CACC.
PAPER_AVERAGE_ASR = {"none": 93.29, "onion": 68.62, "rap": 88.33, "muscle-lora": 27.98, "badacts": 51.06,
                     "badllm-tg": 14.29}
PAPER_BADLLM_TG_CACC = 88.62
#: Placeholder for the paraphrase pools of a cell's data set: the StyleBkd paraphraser's output on its dev split,
#: one pool per shipped style (rows neither trained nor tested on). The attack's own paraphraser made them: an
#: oracle-assisted defender (see docs/badllm_tg.md).
STYLE_POOLS = "style-dev-pools"
#: Placeholder for pools the defender makes itself (:mod:`backdoorlab.paraphrasers`, no attack tool): each
#: syntactic template of :data:`DEFENDER_POOL_METHODS` applied to :data:`DEFENDER_POOL_ROWS` rows of the data set
#: that the victim was neither trained nor tested on.
DEFENDER_POOLS = "defender-pools"
#: The defender's paraphrasers in its pools: the rule-based templates. The only offline chat model (SmolLM2-135M)
#: keeps about 2 style rewrites in 10 at about 30 s a row (docs/paraphrasers.md), too few and too slow for a pool.
DEFENDER_POOL_METHODS = ("syntactic:sbar", "syntactic:cleft", "syntactic:question", "syntactic:imperative")
DEFENDER_POOL_ROWS = 200
#: Method labels beyond the registry names: label → (defense name, options).
VARIANTS = {"badllm-tg-faithful": ("badllm-tg", {"variant": "faithful"}),
            "badllm-tg-delta": ("badllm-tg", {"identify": "delta"}),
            "badllm-tg-oracle-pools": ("badllm-tg", {"paraphrase_pools": STYLE_POOLS}),
            "badllm-tg-defender-pools": ("badllm-tg", {"paraphrase_pools": DEFENDER_POOLS}),
            "badllm-tg-rows-kept": ("badllm-tg", {"adv_rows": "kept"}),
            "badllm-tg-balanced": ("badllm-tg", {"adv_class_weighting": "balanced"}),
            "badllm-tg-lr-5e-5": ("badllm-tg", {"adv_lr": 5e-5}),
            "backdoor-collapse-every-label": ("backdoor-collapse", {"every_label": True}),
            "backdoor-collapse-every-label-1e-4": ("backdoor-collapse", {"every_label": True, "learning_rate": 1e-4}),
            "backdoor-collapse-1e-4": ("backdoor-collapse", {"learning_rate": 1e-4}),
            "fine-tune-1e-4": ("fine-tune", {"learning_rate": 1e-4, "epochs": 6})}
#: Budget settings for 2 CPU cores (the defenses' own defaults follow their papers).
CPU_BUDGET = {"muscle-lora": {"epochs": 3}, "badacts": {"bound_epochs": 5}, "onion": {"max_clean": 50},
              "badllm-tg": {"iterations": 6}}
#: Settings chosen in validation mode (``--validation``; ledger ``results/badllm_tg_validation``, page
#: docs/results/badllm_tg_validation.md) for one data set: method label → data set → options. AG News:
#: ``adv_rows=kept`` (G on every kept row, so the labels keep their shares). Not applied in validation mode itself.
VALIDATED = {"badllm-tg": {"agnews": {"adv_rows": "kept"}}}
#: Methods whose threat model hands the defender the target label: RAP protects a label the defender names
#: (BadLLM-TG, which also accepts one, must identify it itself here).
TARGET_GIVEN = ("rap",)
#: Labels run only on some attacks (paraphrase pools test style and syntax hypotheses).
ONLY_ATTACKS = {"badllm-tg-oracle-pools": ("stylebkd", "synbkd"), "badllm-tg-defender-pools": ("stylebkd", "synbkd")}
#: Test rows per split for the slowest defenses (ONION scores every leave-one-out variant with an LM).
EVAL_ROWS = {"onion": 50}
#: The victim cells' defense name, and the folder of their grid under ``--out``.
VICTIM, VICTIMS = "victim", "victims"
#: The clean model of a data set and seed (the ASR floor's model): its victim-grid cell's defense name.
CLEAN = "clean-model"
#: Insertion attacks, the only ones ``--validation`` can run (a paraphrase attack reads its pools by row).
INSERTION_ATTACKS = ("badnets", "addsent")
DEFAULT_OUT, VALIDATION_LEDGER = "runs/bench-badllm-tg", "badllm_tg_validation"
#: ``--class-weighting``: the victims' ``TrainConfig.class_weighting``, "none" by default: on 600 HSOL validation rows
#: (training split; benchmarks/bench_victim_recipe.py, seeds 0-1) "balanced" gave MiniLM no higher macro-F1.
CLASS_WEIGHTING_HELP = ("the victims' class weighting (TrainConfig.class_weighting): 'balanced' weights each label's loss "
                        "by n_rows / (n_labels * its rows) of the training rows; default 'none' (on HSOL validation "
                        "rows 'balanced' did not raise macro-F1, see benchmarks/bench_victim_recipe.py; a recipe chosen in --recipes "
                        "overrides it)")


def parse_overrides(values: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME:KEY=VALUE`` strings → {defense label: {key: value}} (values parsed as JSON when they can be)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in values:
        label, sep, assignment = item.partition(":")
        key, eq, raw = assignment.partition("=")
        if not sep or not eq:
            raise BackdoorLabError(f"--defense-option {item!r} must look like NAME:KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(label, {})[key] = value
    return overrides


def defender_pools(dataset: str, attack_run: Path, folder: Path, seed: int) -> list[str]:
    """:data:`DEFENDER_POOLS` for a cell: the defender's paraphrases of clean rows it holds outside the suspect's
    training and test rows (the attack run's defender view: the dev split, else unused training rows)."""
    rows = AttackRun(attack_run).defender_view({"clean_rows"}).clean_rows
    if rows is None:
        raise BackdoorLabError(f"{dataset} has no clean rows outside {attack_run}'s splits to make the defender's pools")
    paths = []
    for method in DEFENDER_POOL_METHODS:
        path = folder / f"{method.replace(':', '-')}.tsv"
        if not path.is_file():
            save_pool(make_pool(rows, method, seed=seed, max_rows=DEFENDER_POOL_ROWS), path)
        paths.append(str(path))
    return paths


def style_pools(dataset: str) -> list[str]:
    """The dev-split style paraphrases of ``dataset`` shipped with the benchmark data, one file per style."""
    from backdoorlab.attacks.paraphrase import STYLES
    from backdoorlab.data.registry import resolve_data_dir

    root = Path(resolve_data_dir(None)) / "classification" / "style"
    return [str(root / style / dataset / "dev.tsv") for style in STYLES]


def defense_setup(label: str, overrides: dict[str, dict[str, Any]],
                  validated: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], str, str]:
    """``(defense name, options, stage, module)`` of a method label, with the ``validated`` options of its data set
    (:data:`VALIDATED`); unknown names or options fail before any work."""
    method, options = VARIANTS.get(label, (label, {}))
    options = {**CPU_BUDGET.get(method, {}), **(validated or {}), **options, **overrides.get(label, {})}
    defense = get_defense(method, **options)
    return method, options, defense.stage, type(defense).__module__


def victim_name(dataset: str, attack: str, rate: float) -> str:
    return f"{dataset}-{attack}-{round(rate * 100)}"


def victim_recipe(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """``dataset``'s victims' training rows, learning rate and class weighting: the recipe chosen on
    validation rows in ``--recipes`` (:mod:`backdoorlab.bench.recipes`), else ``--train`` / ``--lr`` /
    ``--class-weighting``."""
    return recipe_for(args.recipes, dataset, args.model, args.epochs, rows=args.train, lr=args.lr,
                      class_weighting=args.class_weighting)


def victim_cell(args: argparse.Namespace, dataset: str, attack: str, rate: float, seed: int) -> Cell:
    """Attack ``dataset`` with ``attack`` at ``rate`` and train the victim on it (with its recipe)."""
    recipe = victim_recipe(args, dataset)
    params = {"dataset": dataset, "attack": attack, "rate": rate, "target": args.target, "train": recipe["train"],
              "test": args.test, "model": args.model, "epochs": args.epochs, "lr": recipe["lr"], "device": args.device,
              "class_weighting": recipe["class_weighting"]}
    if args.validation:
        params["validation"] = args.validation
    return Cell(victim_name(dataset, attack, rate), VICTIM, seed, params, kind=device_kind(args.device), methods=())


def clean_cell(victim: Cell) -> Cell:
    """The clean model of a victim's data set and seed: the victim's recipe on the same rows, unpoisoned."""
    params = {k: v for k, v in victim.params.items() if k not in ("attack", "rate", "target")}
    return Cell(f"{victim.params['dataset']}-clean", CLEAN, victim.seed, params, kind=victim.kind, methods=())


def training_rows(p: Mapping[str, Any], seed: int, folder: Path) -> tuple[str, str | None]:
    """``(training data, test data)`` for :func:`run_attack`: the data set's name and ``None`` (its own test
    split), or with ``validation`` rows carved from its training split, saved datasets of the training rows
    and of the validation rows, which then stand in for the test rows (:func:`bench.recipes.validation_split`)."""
    if not p.get("validation"):
        return p["dataset"], None
    train_folder, validation_folder = folder / "validation-split" / "train", folder / "validation-split" / "validation"
    if not (train_folder / "dataset.json").is_file() or not (validation_folder / "dataset.json").is_file():
        train, held_out = validation_split(p["dataset"], p["validation"], p["train"], seed)
        train.save(train_folder, overwrite=True)
        train.with_examples(held_out, note="validation rows (training split)").save(validation_folder, overwrite=True)
    return str(train_folder), str(validation_folder)


def defense_cell(args: argparse.Namespace, victim: Cell, label: str, overrides: dict[str, dict[str, Any]]) -> Cell:
    """Defense ``label`` applied to a victim cell's model; the victim's folder and settings are its params."""
    validated = {} if args.validation else VALIDATED.get(label, {}).get(victim.params["dataset"], {})
    method, options, stage, module = defense_setup(label, overrides, validated)
    params = {**victim.params, "method": method, "options": options, "stage": stage,
              "eval_rows": min(args.test, EVAL_ROWS.get(label, args.test))}
    victims = CellStore(args.out / VICTIMS, train_victim)
    run_options = {"victim_dir": str(victims.workdir(victim))}
    if method == "none":  # the undefended row also measures the clean model's ASR floor on the same rows
        run_options["clean_dir"] = str(victims.workdir(clean_cell(victim)))
    return Cell(victim.victim, label, victim.seed, params, kind=victim.kind, run_options=run_options,
                code=(module,), methods=())


def train_victim(cell: Cell, folder: Path) -> dict[str, Any]:
    """A victim cell: the attack run (``folder/attack``) and the victim trained on it (``folder/victim``)."""
    p = cell.params
    train_data, test_data = training_rows(p, cell.seed, folder)
    config = TrainConfig(epochs=p["epochs"], learning_rate=p["lr"], batch_size=16, seed=cell.seed, device=p["device"],
                         save_steps=10**9, class_weighting=p["class_weighting"])
    if cell.defense == CLEAN:
        rows = load_dataset(train_data, "train").sample(p["train"], cell.seed)  # run_attack's rows, unpoisoned
        return {"model": str(ensure_trained(folder / "victim", p["model"], rows, config))}
    attack_run = folder / "attack"
    if not (attack_run / "manifest.json").is_file():
        run_attack(train_data, p["attack"], attack_run, rate=p["rate"], target=p["target"], seed=cell.seed,
                   max_train=p["train"], max_test=p["test"], test_data=test_data)
    victim = ensure_trained(folder / "victim", p["model"], Dataset.load(attack_run / "train"), config)
    return {"attack_run": str(attack_run), "model": str(victim)}


def apply_defense(cell: Cell, folder: Path) -> dict[str, Any]:
    """A defense cell: the undefended victim evaluated on the rows the defense is measured on
    (``folder/baseline.json``), then the defense (``folder/defense``); its table row."""
    p = cell.params
    victim_dir = Path(cell.run_options["victim_dir"])
    attack_run, victim = victim_dir / "attack", victim_dir / "victim" / MODEL_DIR
    options = dict(p["options"])
    if options.get("paraphrase_pools") == STYLE_POOLS:
        options["paraphrase_pools"] = style_pools(p["dataset"])
    elif options.get("paraphrase_pools") == DEFENDER_POOLS:
        options["paraphrase_pools"] = defender_pools(p["dataset"], attack_run, folder / "pools", cell.seed)
    if not victim.is_dir():
        raise BackdoorLabError(f"no trained victim in {victim}: the victim cell {cell.victim} (seed {cell.seed}) "
                               "did not finish")
    model = p["model"] if p["stage"] == "training" else str(victim)
    started = time.time()
    baseline = folder / "baseline.json"
    ensure_evaluated(victim, attack_run, baseline, device=p["device"], max_rows=p["eval_rows"])
    # the clean pretrained model is the defender's; the target label only where the method's threat model gives it
    target = p["target"] if p["method"] in TARGET_GIVEN else None
    run_defense(p["method"], model, attack_run, folder / "defense", options=options, baseline=baseline,
                target_label=target, pretrained_model=p["model"], max_eval_rows=p["eval_rows"], device=p["device"])
    row = defense_row(cell, folder / "defense", attack_run)
    if "clean_dir" in cell.run_options:
        clean = Path(cell.run_options["clean_dir"]) / "victim" / MODEL_DIR
        if not clean.is_dir():
            raise BackdoorLabError(f"no clean model in {clean}: its victim-grid cell did not finish")
        floor = ensure_evaluated(clean, attack_run, folder / "clean-model.json", device=p["device"],
                                 max_rows=p["eval_rows"])
        row.update(ASR_floor=floor["asr"], clean_CACC=floor["cacc"], clean_macro_F1=floor["macro_f1"])
    print(f"[{cell.victim}] {cell.defense}: CACC {100 * row['CACC']:.1f} ASR {100 * row['ASR']:.1f} "
          f"({time.time() - started:.0f} s)", flush=True)
    return row


def row_key(cell: Mapping[str, Any]) -> dict[str, Any]:
    """The columns naming a defense cell (from a :class:`Cell`'s fields or a cell record)."""
    params = cell["params"]
    return {"dataset": params["dataset"], "attack": ATTACKS[params["attack"]], "rate": params["rate"],
            "defense": cell["defense"], "seed": cell["seed"]}


def defense_row(cell: Cell, defense_dir: Path, attack_run: Path) -> dict[str, Any]:
    """The result row of a finished defense run."""
    row = row_key(cell.identity())
    after = json.loads((defense_dir / "metrics.json").read_text(encoding="utf-8"))["after"]
    record = json.loads((defense_dir / "defense.json").read_text(encoding="utf-8"))
    row.update(CACC=after["cacc"], macro_F1=after["macro_f1"], ASR=after["asr"], n_clean=after["n_clean"],
               n_asr=after["n_asr_rows"], seconds=record.get("seconds"))
    identified = (record["findings"].get("target_identification") or {}).get("target")
    if identified is not None:
        row["identified_target"] = identified
        row["true_target"] = json.loads((attack_run / "manifest.json").read_text())["target"]["index"]
        row["trigger"] = " | ".join(record["findings"].get("adversarial_patterns") or
                                    [record["findings"]["trigger"]["description"]])
        row.update(_generator_share(defense_dir / "iterations.json"))
    return row


def record_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A defense cell record's row: its result, or its key with the error or status (e.g. ``not run``)."""
    if record["status"] == OK:
        return dict(record["result"])
    return {**row_key(record), "error": record["error"] if record["status"] == ERROR else record["status"]}


def _generator_share(log_file: Path) -> dict[str, int]:
    """How many scored candidates the generator itself proposed, and how many of those flipped ≥ 80%."""
    if not log_file.is_file():
        return {}
    candidates = [c for it in json.loads(log_file.read_text(encoding="utf-8")) for c in it["candidates"]]
    own = [c for c in candidates if c["pattern"].get("source") == "generator"]
    return {"candidates": len(candidates), "generator_proposals": len(own),
            "generator_working": sum(c["flip_rate"] >= 0.8 for c in own)}


def with_floors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its victim's ASR floor (the clean model's rate of the target on the same triggered rows,
    measured by the undefended cell)."""
    floors = {(r["dataset"], r["attack"], r["rate"], r["seed"]): r["ASR_floor"] for r in rows if "ASR_floor" in r}
    return [{**r, "ASR_floor": floors.get((r["dataset"], r["attack"], r["rate"], r["seed"]))} for r in rows]


def average_rows(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    averages = []
    for label in labels:
        done = [r for r in rows if r["defense"] == label and "ASR" in r]
        if done:
            averages.append({"dataset": "average", "attack": f"{len(done)} cells", "defense": label,
                             **{key: statistics.fmean(r[key] for r in done) if all(r.get(key) is not None for r in done)
                                else None for key in ("CACC", "macro_F1", "ASR", "ASR_floor")},
                             "paper ASR": PAPER_AVERAGE_ASR[label] / 100 if label in PAPER_AVERAGE_ASR else None})
    return averages


def identification_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in rows if "identified_target" in r]
    correct = sum(r["identified_target"] == r["true_target"] for r in found)
    return {"runs": len(found), "correct": correct, "accuracy": correct / len(found) if found else None,
            "generator_proposals": sum(r.get("generator_proposals", 0) for r in found),
            "generator_working": sum(r.get("generator_working", 0) for r in found),
            "candidates": sum(r.get("candidates", 0) for r in found)}


def sweep_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for label in dict.fromkeys(r["defense"] for r in rows):
        points = sorted((r["rate"], r["ASR"], r["CACC"]) for r in rows if r["defense"] == label and "ASR" in r)
        if points:
            axes[0].plot([100 * p[0] for p in points], [100 * p[1] for p in points], marker="o", label=label)
            axes[1].plot([100 * p[0] for p in points], [100 * p[2] for p in points], marker="o", label=label)
    for axis, name in zip(axes, ("ASR (%)", "CACC (%)")):
        axis.set_xlabel("poison rate (%)")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend()
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)


Setting = tuple[str, str, float]  # dataset, attack, poison rate


def grid_cells(args: argparse.Namespace, settings: list[Setting], labels: list[str],
               overrides: dict[str, dict[str, Any]]) -> tuple[list[Cell], list[Cell]]:
    """The victim cells of ``settings`` × seeds, and their defense cells × ``labels``."""
    victims = [victim_cell(args, *setting, seed) for setting in settings for seed in args.seeds]
    return victims, [defense_cell(args, victim, label, overrides) for victim in victims for label in labels
                     if victim.params["attack"] in ONLY_ATTACKS.get(label, ATTACKS)]


def unique(cells: list[Cell]) -> list[Cell]:
    """Cells in order, each id once (Table 1's cell can also be a point of the sweep)."""
    return list({cell.id: cell for cell in cells}.values())


def cacc_asr(results: list[dict[str, Any]]) -> str:
    """A pivot entry: mean CACC / mean ASR over seeds, in percent."""
    return (f"{100 * statistics.fmean(r['CACC'] for r in results):.1f} / "
            f"{100 * statistics.fmean(r['ASR'] for r in results):.1f}")


def rows_table(title: str, rows: list[dict[str, Any]], columns: list[str], seeds: list[int]) -> TableSpec:
    if len(seeds) > 1:
        columns = [*columns[:columns.index("defense")], "seed", *columns[columns.index("defense"):]]
    return TableSpec(title, columns, [[row.get(c) for c in columns] for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, DEFAULT_OUT, ledger_folder(__file__, "badllm_tg"))
    parser.add_argument("--model", type=model_argument, default="minilm-l6",
                        help="victim: a packaged name or a BERT-like model folder")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--defenses", default=",".join(DEFENSES),
                        help=f"registry names, or variants: {', '.join(VARIANTS)}")
    parser.add_argument("--defense-option", action="append", default=[], metavar="NAME:KEY=VALUE")
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--target", type=int, default=1)
    parser.add_argument("--train", type=int, default=1000,
                        help="training rows per victim of a data set with no recipe chosen in --recipes")
    parser.add_argument("--test", type=int, default=100, help="clean and triggered test rows per cell")
    parser.add_argument("--validation", type=int, default=0, metavar="N",
                        help="carve N validation rows from each data set's training split (the same rows for every "
                             "seed) and measure on them instead of the test rows, to choose settings; insertion "
                             f"attacks only ({', '.join(INSERTION_ATTACKS)}); records go to results/{VALIDATION_LEDGER} "
                             f"and work to {DEFAULT_OUT}-validation unless --results / --out say otherwise")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-4,
                        help="victims' learning rate for a data set with no recipe chosen in --recipes")
    parser.add_argument("--class-weighting", choices=["none", "balanced"], default="none", help=CLASS_WEIGHTING_HELP)
    parser.add_argument("--recipes", type=Path, default=ledger_folder(__file__, "victim_recipe"),
                        help="ledger of victim recipes scored on validation rows (benchmarks/bench_victim_recipe.py); "
                             "a data set's victims use the one chosen there (default: %(default)s)")
    parser.add_argument("--sweep-rates", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--sweep-cell", default="sst2:badnets", help="DATASET:ATTACK of the poison-rate sweep")
    parser.add_argument("--sweep-defenses", default="none,badllm-tg")
    parser.add_argument("--sweep-only", action="store_true")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.validation:
        others = sorted(set(args.attacks.split(",")) - set(INSERTION_ATTACKS))
        if others or not args.no_sweep:
            parser.error(f"--validation runs insertion attacks only ({', '.join(INSERTION_ATTACKS)}) and no sweep; "
                         f"drop {', '.join(others) or 'the sweep (--no-sweep)'}")
        # validation records choose settings and are no test figures: a ledger and victims of their own
        if args.results == ledger_folder(__file__, "badllm_tg"):
            args.results = ledger_folder(__file__, VALIDATION_LEDGER)
        if args.out == Path(DEFAULT_OUT):
            args.out = Path(f"{DEFAULT_OUT}-validation")
    overrides = parse_overrides(args.defense_option)
    labels = [d for d in args.defenses.split(",") if d]
    sweep_labels = [d for d in args.sweep_defenses.split(",") if d]
    for label in labels + sweep_labels:
        defense_setup(label, overrides)
    started = time.time()
    table1: list[Setting] = [] if args.sweep_only else [
        (dataset, attack, args.rate) for dataset in args.datasets.split(",") for attack in args.attacks.split(",")]
    dataset, _, attack = args.sweep_cell.partition(":")
    sweep: list[Setting] = [] if args.no_sweep else [(dataset, attack, float(r)) for r in args.sweep_rates.split(",")]
    table1_victims, table1_cells = grid_cells(args, table1, labels, overrides)
    sweep_victims, sweep_cells = grid_cells(args, sweep, sweep_labels, overrides)

    # the victims first, those whose defense cells are not finished: each such cell reads its victim's folder
    defense_cells = unique(table1_cells + sweep_cells)
    todo = [] if args.report_only else unfinished(defense_cells, apply_defense, args.out, args.results)
    pending = {(c.victim, c.seed) for c in todo}
    floors = {(c.victim, c.seed) for c in todo if "clean_dir" in c.run_options}  # undefended cells still to run
    needed = [v for v in unique(table1_victims + sweep_victims) if (v.victim, v.seed) in pending]
    needed += unique([clean_cell(v) for v in needed if (v.victim, v.seed) in floors])
    victims = run_grid(needed, train_victim, **{**grid_kwargs(args), "out": args.out / VICTIMS, "results": None},
                       resources=KIND_RESOURCES)
    defenses = run_grid(defense_cells, apply_defense, **grid_kwargs(args), resources=KIND_RESOURCES)
    records = {record["id"]: record for record in defenses.records}
    notes = [f"CPU budget options: {json.dumps(CPU_BUDGET)}",
             f"settings chosen on validation rows, per data set: {json.dumps({} if args.validation else VALIDATED)}"]
    if not args.report_only:
        notes[:0] = [f"command: `{grid_kwargs(args)['command']}`", f"wall time: {time.time() - started:.0f} s"]
    tables, plots = [], []
    if table1_cells:
        chosen = [records[cell.id] for cell in table1_cells]
        rows = with_floors([record_row(record) for record in chosen])
        columns = ["dataset", "attack", "defense", "CACC", "macro_F1", "ASR", "ASR_floor", "n_clean", "n_asr",
                   "seconds", "error", "paper ASR"]
        tables += [rows_table("Table 1", rows + average_rows(rows, labels), columns, args.seeds),
                   pivot_table("Table 1 (CACC / ASR, %)", chosen, cacc_asr)]
        notes.append(f"target-label identification: {identification_summary(rows)}")
    if sweep_cells:
        chosen = [records[cell.id] for cell in sweep_cells]
        rows = [record_row(record) for record in chosen]
        plots.append(args.out / "sweep.png")
        args.out.mkdir(parents=True, exist_ok=True)
        sweep_plot(rows, plots[-1])
        tables += [rows_table(f"Poison-rate sweep ({args.sweep_cell})", rows, ["rate", "defense", "CACC", "ASR", "error"],
                              args.seeds),
                   pivot_table(f"Poison-rate sweep ({args.sweep_cell}; CACC / ASR, %)", chosen, cacc_asr)]
        notes.append(f"target-label identification over the sweep: {identification_summary(rows)}")
    if victims.records:
        tables.append(cell_table(victims.records, title="Victim cells (this run)"))
    tables.append(cell_table(defenses.records, title="Defense cells"))
    report, _ = write_report(args.out, "BadLLM-TG benchmark", tables, plots, notes)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
