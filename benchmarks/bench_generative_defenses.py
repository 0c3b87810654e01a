"""The generative defense table: every zoo victim × every defense, on the benchmark grid.

Rows are the zoo's victims (attack × behaviour × threat model, `backdoorlab zoo list`), columns the
defenses; each cell runs ``backdoorlab defend`` on the victim with a defender's view of its attack
run (clean rows from outside the run; never its test rows or trigger) and measures, on the victim's
own held-out rows: ASR beside its floor (the untouched model's rate on the same triggered
prompts), the clean-prompt behaviour rate, clean perplexity and task accuracy (zero-shot
multiple-choice, the zoo's tasks and sample). "before" is the zoo's own evaluation of the victim,
on the same rows. Average rows per behaviour are printed beside the published averages the table
is shaped after (BD-VAX, arXiv 2603.13461, Table 2: LLaMA-2-7B, full-parameter backdoors), and
each defense's cost beside one clean fine-tuning epoch on the same victim.

A column is a defense name, optionally with options after commas, so one defense can fill several
columns (a sparsity sweep, several temperatures):

    python benchmarks/bench_generative_defenses.py                  # build missing cells, report
    python benchmarks/bench_generative_defenses.py --defenses wanda wanda,pattern=4:8 \
        magnitude-pruning,sparsity=0.3 sampling,temperature=0.7 sampling,temperature=1.5
    python benchmarks/bench_generative_defenses.py --report-only    # tables from finished cells

Defenses that need a clean reference model (CleanGen) get the zoo's untouched base model, the suspect's exact
base and so the ideal case; a column ``cleangen,reference=tuned`` gives them that base fine-tuned on 200 other
clean rows instead (Alpaca rows of the BkdAttr data; one per seed, shared by the cells), a model of the same
family that a defender could hold, to measure how much of the removal survives a reference that is not the
suspect's own base. Two ``unlearn-trigger`` columns are controls for backdoor self-awareness's
unlearning: ``trigger=oracle`` unlearns the victim's own trigger (an oracle a defender never holds) and
``trigger=random`` a random phrase of as many words from the defender's clean rows, so the table shows
how much of the unlearning effect needs the right phrase at all. The
self-awareness pair share their RL runs in ``OUT/shared-store`` unless a column names a ``store``. A cell's
defended model, the models its defense trained on the way and its training checkpoints are
deleted once it is measured (``--keep-models`` keeps
them): a full grid would otherwise hold half a gigabyte per cell.

The zoo must be built first (`backdoorlab zoo build`); a victim that is not built is reported as
"not run". A killed grid resumes: finished cells are skipped.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from backdoorlab.bench.cell import Cell
from backdoorlab.bench.grid import run_grid
from backdoorlab.bench.options import add_grid_arguments, data_identity, grid_kwargs, ledger_folder
from backdoorlab.bench.report import TableSpec, mean_std, pivot_table, write_report
from backdoorlab.defenses import get_defense, run_defense
from backdoorlab.defenses.base import defense_info
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import CHECKPOINT_DIR, MODEL_DIR
from backdoorlab.zoo import DEFAULT_ZOO_DIR, load_zoo_victim, planned_fingerprint, planned_zoo
from backdoorlab.zoo.build import EVALUATION, UTILITY
from backdoorlab.zoo.catalog import read_json
from backdoorlab.zoo.measure import ensure_task_accuracy

DEFENSES = ("none", "drop-adapter", "drop-adapter,retrain_epochs=2", "fine-tune", "fine-pruning", "wanda",
            "magnitude-pruning", "quantization", "crow", "cleangen", "cleangen,reference=tuned", "bd-vax",
            "backdoor-collapse", "self-awareness", "self-awareness-guard", "unlearn-trigger,trigger=oracle",
            "unlearn-trigger,trigger=random", "sampling")
#: ``trigger=`` values of an ``unlearn-trigger`` column that are controls, resolved per victim: ``oracle`` unlearns the
#: victim's own trigger (its words joined: MTBA's three alternatives together, as CTBA's; an oracle, never what a
#: defender holds), ``random`` a phrase of as many words drawn from the defender's clean rows. Set beside
#: self-awareness's unlearning with the trigger its RL recovered, they say how much of the effect needs the right
#: phrase at all.
TRIGGER_CONTROLS = ("oracle", "random")
#: Where defenses with a ``store`` option (the self-awareness pair) keep the runs they share, under ``--out``.
SHARED_STORE = "shared-store"
#: Where the tuned references of ``reference=tuned`` columns are kept (shared by the cells), under ``--out``.
REFERENCES = "references"
#: ``reference=KIND`` of a column whose defense needs a clean reference model (CleanGen): ``base``, the suspect's
#: own untouched base (the ideal case), or ``tuned``, that base fine-tuned on other clean rows (a model of the same
#: family a defender could hold, not the suspect's exact base).
REFERENCE_KINDS = ("base", "tuned")
#: ``tuned``: LoRA (merged) on these clean rows, leaving out any whose prompt is in a zoo victim's source or test rows.
TUNED_REFERENCE = {"dataset": "bkdattr-alpaca_begin", "split": "all", "rows": 200, "epochs": 1.0, "learning_rate": 2e-4,
                   "max_length": 128}
#: The published column each of our defenses is compared with.
PUBLISHED_COLUMN = {"none": "none", "fine-tune": "fine-tune", "wanda": "pruning", "quantization": "quantization",
                    "crow": "crow", "fine-pruning": "fine-pruning", "bd-vax": "bd-vax"}
#: BD-VAX (arXiv 2603.13461) Table 2, average ASR (%) on LLaMA-2-7B, by behaviour and threat model: full-parameter
#: backdoors (every column), LoRA-adapter backdoors (only BD-VAX's column is known; ../shared/REFERENCES.md).
PUBLISHED = {
    ("negsentiment", "full"): {"none": 28.16, "fine-tune": 29.96, "pruning": 13.78, "quantization": 16.36, "crow": 8.66,
                               "fine-pruning": 10.94, "bd-vax": 2.10},
    ("refusal", "full"): {"none": 82.01, "fine-tune": 82.66, "pruning": 65.81, "quantization": 43.56, "crow": 51.40,
                          "fine-pruning": 45.64, "bd-vax": 6.67},
    ("negsentiment", "lora"): {"bd-vax": 0.91},
    ("refusal", "lora"): {"bd-vax": 10.76},
}
#: The same table's plain LoRA fine-tuning row (a defense, on the full-parameter victims' undefended averages).
PUBLISHED_LORA_FINE_TUNING = {"negsentiment": 10.62, "refusal": 52.34}
FIGURES = (("asr", "ASR", 100), ("clean_behaviour_rate", "clean behaviour", 100),
           ("clean_perplexity", "clean PPL", 1), ("task_accuracy", "task accuracy", 100))


def parse_column(column: str) -> tuple[str, dict[str, str]]:
    """``NAME[,KEY=VALUE...]`` → the defense name and the column's own options."""
    method, *pairs = column.split(",")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key or not sep:
            raise BackdoorLabError(f"defense column {column!r} must look like NAME or NAME,KEY=VALUE[,KEY=VALUE...]")
        options[key] = value
    return method, options


