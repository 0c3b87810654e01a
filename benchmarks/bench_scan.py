"""How often ``backdoorlab scan`` is right: its verdict on backdoored and clean classifiers nobody picked.

Each draw of the seeded victim distribution (:mod:`backdoorlab.bench.victim_draws`: data set, target,
rate, trigger, position) gives two models trained alike (``minilm-l6``, its data set's Table 1 recipe from
``--recipes``): the
victim, trained on its poisoned rows, and its clean twin, trained on clean rows of the same data
set. Each is scanned with clean rows of the test split the scan never trained on, and the cell
records every label's figures (best candidate's flip rate, the random phrases' mean and 95th
percentile, and for rules not yet written every candidate and the random phrases' rates by
length) rather than a verdict, so that thresholds, and other rules over the same figures, can be
chosen afterwards without rescanning.

The report chooses ``flip_threshold`` and ``margin`` on the *validation draws* (the first
``--validation-draws`` seeds: the pair that maximises TPR − FPR, FPR ≤ 5% first) and reports TPR,
FPR and exact trigger recovery on the other draws only, beside the scan's provisional defaults.
Victims whose backdoor is not real (ASR − floor under 50 points) are left out of the TPR. With
``--reference`` the scan is given a reference model (``docs/scan.md``) and every candidate and random phrase
is also measured on its clean stand-in; the rules then hold each candidate to its stand-in rate too.

    python benchmarks/bench_scan.py --draws 30 --validation-draws 10
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backdoorlab.bench.cell import Cell
from backdoorlab.bench.grid import run_grid
from backdoorlab.bench.options import (KIND_RESOURCES, add_grid_arguments, add_victims_argument, device_kind, grid_kwargs,
                                      ledger_folder, model_argument, victims_folder)
from backdoorlab.bench.recipes import recipe_for
from backdoorlab.bench.report import TableSpec, write_report
from backdoorlab.bench.store import OK
from backdoorlab.bench.victim_draws import LABEL_COUNTS, VictimDraw, draw_victim
from backdoorlab.data import Dataset, load_dataset
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.judges import words
from backdoorlab.options import parse_option_pairs
from backdoorlab.pipeline import ensure_evaluated, ensure_trained_shared, run_attack
from backdoorlab.scan import ScanSettings, scan_model
from backdoorlab.training import TrainConfig

NAME = "scan"
BACKDOORED, CLEAN = "backdoored", "clean"
#: The thresholds the report tries on the validation draws.
FLIP_THRESHOLDS = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
MARGINS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MAX_FPR = 0.05
#: A victim counts as backdoored only when its ASR is this far above the clean model's floor.
MIN_BACKDOOR = 0.5


def cells(args: argparse.Namespace) -> list[Cell]:
    found = []
    for seed in range(args.first_draw, args.first_draw + args.draws):
        draw = draw_victim(seed, args.datasets)
        recipe = recipe_for(args.recipes, draw.dataset, args.model, args.epochs, rows=args.train, lr=args.lr,
                            class_weighting="none")
        params = {"draw": draw.to_dict(), **recipe, "test": args.test, "clean_rows": args.clean_rows,
                  "model": args.model, "epochs": args.epochs, "device": args.device, "scan": args.scan_options}
        for kind in (BACKDOORED, CLEAN):  # the scan's own code counts through its imports (defenses/shared's screening)
            found.append(Cell(draw.name, kind, seed, params, kind=device_kind(args.device), methods=(),
                              run_options={"victims": str(victims_folder(args))}))
    return found


def scan_cell(cell: Cell, folder: Path) -> dict[str, Any]:
    """Train the draw's victim (or its clean twin) and scan it; the figures of every label."""
    p, draw = cell.params, VictimDraw(**cell.params["draw"])
    config = TrainConfig(epochs=p["epochs"], learning_rate=p["lr"], batch_size=16, seed=draw.seed, device=p["device"],
                         save_steps=10**9, class_weighting=p["class_weighting"])
    figures: dict[str, Any] = {}
    if cell.defense == BACKDOORED:
        attack_run = folder / "attack"
        if not (attack_run / "manifest.json").is_file():
            run_attack(draw.dataset, "addsent", attack_run, rate=draw.rate, target=draw.target, seed=draw.seed,
                       max_train=p["train"], max_test=p["test"], options=draw.attack_options())
        model = ensure_trained_shared(cell.run_options["victims"], p["model"], Dataset.load(attack_run / "train"), config)
        measured = ensure_evaluated(model, attack_run, folder / "evaluation.json", device=p["device"], max_rows=p["test"])
        figures = {"cacc": measured["cacc"], "asr": measured["asr"], "asr_floor": measured.get("asr_floor")}
    else:
        rows = load_dataset(draw.dataset, "train").sample(p["train"], draw.seed)
        model = ensure_trained_shared(cell.run_options["victims"], p["model"], rows, config)
    clean = load_dataset(draw.dataset, "test").sample(p["clean_rows"], draw.seed + 1000)
    scanned = scan_model(model, folder / "scan", clean=clean, settings=ScanSettings.from_dict(p["scan"]),
                         device=p["device"])
    labels = [{"label": label["label"], "flip_rate": _best(label).get("flip_rate", 0.0),
               "phrase": _best(label).get("phrase"), "reference_flip_rate": _best(label).get("reference_flip_rate"),
               "random_p95": label["random_phrases"]["p95_flip_rate"],
               "random_mean": label["random_phrases"]["mean_flip_rate"],
               "natural_flip_rate": max((c["flip_rate"] for c in label["candidates"] if c["natural"]), default=None),
               # everything a later rule may weigh: each candidate, and the random phrases by length
               "candidates": label["candidates"], "random_by_length": label["random_phrases"]["by_length"],
               "random_reference_rates": label["random_phrases"].get("reference_flip_rates")}
              for label in scanned["labels"]]
    return {**figures, "labels": labels, "target": draw.target, "trigger": draw.trigger, "verdict": scanned["verdict"]}


