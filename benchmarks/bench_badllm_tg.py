"""BadLLM-TG benchmark: the paper's Table 1 on our models, the poison-rate sweep, and target-label
identification accuracy.

Table 1: SST-2, HSOL and AG News × Wordbkd (``badnets``), Sentbkd (``addsent``), Stylebkd
(``stylebkd``, Bible style) and Synbkd (``synbkd``) × {No defense, ONION, RAP, MuScleLoRA, BadActs,
BadLLM-TG}, poison rate 20%, target label 1, victim ``minilm-l6`` (any BERT-like classifier by
``--model``). Each cell reports CACC and ASR on the attack run's clean and triggered test rows; the
last row averages over cells. The sweep repeats one dataset × attack at several poison rates.

Sizes are arguments; the defaults fit 2 CPU cores (see docs/benchmarks.md for the figures and the
time they took). Every stage reuses finished outputs under ``--out``, so an interrupted run resumes.

    python benchmarks/bench_badllm_tg.py --out runs/tg
    python benchmarks/bench_badllm_tg.py --out runs/tg --sweep-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from backdoorlab.data import Dataset
from backdoorlab.defenses import get_defense, run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.fileio import write_json_atomic, write_text_atomic
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, run_attack
from backdoorlab.report import format_table
from backdoorlab.training import TrainConfig

DATASETS = ("sst2", "hsol", "agnews")
ATTACKS = {"badnets": "Wordbkd", "addsent": "Sentbkd", "stylebkd": "Stylebkd", "synbkd": "Synbkd"}
DEFENSES = ("none", "onion", "rap", "muscle-lora", "badacts", "badllm-tg")
#: Paper Table 1 averages (arXiv 2603.15692), in percent: ASR per defense, and BadLLM-TG's CACC.
PAPER_AVERAGE_ASR = {"none": 93.29, "onion": 68.62, "rap": 88.33, "muscle-lora": 27.98, "badacts": 51.06,
                     "badllm-tg": 14.29}
PAPER_BADLLM_TG_CACC = 88.62
#: Method labels beyond the registry names: label → (defense name, options).
VARIANTS = {"badllm-tg-faithful": ("badllm-tg", {"variant": "faithful"})}
#: Budget settings for 2 CPU cores (the defenses' own defaults follow their papers).
CPU_BUDGET = {"muscle-lora": {"epochs": 3}, "badacts": {"bound_epochs": 5}, "onion": {"max_clean": 50},
              "badllm-tg": {"iterations": 6}}
#: Test rows per split for the slowest defenses (ONION scores every leave-one-out variant with an LM).
EVAL_ROWS = {"onion": 50}


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


def defense_setup(label: str, overrides: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any], str]:
    """``(defense name, options, stage)`` of a method label; unknown names or options fail before any work."""
    method, options = VARIANTS.get(label, (label, {}))
    options = {**CPU_BUDGET.get(method, {}), **options, **overrides.get(label, {})}
    return method, options, get_defense(method, **options).stage


def victim_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=16, seed=args.seed, device=args.device,
                       save_steps=10**9)


def run_cell(args: argparse.Namespace, dataset: str, attack: str, rate: float, labels: list[str],
             overrides: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One dataset × attack × rate: attack, train the victim, apply every defense; one row per defense.

    With ``--report-only`` nothing is computed: finished results are read, and missing ones are
    marked "not run"."""
    cell = args.out / f"{dataset}-{attack}-{round(rate * 100)}"
    attack_run = cell / "attack"
    if args.report_only:
        return [_finished(cell, dataset, attack, rate, label) for label in labels]
    if not (attack_run / "manifest.json").is_file():
        run_attack(dataset, attack, attack_run, rate=rate, target=args.target, seed=args.seed,
                   max_train=args.train, max_test=args.test)
    victim = ensure_trained(cell / "victim", args.model, Dataset.load(attack_run / "train"), victim_config(args))
    rows = []
    for label in labels:
        method, options, stage = defense_setup(label, overrides)
        model = args.model if stage == "training" else victim
        started = time.time()
        row: dict[str, Any] = {"dataset": dataset, "attack": ATTACKS[attack], "rate": rate, "defense": label}
        eval_rows = min(args.test, EVAL_ROWS.get(label, args.test))  # before and after on the same rows
        baseline = cell / "victim" / ("results.json" if eval_rows == args.test else f"results-{eval_rows}-rows.json")
        ensure_evaluated(victim, attack_run, baseline, device=args.device, max_rows=eval_rows)
        try:
            # RAP's threat model: the defender names the label to protect (the only method given the target)
            run_defense(method, model, attack_run, cell / label, options=options, baseline=baseline,
                        target_label=args.target, max_eval_rows=eval_rows, device=args.device)
        except BackdoorLabError as error:
            print(f"[{cell.name}] {label} failed: {error}", file=sys.stderr)
            rows.append({**row, "error": str(error)})
            continue
        row = _finished(cell, dataset, attack, rate, label)
        print(f"[{cell.name}] {label}: CACC {100 * row['CACC']:.1f} ASR {100 * row['ASR']:.1f} "
              f"({time.time() - started:.0f} s)", flush=True)
        rows.append(row)
    return rows