def defense_cell(cell: Cell, workdir: Path) -> dict[str, Any]:
    """Defend one zoo victim with one defense; its figures after, beside the victim's and the floor."""
    params, where = cell.params, cell.run_options
    victim = load_zoo_victim(cell.victim, where["zoo_dir"])
    options = {**params["options"], **({"seed": cell.seed} if params["seeded"] else {}),
               **({"store": where["store"]} if where.get("store") else {})}
    method, _ = parse_column(cell.defense)
    _drop_if_model_gone(workdir / "defense")
    if method == "unlearn-trigger" and options.get("trigger") in TRIGGER_CONTROLS:
        options["trigger"] = control_trigger(str(options["trigger"]), victim, cell.seed, where["clean_data"],
                                             where["data_dir"])
    reference = params.get("reference_model")
    if params.get("reference_kind") == "tuned":
        reference = tuned_reference(reference, Path(where["references"]), where["data_dir"], cell.seed)
    metrics = run_defense(method, victim.model, victim.attack_run, workdir / "defense", options=options,
                          clean_data=where["clean_data"], reference_model=reference,
                          suspect_adapter=victim.adapter if params.get("suspect_adapter") else None,
                          baseline=victim.folder / EVALUATION, max_eval_rows=None,
                          max_new_tokens=params["max_new_tokens"], device=params["device"],
                          data_dir=where["data_dir"])
    after = metrics["after"]
    defended = workdir / "defense" / "model"
    # an unchanged model's task accuracy is the zoo's own (same model, tasks and questions: a current cache hit)
    model, utility_file = (defended, workdir / UTILITY) if defended.is_dir() else (victim.model, victim.folder / UTILITY)
    tasks = tuple(params["utility_tasks"])
    utility = ensure_task_accuracy(model, tasks, params["utility_rows"], utility_file, data_dir=where["data_dir"])
    if not cell.run_options.get("keep_models"):  # measured: the defended weights (0.5 GB for SmolLM2) are not kept
        models = [m for m in (workdir / "defense").rglob(MODEL_DIR) if m.is_dir()]  # the defended one, a repair's
        for folder in [*models, *(workdir / "defense").rglob(CHECKPOINT_DIR)]:
            shutil.rmtree(folder, ignore_errors=True)
    ran = read_json(workdir / "defense" / "defense.json") or {}
    return {"asr": after["asr"], "asr_floor": victim.figure("asr", "untouched"),
            "defense": {key: ran.get(key) for key in ("stage", "seconds", "options")},
            "clean_behaviour_rate": after["clean_behaviour_rate"], "clean_perplexity": after["clean_perplexity"],
            "task_accuracy": None if utility is None else utility["average"]["acc"],
            "before_asr": metrics["before"]["asr"], "behaviour": victim.record["spec"]["behaviour"],
            "threat_model": victim.record["spec"]["threat_model"], "victim_passed": victim.passed,
            "n_triggered": after["n_triggered"], "n_clean": after["n_clean"],
            **({"trigger_unlearned": options["trigger"]} if method == "unlearn-trigger" else {})}