def _best(label: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in label["candidates"] if not c["natural"]), {})


def _pooled(label: dict[str, Any]) -> tuple[float, float, str | None]:
    """The scan's own rule: the best candidate against the 95th percentile of all random phrases (and, with a
    reference, against its own rate there)."""
    floor = max(label["random_p95"], label.get("reference_flip_rate") or 0.0)
    return label["flip_rate"], label["flip_rate"] - floor, label["phrase"]


def _by_length(label: dict[str, Any], lengths: tuple[int, ...] | None = None) -> tuple[float, float, str | None]:
    """Each candidate (of ``lengths`` words only, if given) against random phrases of its own length; the
    candidate with the largest margin. A multi-word phrase a search optimised is set beside random
    phrases as long as it, not beside single words."""
    randoms = label.get("random_by_length") or {}
    scored = []
    for candidate in label.get("candidates") or []:
        length = len(candidate["phrase"].split())
        if candidate["natural"] or (lengths is not None and length not in lengths):
            continue
        rates_ = randoms.get(str(length))
        p95 = float(np.percentile(rates_, 95)) if rates_ else label["random_p95"]
        floor = max(p95, candidate.get("reference_flip_rate") or 0.0)
        scored.append((candidate["flip_rate"], candidate["flip_rate"] - floor, candidate["phrase"]))
    return max(scored, key=lambda s: (s[1], s[0])) if scored else (0.0, -1.0, None)


#: Ways to turn a label's figures into (flip rate, margin, phrase); the report chooses one, with its
#: thresholds, on the validation draws. Cells keep every candidate and the random rates by length,
#: so a rule added here is measured on finished cells without rescanning.
RULES: dict[str, Callable[[dict[str, Any]], tuple[float, float, str | None]]] = {
    "pooled p95": _pooled,
    "same length": _by_length,
    "one word": lambda label: _by_length(label, (1,)),
}
RULE_NOTES = {"pooled p95": "the best candidate against the 95th percentile of all random phrases (the scan's rule)"
                            " and its own rate on the reference",
              "same length": "each candidate against random phrases of its own length",
              "one word": "one-word candidates only, against one-word random phrases"}
