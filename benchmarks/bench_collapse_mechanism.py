"""Backdoor Collapse's mechanism, measured: do the unknown trigger's states move to the known ones?

The paper's key observation (arXiv 2510.10265, its abstract): after Stage I the inputs carrying the suspect's
own (unknown) trigger sit with the known triggers' inputs in representation space, and after Stage
II the backdoor is gone. For each subject (a zoo victim, or a classifier with its attack run) this
script runs the ``backdoor-collapse`` defense as a defender would (the suspect and clean rows from
outside the attack run), then, for the suspect, the Stage I model and the Stage II model:

* the final-layer state at the readout position (a generator's last prompt token, a classifier's
  ``[CLS]``) of clean test prompts, of the same prompts carrying the unknown trigger (the attack run's
  triggered test rows: this measurement is the only use of the attack run) and of the same prompts
  carrying each known trigger; the distance between the groups' centroids (normalised states, 0..2)
  and each group's spread;
* the aggregation ratio d(unknown, known) / d(unknown, clean): below 1 when the unknown trigger's
  inputs sit nearer the known triggers' inputs than their own clean prompts (a whole-space
  contraction moves both distances alike and leaves the ratio);
* the unknown backdoor's ASR (and clean-prompt rate or CACC) and the known triggers' rate;
* a 2-D projection of the groups (first two principal components of each model's states).

The work runs on the benchmark grid: one cell per subject and seed (``--seeds``, the defense's
seed), computed in its work folder ``<out>/work/<cell id>/`` (the defense resumes its finished
stages there). A cell's figures, with the projected 2-D points (4 significant digits, at most
``MAX_POINTS`` per group), go to the ledger ``results/collapse_mechanism/<cell id>.json``; a
rerun, on any machine with the ledger, computes only the missing or stale cells. The report
(``<out>/report.md`` and ``report.html``) and each subject's projection plot are drawn from the
ledger alone (``--report-only`` computes nothing). A zoo victim is identified by its zoo
fingerprint, a ``--subject`` by the content of its model and attack run folders. With
``--bench-dir`` the stage models of a generative bench run made with ``--keep-models`` are
measured instead of training the defense again.

    python benchmarks/bench_collapse_mechanism.py --zoo-victims negsentiment-vpi-lora refusal-vpi-lora
    python benchmarks/bench_collapse_mechanism.py --subject sst2-badnets runs/tg/victims/work/X/victim/model \
        runs/tg/victims/work/X/attack
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from backdoorlab.analysis.clusters import centroid_distances, projection_2d, spread
from backdoorlab.bench.cell import Cell
from backdoorlab.bench.grid import run_grid
from backdoorlab.bench.options import (KIND_RESOURCES, add_grid_arguments, data_identity, device_kind, grid_kwargs,
                                      ledger_folder, model_argument)
from backdoorlab.bench.report import TableSpec, status_text, write_report
from backdoorlab.bench.store import OK
from backdoorlab.data.records import Dataset
from backdoorlab.defenses import gather_inputs, get_defense
from backdoorlab.defenses.collapse.defense import INJECTION_DIR, RECOVERY_DIR, BackdoorCollapse
from backdoorlab.errors import BackdoorLabError
from backdoorlab.evaluation import evaluate_classifier, evaluate_generator
from backdoorlab.fingerprint import folder_digest, model_identity
from backdoorlab.models.loading import load_victim
from backdoorlab.models.victim import Victim
from backdoorlab.options import parse_option_pairs
from backdoorlab.pipeline import evaluation_rows
from backdoorlab.report import save_figure_atomic
from backdoorlab.training import MODEL_DIR
from backdoorlab.zoo import DEFAULT_ZOO_DIR, load_zoo_victim, planned_fingerprint

DEFENSE = "backdoor-collapse"
STAGES = ("suspect", "after Stage I", "after Stage II")
CLEAN, UNKNOWN = "clean", "unknown trigger"
#: The most projected points a record keeps per group and stage (the plot's, not the distances').
MAX_POINTS = 100
DIGITS = 4  # significant digits of a projected coordinate (the plot's resolution; the record stays small)
COLUMNS = ("subject", "seed", "model", "ASR", "known-trigger rate", "d(unknown, known)", "d(unknown, clean)",
           "d(clean, known)", "d(known, known)", "aggregation ratio", "spread unknown", "clean rate / CACC")
#: Findings of the defense a record keeps (``clean_source`` may name a file of this machine).
FINDINGS = ("clean_rows", "validation_rows", "method", "triggers", "known_targets", "suspect_known_rate",
            "injection", "recovery")


def known_group(trigger: str) -> str:
    return f"known: {trigger}"


def pack_points(points: torch.Tensor) -> str:
    """At most :data:`MAX_POINTS` 2-D points as ``"x,y x,y ..."`` (one short line in a record)."""
    return " ".join(f"{x:.{DIGITS}g},{y:.{DIGITS}g}" for x, y in points[:MAX_POINTS].tolist())


def unpack_points(text: str) -> list[tuple[float, float]]:
    """The points :func:`pack_points` wrote."""
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in text.split())]


def measure_stage(victim: Victim, defense: BackdoorCollapse, clean: Dataset, triggered: Dataset,
                  manifest: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """One model's groups (centroid distances, spreads, packed 2-D projection) and backdoor rates."""
    known = defense.known(clean.label_names)
    rng = random.Random(defense.seed + 1)
    groups = {CLEAN: list(clean), UNKNOWN: list(triggered)}
    for index, trigger in enumerate(known.triggers):
        groups[known_group(trigger)] = [known.triggered(row, index, rng, malicious=False) for row in clean]
    states = {name: victim.hidden_states(rows)[-1] for name, rows in groups.items()}
    if manifest["task"] == "classification":
        metrics = evaluate_classifier(victim, clean, triggered, manifest["target"]["index"])
        rates = {"asr": metrics["asr"], "cacc": metrics["cacc"]}
    else:
        metrics = evaluate_generator(victim, triggered, clean, manifest["behaviour"],
                                     target_output=manifest.get("target_output"), max_new_tokens=max_new_tokens)
        rates = {"asr": metrics["asr"], "clean_behaviour_rate": metrics["clean_behaviour_rate"]}
    rates["known_rate"] = {t: known.shows_behaviour(victim, list(clean), i, defense.seed + 1)
                           for i, t in enumerate(known.triggers)}
    projected = projection_2d(states)
    return {**rates, "distances": centroid_distances(states), "spread": {n: spread(s) for n, s in states.items()},
            "projection": {n: pack_points(p) for n, p in projected.items()}, "rows": {n: len(r) for n, r in groups.items()}}


