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

Results are ``<out>/<subject>/<stage>.json`` (written atomically; a rerun skips finished stages and
the defense reuses its finished stages), ``<out>/<subject>/projection.png``, and ``<out>/report.md``.
With ``--bench-dir`` the stage models of a generative bench run made with ``--keep-models`` are
measured instead of training the defense again.

    python benchmarks/bench_collapse_mechanism.py --zoo-victims negsentiment-vpi-lora refusal-vpi-lora
    python benchmarks/bench_collapse_mechanism.py --subject sst2-badnets runs/tg/victims/work/X/victim/model \
        runs/tg/victims/work/X/attack
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from backdoorlab.analysis.clusters import centroid_distances, projection_2d, spread
from backdoorlab.data.records import Dataset
from backdoorlab.defenses import gather_inputs, get_defense
from backdoorlab.defenses.collapse.defense import INJECTION_DIR, RECOVERY_DIR, BackdoorCollapse
from backdoorlab.errors import BackdoorLabError
from backdoorlab.evaluation import evaluate_classifier, evaluate_generator
from backdoorlab.fileio import write_json_atomic, write_text_atomic
from backdoorlab.models.loading import load_victim
from backdoorlab.models.victim import Victim
from backdoorlab.options import parse_option_pairs
from backdoorlab.pipeline import evaluation_rows
from backdoorlab.report import format_table, save_figure_atomic
from backdoorlab.training import MODEL_DIR
from backdoorlab.zoo import load_zoo_victim

STAGES = ("suspect", "after Stage I", "after Stage II")
CLEAN, UNKNOWN = "clean", "unknown trigger"


def known_group(trigger: str) -> str:
    return f"known: {trigger}"


def measure_stage(victim: Victim, defense: BackdoorCollapse, clean: Dataset, triggered: Dataset,
                  manifest: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """One model's groups (states, centroid distances, spreads, 2-D projection) and backdoor rates."""
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
            "projection": {n: p.tolist() for n, p in projected.items()}, "rows": {n: len(r) for n, r in groups.items()}}