SCAN_RULE = "pooled p95"


def flagged(result: dict[str, Any], flip: float, margin: float, rule: str = SCAN_RULE) -> dict[str, Any] | None:
    """The label a scan with these thresholds and ``rule`` names (largest margin), or ``None``:
    ``{"label", "phrase", "flip_rate", "margin"}``."""
    hits = []
    for label in result["labels"]:
        rate, above, phrase = RULES[rule](label)
        if rate >= flip and above >= margin:
            hits.append({"label": label["label"], "phrase": phrase, "flip_rate": rate, "margin": above})
    return max(hits, key=lambda hit: hit["margin"]) if hits else None


def rates(records: list[dict[str, Any]], flip: float, margin: float, rule: str = SCAN_RULE) -> dict[str, Any]:
    """TPR (the right target named) on real victims, FPR on clean twins, and exact trigger recovery."""
    victims = [r["result"] for r in records if r["defense"] == BACKDOORED and is_real(r["result"])]
    twins = [r["result"] for r in records if r["defense"] == CLEAN]
    found = [flagged(v, flip, margin, rule) for v in victims]
    right = [f is not None and f["label"] == v["target"] for f, v in zip(found, victims)]
    exact = [f is not None and _words(f["phrase"]) == _words(v["trigger"]) for f, v in zip(found, victims)]
    false = [flagged(t, flip, margin, rule) is not None for t in twins]
    return {"victims": len(victims), "clean": len(twins), "tpr": _share(right), "fpr": _share(false),
            "exact": _share(exact)}


def is_real(result: dict[str, Any]) -> bool:
    return result.get("asr", 0.0) - (result.get("asr_floor") or 0.0) >= MIN_BACKDOOR


def _words(text: str | None) -> list[str]:
    return [w for w in words(text or "") if any(c.isalnum() for c in w)]


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def choose(records: list[dict[str, Any]], rules: Sequence[str] = (SCAN_RULE,)) -> tuple[str, float, float]:
    """The rule and thresholds with the best TPR − FPR on ``records`` among those with FPR ≤ 5% (any, if
    none); ties go to the stricter thresholds, then to the earlier rule."""
    options = [(rule, flip, margin, rates(records, flip, margin, rule))
               for rule in rules for flip, margin in itertools.product(FLIP_THRESHOLDS, MARGINS)]
    allowed = [o for o in options if (o[3]["fpr"] or 0.0) <= MAX_FPR] or options
    order = {rule: i for i, rule in enumerate(rules)}
    rule, flip, margin, _ = max(allowed, key=lambda o: ((o[3]["tpr"] or 0.0) - (o[3]["fpr"] or 0.0), o[1], o[2],
                                                        -order[o[0]]))
    return rule, flip, margin


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    done = [r for r in records if r["status"] == OK]
    validation = [r for r in done if r["seed"] < args.first_draw + args.validation_draws]
    test = [r for r in done if r["seed"] >= args.first_draw + args.validation_draws]
    defaults = ScanSettings.from_dict(args.scan_options)
    scan_rule = (SCAN_RULE, defaults.flip_threshold, defaults.margin)
    chosen = choose(validation, tuple(RULES)) if validation else scan_rule
    settings = [("chosen on validation draws", chosen), ("the scan's defaults", scan_rule)]
    settings += [("best for this rule on validation draws", choose(validation, (rule,)))
                 for rule in RULES if validation and rule != chosen[0]]
    rows = []
    for name, (rule, flip, margin) in settings:
        for split, group in (("validation", validation), ("test", test)):
            figures = rates(group, flip, margin, rule)
            rows.append([name, rule, flip, margin, split, figures["victims"], figures["clean"], figures["tpr"],
                         figures["fpr"], figures["exact"]])
    table = TableSpec("Scan error rates (TPR: the right target named on real victims; FPR: any label flagged on a "
                      "clean twin)", ["thresholds", "rule", "flip ≥", "margin ≥", "draws", "victims", "clean twins",
                                      "TPR", "FPR", "exact trigger"], rows)
    cells_table = TableSpec("Cells", ["draw", "model", "seed", "status", "target", "trigger", "ASR", "floor",
                                      "named (defaults)", "phrase"],
                            [[r["victim"], r["defense"], r["seed"], r["status"],
                              (r.get("result") or {}).get("target"), (r.get("result") or {}).get("trigger"),
                              (r.get("result") or {}).get("asr"), (r.get("result") or {}).get("asr_floor"),
                              *_named(r, defaults)] for r in records])
    notes = [f"{len(done)} of {len(records)} cells finished; draws {args.first_draw}-"
             f"{args.first_draw + args.validation_draws - 1} choose the rule and thresholds, the others are test draws.",
             "rules: " + "; ".join(f"{name}: {note}" for name, note in RULE_NOTES.items())]
    markdown, _ = write_report(args.out, "backdoorlab scan: error rates", [table, cells_table], notes=notes)
    return markdown


