"""Choose a classifier's class weighting on validation rows: train the victim with each
``TrainConfig.class_weighting`` and compare macro-F1 and accuracy on held-out training rows.

For each data set, its training split is shuffled once (seed 0); the first ``--validation`` rows
are the validation rows, and each seed trains on ``--rows`` rows drawn (with that seed) from the
rest, as the BadLLM-TG benchmark's victims are trained (``minilm-l6``, 3 epochs, lr 2e-4, batch
16). The test split is never read. Models are kept under ``--out`` and reused when rerun.

    python benchmarks/validate_class_weighting.py --datasets hsol --seeds 0,1
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

from backdoorlab.bench.options import model_argument
from backdoorlab.data import load_dataset
from backdoorlab.metrics import clean_accuracy, macro_f1
from backdoorlab.models.loading import load_victim
from backdoorlab.pipeline import ensure_trained
from backdoorlab.training import CLASS_WEIGHTINGS, TrainConfig


def split(dataset: str, validation: int, rows: int, seed: int):  # type: ignore[no-untyped-def]
    """``(training rows, validation rows)``: validation fixed across seeds, training rows drawn with ``seed``."""
    data = load_dataset(dataset, "train")
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    held_out = [data[i] for i in order[:validation]]
    rest = data.with_examples([data[i] for i in order[validation:]], note=f"training split less {validation} "
                              "validation rows")
    return rest.sample(rows, seed), held_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hsol")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--rows", type=int, default=1000, help="training rows per run")
    parser.add_argument("--validation", type=int, default=600, help="validation rows carved from the training split")
    parser.add_argument("--weightings", default=",".join(CLASS_WEIGHTINGS))
    parser.add_argument("--model", type=model_argument, default="minilm-l6")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/validate-class-weighting"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    weightings = [w for w in args.weightings.split(",") if w]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    lines = ["| dataset | weighting | seed | validation macro-F1 | validation accuracy | predicted label shares |",
             "|---|---|---|---|---|---|"]
    for dataset in args.datasets.split(","):
        for seed in seeds:
            train_rows, validation = split(dataset, args.validation, args.rows, seed)
            labels = [e.label for e in validation]
            for weighting in weightings:
                config = TrainConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=16, seed=seed,
                                     device=args.device, save_steps=10**9, class_weighting=weighting)
                model = ensure_trained(args.out / f"{dataset}-{weighting}-seed{seed}", args.model, train_rows, config)
                predictions = load_victim(model, device=args.device).predict(validation, 64)
                f1, accuracy = macro_f1(predictions, labels), clean_accuracy(predictions, labels)
                results.setdefault((dataset, weighting), []).append((f1, accuracy))
                shares = " / ".join(f"{predictions.count(k) / len(predictions):.3f}"
                                    for k in range(train_rows.num_labels))
                lines.append(f"| {dataset} | {weighting} | {seed} | {f1:.4f} | {accuracy:.4f} | {shares} |")
                print(lines[-1], flush=True)
        truth = " / ".join(f"{labels.count(k) / len(labels):.3f}" for k in range(train_rows.num_labels))
        lines.append(f"| {dataset} | (true labels) | | | | {truth} |")
    for (dataset, weighting), scores in results.items():
        lines.append(f"| {dataset} | {weighting} | mean of {len(scores)} | "
                     f"{statistics.fmean(s[0] for s in scores):.4f} | {statistics.fmean(s[1] for s in scores):.4f} | |")
    print(f"\n{args.validation} validation rows from the training split (shuffle seed 0), {args.rows} other "
          f"training rows per seed; {args.model}, {args.epochs:g} epochs, lr {args.lr:g}, batch 16\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
