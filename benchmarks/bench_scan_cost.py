"""What a classifier scan costs, and what the search precision changes: the same scan of one model
with each ``--precisions`` value, timed, with the candidates each found.

The search (word screen, gradient search) is the part the precision touches; the measurement of
every candidate and random phrase stays in the model's own precision, so the rates printed must
agree up to the candidates found.

    python benchmarks/bench_scan_cost.py --model runs/demo/cls-poisoned/model --dataset bbcnews
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from backdoorlab.data import load_dataset
from backdoorlab.models.precision import SEARCH_PRECISIONS, search_dtype
from backdoorlab.options import parse_option_pairs
from backdoorlab.scan import ScanSettings, scan_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a classifier folder (safetensors)")
    parser.add_argument("--dataset", required=True, help="the data set whose test rows are the clean rows")
    parser.add_argument("--rows", type=int, default=200, help="clean rows given to the scan")
    parser.add_argument("--precisions", default="float32,auto", help=f"comma-separated: {', '.join(SEARCH_PRECISIONS)}")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--scan-option", action="append", default=[], metavar="KEY=VALUE",
                        help="another scan setting, the same for every precision")
    args = parser.parse_args(argv)
    options = parse_option_pairs(args.scan_option)
    torch.set_num_threads(args.threads)
    clean = load_dataset(args.dataset, "test").sample(args.rows, 0)
    print(f"{args.model}: {args.rows} clean rows of {args.dataset}, {args.threads} thread(s)")
    for precision in args.precisions.split(","):
        dtype = search_dtype(precision, torch.device("cpu"))
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            record = scan_model(args.model, Path(out), clean=clean, settings=ScanSettings.from_dict({**options, "search_precision": precision}),
                                device="cpu", progress=lambda _line: None)
            seconds = time.perf_counter() - started
        print(f"\nsearch precision {precision} ({str(dtype).removeprefix('torch.')}): {seconds:.0f} s, "
              f"verdict {record['verdict']}")
        for label in record["labels"]:
            found = ", ".join(f"{c['phrase']!r} {c['flip_rate']:.3f}" for c in label["candidates"])
            print(f"  {label['name']}: {found}; random p95 {label['random_phrases']['p95_flip_rate']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