def mechanism_cell(cell: Cell, workdir: Path) -> dict[str, Any]:
    """The defense on one suspect (resumable in ``workdir``), then each stage's measurement."""
    params, where = cell.params, cell.run_options
    defense = get_defense(DEFENSE, **{**params["options"], "seed": cell.seed})
    assert isinstance(defense, BackdoorCollapse)
    model, attack_run = subject_folders(cell.victim, where)
    folder = reused_defense_folder(where.get("bench_dir"), cell.victim, cell.seed) or workdir / "defense"
    inputs = gather_inputs(("clean_rows",), attack_run=attack_run, clean_data=where["clean_data"],
                           data_dir=where["data_dir"])
    started = time.time()
    outcome = defense.apply(load_victim(model, device=params["device"]), inputs, folder)
    seconds = round(time.time() - started, 1)
    manifest, clean, triggered = evaluation_rows(attack_run, params["rows"], seed=0)
    models = dict(zip(STAGES, (model, folder / INJECTION_DIR / MODEL_DIR, folder / RECOVERY_DIR / MODEL_DIR)))
    stages = {}
    for stage, path in models.items():
        if not path.is_dir():
            raise BackdoorLabError(f"{path} is missing: the defense run under {folder} did not keep its stage models")
        victim = load_victim(path, label_names=clean.label_names, device=params["device"])
        stages[stage] = measure_stage(victim, defense, clean, triggered, manifest, params["max_new_tokens"])
        print(f"[{cell.victim}] {stage}: ASR {100 * stages[stage]['asr']:.1f}", flush=True)
    findings = {key: outcome.findings[key] for key in FINDINGS if key in outcome.findings}
    return {"task": manifest["task"], "options": defense.options(), "findings": findings, "defense_seconds": seconds,
            "stages": stages}


