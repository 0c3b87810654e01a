"""Clean utility of an untouched model: zero-shot multiple-choice accuracy on the seven utility sets.

Loads ``smollm2-135m-instruct`` (or ``--model``) without any attack or defense and prints, per
task, the subsample size, chance level, majority-position rate, ``acc`` and ``acc_norm`` (with
standard errors), their unweighted average over tasks and the wall time. ``--out`` also writes
the result as JSON. Definitions: :mod:`backdoorlab.metrics.utility`.

    python benchmarks/bench_utility.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from backdoorlab.data.utility_sets import UTILITY_TASKS
from backdoorlab.fileio import write_json_atomic
from backdoorlab.metrics.utility import DEFAULT_BATCH_SIZE, DEFAULT_MAX_ROWS, evaluate_utility
from backdoorlab.models.loading import load_victim
from backdoorlab.report import format_table


def _percent(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" ± {100 * stderr:.1f}" if stderr is not None else "")


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task plus the average, accuracies in percent (± one standard error)."""
    rows = [{"task": name, "n": r["n"], "chance %": _percent(r["chance"]), "majority %": _percent(r["majority"]),
             "acc %": _percent(r["acc"], r["acc_stderr"]), "acc_norm %": _percent(r["acc_norm"], r["acc_norm_stderr"])}
            for name, r in result["tasks"].items()]
    average = result["average"]
    rows.append({"task": "average", "n": sum(r["n"] for r in result["tasks"].values()),
                 "chance %": _percent(average["chance"]), "majority %": "–",
                 "acc %": _percent(average["acc"]), "acc_norm %": _percent(average["acc_norm"])})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", nargs="+", default=list(UTILITY_TASKS), choices=list(UTILITY_TASKS))
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="questions per task (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="questions per forward pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    victim = load_victim(args.model, device=args.device)
    start = time.perf_counter()
    result = evaluate_utility(victim, args.tasks, max_rows=args.max_rows or None, seed=args.seed,
                              batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    result.update(model=args.model, wall_seconds=round(seconds, 1), threads=torch.get_num_threads())
    print(format_table(table_rows(result), markdown=True))
    print(f"\n{args.model}, {args.max_rows or 'all'} questions per task (seed {args.seed}), "
          f"batch {args.batch_size}, {torch.get_num_threads()} torch thread(s): {seconds:.0f} s of scoring")
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