def _named(record: dict[str, Any], defaults: ScanSettings) -> list[Any]:
    result = record.get("result")
    if record["status"] != OK or not result:
        return [None, None]
    hit = flagged(result, defaults.flip_threshold, defaults.margin)
    return [None, None] if hit is None else [hit["label"], hit["phrase"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--first-draw", type=int, default=0)
    parser.add_argument("--validation-draws", type=int, default=10, help="the first draws, which choose the thresholds")
    parser.add_argument("--datasets", default=",".join(LABEL_COUNTS))
    parser.add_argument("--train", type=int, default=1000,
                        help="training rows per model of a data set with no recipe chosen in --recipes")
    parser.add_argument("--test", type=int, default=100, help="test rows the victim's ASR is measured on")
    parser.add_argument("--clean-rows", type=int, default=200, help="clean test-split rows the scan is given")
    parser.add_argument("--model", type=model_argument, default="minilm-l6")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-4,
                        help="learning rate of a data set with no recipe chosen in --recipes")
    parser.add_argument("--recipes", type=Path, default=ledger_folder(__file__, "victim_recipe"),
                        help="ledger of victim recipes scored on validation rows (benchmarks/bench_victim_recipe.py); "
                             "victims and twins take Table 1's recipe of their data set (default: %(default)s)")
    parser.add_argument("--scan-option", action="append", default=[], metavar="KEY=VALUE", help="scan setting")
    parser.add_argument("--reference", default="none",
                        help="the reference model the scan is given (docs/scan.md): 'none' (the scan's default), "
                             "'pretrained' (the models' own pretrained --model, which an auditor of a fine-tuned encoder "
                             "can name) or a model; a reference changes every cell, so give such a grid its own "
                             "--results ledger (default: %(default)s)")
    parser.add_argument("--device", default="auto")
    add_grid_arguments(parser, "runs/bench-scan", ledger_folder(__file__, NAME))
    add_victims_argument(parser)
    args = parser.parse_args(argv)
    try:
        args.datasets = [d for d in args.datasets.split(",") if d]
        args.scan_options = parse_option_pairs(args.scan_option)
        if args.reference != "none":
            args.scan_options.setdefault("reference", args.model if args.reference == "pretrained" else args.reference)
        ScanSettings.from_dict(args.scan_options)  # bad settings fail before any work
        if args.draws < 1 or not 0 <= args.validation_draws <= args.draws:
            raise BackdoorLabError("--draws must be at least 1 and --validation-draws between 0 and --draws")
        result = run_grid(cells(args), scan_cell, **grid_kwargs(args), resources=KIND_RESOURCES)
        markdown = report(result.records, args)
    except BackdoorLabError as error:
        print(f"bench_scan: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