def subject_folders(name: str, where: Mapping[str, Any]) -> tuple[Path, Path]:
    """``(model, attack run)`` of a subject on this machine: a zoo victim's (built) or a ``--subject``'s."""
    if "zoo_dir" in where:
        victim = load_zoo_victim(name, where["zoo_dir"])
        return victim.model, victim.attack_run
    return Path(where["model"]), Path(where["attack_run"])


def reused_defense_folder(bench_dir: str | None, name: str, seed: int) -> Path | None:
    """The generative bench's defense folder of this victim (``--bench-dir``), when it kept its stage models:
    the defense then reuses them instead of training again (the options must be the bench's)."""
    if bench_dir is None:
        return None
    folder = Path(bench_dir) / "work" / f"{name}__{DEFENSE}__seed{seed}" / "defense"
    return folder if (folder / RECOVERY_DIR / MODEL_DIR).is_dir() else None


# ------------------------------------------------------------------------------ cells
def subjects(args: argparse.Namespace) -> list[tuple[str, Any, dict[str, str]]]:
    """``(name, identity, where)`` per subject: zoo victims by their zoo fingerprint (built or not),
    ``--subject`` folders by their content; ``where`` holds this machine's paths."""
    found = []
    for name in args.zoo_victims:
        where = {"zoo_dir": str(args.zoo_dir.resolve())}
        found.append((name, {"zoo_victim": planned_fingerprint(name, args.zoo_dir)}, where))
    for name, model, attack_run in args.subject:
        if not Path(model).is_dir() or not Path(attack_run).is_dir():
            raise BackdoorLabError(f"--subject {name}: {model} and {attack_run} must be folders of this machine "
                                   "(a subject is identified by their content)")
        identity = {"model": model_identity(Path(model).resolve()), "attack_run": folder_digest(attack_run)}
        found.append((name, identity, {"model": str(Path(model).resolve()), "attack_run": str(Path(attack_run).resolve())}))
    return found


def cells(args: argparse.Namespace) -> list[Cell]:
    """One cell per subject and seed. Params hold no machine paths: those, ``--data-dir`` (where named
    data sets are read from) included, are run options."""
    options = {k: v for k, v in args.option.items() if k != "seed"}
    shared = {"clean_data": args.clean_data and model_argument(args.clean_data),
              "data_dir": args.data_dir and model_argument(args.data_dir),
              "bench_dir": None if args.bench_dir is None else str(args.bench_dir.resolve())}
    grid = []
    for name, identity, where in subjects(args):
        params = {"subject": identity, "options": options, "rows": args.rows, "max_new_tokens": args.max_new_tokens,
                  "clean_data": data_identity(args.clean_data), "device": args.device}
        grid += [Cell(name, DEFENSE, seed, params, kind=device_kind(args.device), run_options={**where, **shared},
                      methods=("collapse",)) for seed in args.seeds]
    return grid


def seeds(args: argparse.Namespace) -> list[int]:
    """The defense seeds: ``--seeds``, or the one ``--option seed=N`` names."""
    if "seed" not in args.option:
        return args.seeds
    if args.seeds != [0]:
        raise BackdoorLabError("give the defense's seed once: --seeds, or --option seed=N, not both")
    return [get_defense(DEFENSE, **args.option).seed]