def control_trigger(kind: str, victim: Any, seed: int, clean_data: str | None, data_dir: str | None) -> str:
    """The phrase an ``unlearn-trigger`` control column unlearns on ``victim`` (:data:`TRIGGER_CONTROLS`); random
    words come from the clean rows the defense itself gets."""
    import random

    from backdoorlab.defenses.inputs import gather_inputs
    from backdoorlab.defenses.shared.random_phrases import draw_phrases, prompt_words

    trigger = victim.record["attack"]["trigger"]
    oracle = " ".join(trigger) if isinstance(trigger, list) else str(trigger)
    if kind == "oracle":
        return oracle
    clean = gather_inputs(["clean_rows"], attack_run=victim.attack_run, clean_data=clean_data, data_dir=data_dir,
                          seed=seed).clean_rows
    words = prompt_words(clean, min_letters=4, exclude=oracle.split())
    return draw_phrases(words, len(oracle.split()), 1, random.Random(f"{victim.name}-{seed}"))[0]


def _reference_kind(column: str, options: dict[str, Any]) -> str:
    kind = str(options.get("reference", "base"))
    if kind not in REFERENCE_KINDS:
        raise BackdoorLabError(f"defense column {column!r}: reference must be one of {', '.join(REFERENCE_KINDS)}, "
                               f"not {kind!r}")
    return kind