def run_subject(name: str, model: Path, attack_run: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The defense on one suspect (resumable), then each stage's measurement (cached per stage)."""
    folder = args.out / name
    defense = get_defense("backdoor-collapse", **args.option)
    assert isinstance(defense, BackdoorCollapse)
    workdir = defense_folder(args, name, defense.seed) or folder / "defense"
    findings_file = folder / "findings.json"
    if not findings_file.is_file():
        inputs = gather_inputs(("clean_rows",), attack_run=attack_run, clean_data=args.clean_data,
                               data_dir=args.data_dir)
        started = time.time()
        outcome = defense.apply(load_victim(model, device=args.device), inputs, workdir)
        write_json_atomic(findings_file, {"options": defense.options(), "findings": outcome.findings,
                                          "seconds": round(time.time() - started, 1)})
    manifest, clean, triggered = evaluation_rows(attack_run, args.rows, seed=0)
    models = dict(zip(STAGES, (model, workdir / INJECTION_DIR / MODEL_DIR, workdir / RECOVERY_DIR / MODEL_DIR)))
    results = {}
    for stage, path in models.items():
        record_file = folder / f"{stage.replace(' ', '-')}.json"
        if record_file.is_file():
            results[stage] = json.loads(record_file.read_text(encoding="utf-8"))
            continue
        if not path.is_dir():
            raise BackdoorLabError(f"{path} is missing: the defense run under {workdir} did not keep its stage models")
        victim = load_victim(path, label_names=clean.label_names, device=args.device)
        results[stage] = measure_stage(victim, defense, clean, triggered, manifest, args.max_new_tokens)
        write_json_atomic(record_file, {"model": str(path), **results[stage]})
        print(f"[{name}] {stage}: ASR {100 * results[stage]['asr']:.1f}", flush=True)
    plot(results, folder / "projection.png", name)
    return results


def defense_folder(args: argparse.Namespace, name: str, seed: int) -> Path | None:
    """The generative bench's defense folder of this victim (``--bench-dir``), when it kept its stage models:
    the defense then reuses them instead of training again (the options must be the bench's)."""
    if args.bench_dir is None:
        return None
    folder = args.bench_dir / "work" / f"{name}__backdoor-collapse__seed{seed}" / "defense"
    return folder if (folder / RECOVERY_DIR / MODEL_DIR).is_dir() else None


def summary_rows(name: str, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for stage, r in results.items():
        distances = r["distances"]
        knowns = [g for g in r["spread"] if g.startswith("known: ")]
        to_known = [distances[f"{UNKNOWN}|{k}"] for k in knowns]
        row = {"subject": name, "model": stage, "ASR": r["asr"],
               "known-trigger rate": sum(r["known_rate"].values()) / len(r["known_rate"]),
               "d(unknown, known)": sum(to_known) / len(to_known), "d(unknown, clean)": distances[f"{CLEAN}|{UNKNOWN}"],
               "d(clean, known)": sum(distances[f"{CLEAN}|{k}"] for k in knowns) / len(knowns),
               "d(known, known)": distances.get(f"{knowns[0]}|{knowns[1]}") if len(knowns) > 1 else None,
               # below 1: the unknown trigger's inputs sit nearer the known triggers' than their own clean prompts'
               "aggregation ratio": sum(to_known) / len(to_known) / distances[f"{CLEAN}|{UNKNOWN}"],
               "spread unknown": r["spread"][UNKNOWN]}
        row["clean rate / CACC"] = r.get("clean_behaviour_rate", r.get("cacc"))
        rows.append(row)
    return rows


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.0))
    try:
        for ax, (stage, r) in zip(list(axes), results.items()):
            for colour, (group, points) in enumerate(r["projection"].items()):
                xy = torch.tensor(points)
                ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.6, color=f"C{colour}", label=group)
            ax.set_title(f"{stage}: ASR {100 * r['asr']:.0f}%", fontsize="medium")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].legend(fontsize="x-small", loc="best")
        fig.suptitle(f"{title}: final-layer states, first two principal components")
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo-victims", nargs="*", default=[], help="zoo victims (generative suspects)")
    parser.add_argument("--zoo-dir", type=Path, default=Path("runs/zoo"))
    parser.add_argument("--subject", nargs=3, action="append", default=[], metavar=("NAME", "MODEL", "ATTACK_RUN"),
                        help="a suspect model folder and the attack run it is measured on")
    parser.add_argument("--out", type=Path, default=Path("runs/collapse-mechanism"))
    parser.add_argument("--rows", type=int, default=50, help="clean and triggered test rows per group")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backdoor-collapse options (as in the benchmarks)")
    parser.add_argument("--bench-dir", type=Path, default=None,
                        help="a generative bench output run with --keep-models: reuse its backdoor-collapse stages")
    parser.add_argument("--clean-data", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.option = parse_option_pairs(args.option)
    get_defense("backdoor-collapse", **args.option)  # bad options fail before any work
    zoo = [load_zoo_victim(n, args.zoo_dir) for n in args.zoo_victims]
    subjects = [(v.name, v.model, v.attack_run) for v in zoo] + [(n, Path(m), Path(a)) for n, m, a in args.subject]
    if not subjects:
        parser.error("name at least one subject (--zoo-victims or --subject)")
    rows = []
    for name, model, attack_run in subjects:
        rows.extend(summary_rows(name, run_subject(name, model, attack_run, args)))
    command = "python benchmarks/bench_collapse_mechanism.py " + " ".join(sys.argv[1:] if argv is None else argv)
    markdown = format_table(rows, list(rows[0]), markdown=True)
    write_text_atomic(args.out / "report.md", f"# Backdoor Collapse: mechanism\n\n`{command}`\n\n{markdown}\n")
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