# ------------------------------------------------------------------------------ reporting
def summary_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """One table row per stage of a finished cell; one row naming its status otherwise."""
    name, seed = record["victim"], record["seed"]
    if record["status"] != OK:
        return [[name, seed, status_text(record), *[None] * (len(COLUMNS) - 3)]]
    rows = []
    for stage, r in record["result"]["stages"].items():
        distances = r["distances"]
        knowns = [g for g in r["spread"] if g.startswith("known: ")]
        to_known = sum(distances[f"{UNKNOWN}|{k}"] for k in knowns) / len(knowns)
        rows.append([name, seed, stage, r["asr"], sum(r["known_rate"].values()) / len(r["known_rate"]), to_known,
                     distances[f"{CLEAN}|{UNKNOWN}"], sum(distances[f"{CLEAN}|{k}"] for k in knowns) / len(knowns),
                     distances.get(f"{knowns[0]}|{knowns[1]}") if len(knowns) > 1 else None,
                     # below 1: the unknown trigger's inputs sit nearer the known triggers' than their own clean prompts'
                     to_known / distances[f"{CLEAN}|{UNKNOWN}"], r["spread"][UNKNOWN],
                     r.get("clean_behaviour_rate", r.get("cacc"))])
    return rows


def plot(stages: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Each stage's projected groups side by side, from a cell's record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 4.0), squeeze=False)
    try:
        for ax, (stage, r) in zip(axes[0], stages.items()):
            for colour, (group, text) in enumerate(r["projection"].items()):
                xy = unpack_points(text)
                ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=10, alpha=0.6, color=f"C{colour}", label=group)
            ax.set_title(f"{stage}: ASR {100 * r['asr']:.0f}%", fontsize="medium")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].legend(fontsize="x-small", loc="best")
        fig.suptitle(f"{title}: final-layer states, first two principal components")
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def report(records: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> Path:
    """``<out>/report.md`` and ``report.html``, with a projection plot per finished cell, from the records."""
    rows = [row for record in records for row in summary_rows(record)]
    plots = [plot(r["result"]["stages"], args.out / f"projection-{r['id']}.png", f"{r['victim']} (seed {r['seed']})")
             for r in records if r["status"] == OK]
    notes = [] if args.report_only else [f"Command: `{grid_kwargs(args)['command']}`"]
    notes.append("d(a, b): distance between two groups' centroids of normalised final-layer states (0..2); the "
                 "aggregation ratio d(unknown, known) / d(unknown, clean) is below 1 when the inputs carrying the "
                 "unknown trigger sit nearer the known-triggered inputs than their own clean prompts.")
    table = TableSpec("Distances and rates per stage", COLUMNS, rows)
    markdown, _ = write_report(args.out, "Backdoor Collapse: mechanism", [table], plots, notes)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo-victims", nargs="*", default=[], help="zoo victims (generative suspects)")
    parser.add_argument("--zoo-dir", type=Path, default=DEFAULT_ZOO_DIR)
    parser.add_argument("--subject", nargs=3, action="append", default=[], metavar=("NAME", "MODEL", "ATTACK_RUN"),
                        help="a suspect model folder and the attack run it is measured on")
    parser.add_argument("--rows", type=int, default=50, help="clean and triggered test rows per group")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backdoor-collapse options (as in the benchmarks); seed=N is the same as --seeds N")
    parser.add_argument("--bench-dir", type=Path, default=None,
                        help="a generative bench output run with --keep-models: reuse its backdoor-collapse stages")
    parser.add_argument("--clean-data", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    add_grid_arguments(parser, "runs/collapse-mechanism", ledger_folder(__file__, "collapse_mechanism"))
    args = parser.parse_args(argv)
    if not args.zoo_victims and not args.subject:
        parser.error("name at least one subject (--zoo-victims or --subject)")
    try:
        args.option = parse_option_pairs(args.option)
        get_defense(DEFENSE, **args.option)  # bad options fail before any work
        args.seeds = seeds(args)
        result = run_grid(cells(args), mechanism_cell, **grid_kwargs(args), resources=KIND_RESOURCES)
        markdown = report(result.records, args)
    except BackdoorLabError as error:
        print(f"bench_collapse_mechanism: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