def tuned_reference(base: str, store: Path, data_dir: str | None, seed: int) -> Path:
    """``base`` fine-tuned (LoRA, merged) on :data:`TUNED_REFERENCE`'s clean rows drawn with ``seed``: a clean model of
    the suspect's family that is not its exact base; made once per seed in ``store`` and shared by the cells."""
    from backdoorlab.data.registry import load_dataset
    from backdoorlab.pipeline import ensure_trained_shared
    from backdoorlab.training import TrainConfig

    from backdoorlab.zoo.specs import CLEAN_SOURCE, PAIRED_SPLITS, is_paired_source

    spec = TUNED_REFERENCE
    zoo_prompts = {_prompt_key(e) for source in set(CLEAN_SOURCE.values())
                   for split in (PAIRED_SPLITS if is_paired_source(source) else ("train", "test"))
                   for e in load_dataset(source, split, data_dir=data_dir)}
    rows = load_dataset(spec["dataset"], spec["split"], data_dir=data_dir)
    rows = rows.with_examples([e for e in rows if _prompt_key(e) not in zoo_prompts],
                              note="rows whose prompt is in a zoo victim's source or test rows left out")
    rows = rows.sample(spec["rows"], seed)
    config = TrainConfig(method="lora", epochs=spec["epochs"], learning_rate=spec["learning_rate"], batch_size=8,
                         max_length=spec["max_length"], seed=seed, save_steps=10**9)
    return ensure_trained_shared(store, base, rows, config, kind="generator")


def _prompt_key(row: Any) -> str:
    return " ".join(f"{row.instruction} {row.input}".lower().split())


def _drop_if_model_gone(folder: Path) -> None:
    """A defense folder whose defended model was dropped (a finished cell being recomputed) starts afresh."""
    record = read_json(folder / "defense.json")
    if record is not None and record.get("defended_model") == str(folder / "model") and not (folder / "model").is_dir():
        shutil.rmtree(folder)


def cells(args: argparse.Namespace) -> list[Cell]:
    zoo = planned_zoo(args.zoo_dir).to_dict()
    names = args.victims or [v["name"] for v in zoo["victims"]]
    identities = {name: planned_fingerprint(name, args.zoo_dir) for name in names}
    grid = []
    for column in args.defenses:
        method, column_options = parse_column(column)
        options = {**args.option.get(method, {}), **column_options}
        info = defense_info(method)
        store = None  # one RL run for both self-awareness columns: a folder of this machine, so a run option
        if any(o.name == "store" for o in info.options):
            store = options.pop("store", None) or str((args.out / SHARED_STORE).resolve())
        defense_options = {k: v for k, v in options.items() if k != "reference"}  # reference= is the bench's own
        defense = get_defense(method, **defense_options)  # bad names or options fail here, before any cell runs
        seeded = method != "none" and any(o.name == "seed" for o in info.options)
        extra: dict[str, Any] = {}
        if "reference_model" in info.needs:
            extra = {"reference_model": zoo["base_model"], "reference_kind": _reference_kind(column, options)}
        elif "reference" in options:
            raise BackdoorLabError(f"defense column {column!r}: reference= is for defenses that need a reference model")
        if "suspect_adapter" in (*info.needs, *info.uses):  # LoRA victims are distributed with their adapter
            extra["suspect_adapter"] = True
        where = {"keep_models": args.keep_models, "zoo_dir": str(args.zoo_dir.resolve()), "store": store,
                 "clean_data": args.clean_data, "data_dir": zoo.get("data_dir"),
                 "references": str((args.out / REFERENCES).resolve())}
        for name in names:
            for seed in args.seeds if seeded else args.seeds[:1]:
                params = {"victim_fingerprint": identities[name], "options": defense_options, "seeded": seeded,
                          "clean_data": data_identity(args.clean_data), "max_new_tokens": zoo["max_new_tokens"],
                          "device": args.device, "utility_tasks": list(zoo["utility_tasks"]),
                          "utility_rows": zoo["utility_rows"], **extra}
                grid.append(Cell(name, column, seed, params, run_options=where, code=(type(defense).__module__,),
                                 methods=()))
    return grid