def _finished(cell: Path, dataset: str, attack: str, rate: float, label: str) -> dict[str, Any]:
    """The result row of a finished defense run (``"not run"`` when it has none)."""
    row: dict[str, Any] = {"dataset": dataset, "attack": ATTACKS[attack], "rate": rate, "defense": label}
    metrics_file, defense_file = cell / label / "metrics.json", cell / label / "defense.json"
    if not metrics_file.is_file():
        return {**row, "error": "not run"}
    after = json.loads(metrics_file.read_text(encoding="utf-8"))["after"]
    record = json.loads(defense_file.read_text(encoding="utf-8"))
    row.update(CACC=after["cacc"], ASR=after["asr"], n_clean=after["n_clean"],
               n_asr=after["n_asr_rows"], seconds=record.get("seconds"))
    identified = (record["findings"].get("target_identification") or {}).get("target")
    if identified is not None:
        row["identified_target"] = identified
        row["true_target"] = json.loads((cell / "attack" / "manifest.json").read_text())["target"]["index"]
        row["trigger"] = " | ".join(record["findings"].get("adversarial_patterns") or
                                    [record["findings"]["trigger"]["description"]])
        row.update(_generator_share(cell / label / "iterations.json"))
    return row


def _generator_share(log_file: Path) -> dict[str, int]:
    """How many scored candidates the generator itself proposed, and how many of those flipped ≥ 80%."""
    if not log_file.is_file():
        return {}
    candidates = [c for it in json.loads(log_file.read_text(encoding="utf-8")) for c in it["candidates"]]
    own = [c for c in candidates if c["pattern"].get("source") == "generator"]
    return {"candidates": len(candidates), "generator_proposals": len(own),
            "generator_working": sum(c["flip_rate"] >= 0.8 for c in own)}


def average_rows(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    averages = []
    for label in labels:
        done = [r for r in rows if r["defense"] == label and "ASR" in r]
        if done:
            averages.append({"dataset": "average", "attack": f"{len(done)} cells", "defense": label,
                             "CACC": sum(r["CACC"] for r in done) / len(done),
                             "ASR": sum(r["ASR"] for r in done) / len(done),
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
    axes[0].legend()
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-badllm-tg"))
    parser.add_argument("--model", default="minilm-l6", help="victim: a packaged name or a BERT-like model folder")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--defenses", default=",".join(DEFENSES),
                        help=f"registry names, or variants: {', '.join(VARIANTS)}")
    parser.add_argument("--defense-option", action="append", default=[], metavar="NAME:KEY=VALUE")
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--target", type=int, default=1)
    parser.add_argument("--train", type=int, default=1000, help="training rows per cell")
    parser.add_argument("--test", type=int, default=100, help="clean and triggered test rows per cell")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--sweep-rates", default="0.1,0.2,0.3,0.4")
    parser.add_argument("--sweep-cell", default="sst2:badnets", help="DATASET:ATTACK of the poison-rate sweep")
    parser.add_argument("--sweep-defenses", default="none,badllm-tg")
    parser.add_argument("--sweep-only", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished results; compute nothing")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = parse_overrides(args.defense_option)
    labels = [d for d in args.defenses.split(",") if d]
    for label in labels + args.sweep_defenses.split(","):
        defense_setup(label, overrides)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["cpu_budget_options"] = CPU_BUDGET

    if not args.sweep_only:
        rows = []
        for dataset in args.datasets.split(","):
            for attack in args.attacks.split(","):
                rows += run_cell(args, dataset, attack, args.rate, labels, overrides)
                write_json_atomic(args.out / "table1.json", {"settings": settings, "rows": rows})
        averages = average_rows(rows, labels)
        identification = identification_summary(rows)
        write_json_atomic(args.out / "table1.json", {"settings": settings, "rows": rows, "average": averages,
                                                     "target_identification": identification})
        columns = ["dataset", "attack", "defense", "CACC", "ASR", "n_clean", "n_asr", "seconds", "error"]
        table = format_table(rows + averages, columns + ["paper ASR"], markdown=True)
        write_text_atomic(args.out / "table1.md", table + "\n")
        print(format_table(rows + averages, columns + ["paper ASR"]))
        print(f"target-label identification: {identification}")
    if not args.no_sweep:
        dataset, _, attack = args.sweep_cell.partition(":")
        sweep_labels = [d for d in args.sweep_defenses.split(",") if d]
        sweep = []
        for rate in (float(r) for r in args.sweep_rates.split(",")):
            sweep += run_cell(args, dataset, attack, rate, sweep_labels, overrides)
            write_json_atomic(args.out / "sweep.json", {"settings": settings, "rows": sweep})
        sweep_plot(sweep, args.out / "sweep.png")
        print(format_table(sweep, ["rate", "defense", "CACC", "ASR", "error"]))
        print(f"target-label identification over the sweep: {identification_summary(sweep)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
