"""The command-line options every benchmark script shares, and their mapping onto :func:`run_grid`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (distinct integers, order kept)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be one or more distinct integers, not {text!r}")
    return seeds


def add_grid_arguments(parser: argparse.ArgumentParser, default_out: str | Path) -> None:
    """Add ``--out``, ``--seeds``, ``--report-only`` and the exclusive ``--serial`` / ``--ray-address``."""
    group = parser.add_argument_group("grid")
    group.add_argument("--out", type=Path, default=Path(default_out), help="output folder (default: %(default)s)")
    group.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds (default: 0)")
    group.add_argument("--report-only", action="store_true",
                       help="compute nothing; report the finished cells and mark the others 'not run'")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--serial", action="store_true", help="run the cells one by one in this process, without Ray")
    where.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="run the cells on this Ray cluster (e.g. 'auto' or 'ray://head:10001'); "
                            "default: start Ray on this machine")


def grid_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`~backdoorlab.bench.grid.run_grid` given by the shared options."""
    return {"out": args.out, "serial": args.serial, "ray_address": args.ray_address, "report_only": args.report_only}