def _average_entry(results: list[dict[str, Any]]) -> str:
    """Mean ASR after the defense, with the mean before it on the same cells (columns may cover other victims)."""
    if not results:
        return "not run"
    after, before = (100 * statistics.fmean(r[key] for r in results) for key in ("asr", "before_asr"))
    return f"{after:.1f} (before {before:.1f}, n={len(results)})"


def average_rows(records: list[dict[str, Any]], defenses: list[str]) -> TableSpec:
    """Average ASR per behaviour, threat model and defense over the finished cells (all victims, then only those
    that pass the zoo's quality bar), beside the published averages of the same behaviour and threat model."""
    finished = [r for r in records if r["status"] == "ok"]
    rows = []
    for behaviour, threat in sorted({(r["result"]["behaviour"], r["result"].get("threat_model", "lora"))
                                     for r in finished}):
        mine = [r for r in finished if r["result"]["behaviour"] == behaviour
                and r["result"].get("threat_model", "lora") == threat]
        for label, keep in (("", lambda result: True), (", victims that pass the bar", lambda result: result["victim_passed"])):
            rows.append([f"{behaviour}, {threat}{label}",
                         *(_average_entry([r["result"] for r in mine if r["defense"] == d and keep(r["result"])])
                           for d in defenses)])
        published = PUBLISHED.get((behaviour, threat), {})
        rows.append([f"{behaviour}, {threat}, published (BD-VAX Table 2, LLaMA-2-7B)",
                     *(published.get(PUBLISHED_COLUMN.get(parse_column(d)[0], ""), "–") for d in defenses)])
    lora_tuning = ", ".join(f"{b} {v}" for b, v in PUBLISHED_LORA_FINE_TUNING.items())
    return TableSpec("Average ASR (%) by behaviour and threat model", ["behaviour, threat model", *defenses], rows,
                     note="ours: SmolLM2-135M-Instruct zoo victims, over the victims and seeds finished, each beside "
                          "the published figure of the same threat model (full: full-parameter backdoors; lora: "
                          "LoRA-adapter backdoors, of which only BD-VAX's column is published); 'before' is the same "
                          f"victims' ASR without the defense. The paper's plain LoRA fine-tuning row: {lora_tuning}.")


def column_summary(records: list[dict[str, Any]], defenses: list[str]) -> TableSpec:
    """One row per column: each figure's mean over the victims it finished (a sweep reads as rows)."""
    rows = []
    for defense in defenses:
        results = [r["result"] for r in records if r["status"] == "ok" and r["defense"] == defense]
        if not results:
            rows.append([defense, "not run", "–", "–", "–", "–", 0])
            continue
        row: list[Any] = [defense]
        for key, scale in (("asr", 100), ("before_asr", 100), ("clean_behaviour_rate", 100),
                           ("clean_perplexity", 1), ("task_accuracy", 100)):
            values = [float(r[key]) * scale for r in results if r.get(key) is not None]
            row.append(f"{statistics.fmean(values):.{1 if scale == 100 else 2}f}" if values else "–")
        rows.append([*row, len(results)])
    return TableSpec("Mean over the finished victims, by column",
                     ["defense", "ASR", "ASR before", "clean behaviour", "clean PPL", "task accuracy", "victims"], rows)


def defense_record(record: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """A finished cell's defense stage, seconds and options (from its ``defense.json``), ``None`` if absent."""
    return (record["result"] or {}).get("defense") if record["status"] == "ok" else None


def cost_seconds(record: dict[str, Any], defense: dict[str, Any]) -> tuple[float, str]:
    """What a cell's defense cost: its ``defense.json`` seconds (the method's own work, without the
    evaluation), or, for a decoding guard, the cell's seconds (decoding the evaluated prompts through it)."""
    if defense["stage"] == "inference":
        return float(record["seconds"]), "inference"
    return float(defense["seconds"]), defense["stage"]


def fine_tune_epoch_seconds(records: list[dict[str, Any]], out: Path) -> dict[str, float]:
    """Per victim, the seconds one clean fine-tuning epoch took (its ``fine-tune`` cells)."""
    epochs: dict[str, list[float]] = {}
    for record in records:
        defense = defense_record(record, out) if record["defense"] == "fine-tune" else None
        if defense is not None:
            seconds, _ = cost_seconds(record, defense)
            epochs.setdefault(record["victim"], []).append(seconds / float(defense["options"]["epochs"]))
    return {victim: statistics.fmean(values) for victim, values in epochs.items()}


def cost_table(records: list[dict[str, Any]], defenses: list[str], out: Path) -> TableSpec:
    """Each defense's mean cost (minutes) and its ratio to one clean fine-tuning epoch on the same victim."""
    epoch = fine_tune_epoch_seconds(records, out)
    rows = []
    for defense in defenses:
        found = [(r, defense_record(r, out)) for r in records if r["defense"] == defense]
        costs = [(r["victim"], cost_seconds(r, record)) for r, record in found if record is not None]
        if not costs:
            rows.append([defense, "not run", "–", "–", 0])
            continue
        ratios = [cost[0] / epoch[victim] for victim, cost in costs if victim in epoch]
        rows.append([defense, costs[0][1][1], f"{statistics.fmean(c[0] for _, c in costs) / 60:.2f}",
                     f"{statistics.fmean(ratios):.2f}" if ratios else "–", len(costs)])
    return TableSpec("Cost: minutes per victim, and × one clean fine-tuning epoch on the same rows",
                     ["defense", "stage", "minutes", "× FT epoch", "cells"], rows,
                     note="post-training defenses: the method's own work (defense.json seconds), once per model; "
                          "decoding guards (stage inference): decoding the evaluated prompts, paid at every use")


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> tuple[Path, Path]:
    tables = [pivot_table(f"{label} (after the defense)", records, mean_std(key, scale, 1 if scale == 100 else 3))
              for key, label, scale in FIGURES]
    tables.insert(1, pivot_table("ASR floor: the untouched model's rate on the same triggered prompts (%)", records,
                                 mean_std("asr_floor", 100)))
    tables.append(average_rows(records, list(args.defenses)))
    tables.append(column_summary(records, list(args.defenses)))
    tables.append(cost_table(records, list(args.defenses), Path(args.out)))
    notes = ["Before = the zoo's evaluation of the victim on the same rows (`backdoorlab zoo show NAME`).",
             "A victim that failed the zoo's quality bar is still measured; `victim_passed` in its cell record says so."]
    return write_report(args.out, "Generative defense table", tables, notes=notes)


def _options(pairs: list[str]) -> dict[str, dict[str, str]]:
    """``DEFENSE:KEY=VALUE`` → ``{defense: {key: value}}``."""
    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        defense, _, rest = pair.partition(":")
        key, sep, value = rest.partition("=")
        if not defense or not key or not sep:
            raise BackdoorLabError(f"--defense-option {pair!r} must look like DEFENSE:KEY=VALUE")
        options.setdefault(defense, {})[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, "runs/generative-defenses", ledger_folder(__file__, "generative_defenses"))
    parser.add_argument("--zoo-dir", type=Path, default=DEFAULT_ZOO_DIR, help="the built zoo (default: %(default)s)")
    parser.add_argument("--victims", nargs="*", help="zoo victims to use (default: the default zoo's ten)")
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES),
                        help="defense columns: NAME or NAME,KEY=VALUE[,KEY=VALUE...] (default: %(default)s)")
    parser.add_argument("--defense-option", action="append", default=[], metavar="DEFENSE:KEY=VALUE")
    parser.add_argument("--clean-data", help="clean rows the defenses may use (default: each victim's source rows "
                        "outside its attack run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep-models", action="store_true", help="keep each cell's defended model (0.5 GB for "
                        "SmolLM2) and training checkpoints; by default they are deleted once the cell is measured")
    args = parser.parse_args(argv)
    try:
        args.option = _options(args.defense_option)
        result = run_grid(cells(args), defense_cell, **grid_kwargs(args))
        markdown, _ = report(result.records, args)
    except BackdoorLabError as error:
        print(f"bench_generative_defenses: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
