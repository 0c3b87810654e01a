"""The command-line options every benchmark script shares, and their mapping onto :func:`run_grid`."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

from ..fingerprint import file_digest, folder_digest
from .cell import DEFAULT_KIND, Resources

GPU_KIND = "gpu"
#: What the cells of the kinds below reserve (the grid's ``cpu`` kind reserves one core).
KIND_RESOURCES = {GPU_KIND: Resources(num_cpus=1, num_gpus=1)}


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (distinct integers, order kept)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be one or more distinct integers, not {text!r}")
    return seeds


def ledger_folder(script: str | Path, name: str) -> Path:
    """The committed ledger of the benchmark ``name`` whose script is ``script``: ``results/<name>``
    at the repository root (the scripts live in ``benchmarks/``)."""
    return Path(script).resolve().parents[1] / "results" / name


def add_grid_arguments(parser: argparse.ArgumentParser, default_out: str | Path,
                       default_results: str | Path | None = None) -> None:
    """Add ``--out``, ``--results``, ``--seeds``, ``--report-only`` and the exclusive ``--serial`` /
    ``--ray-address``. ``default_results`` is the benchmark's ledger (:func:`ledger_folder`);
    without one, records go to ``<out>/cells``."""
    group = parser.add_argument_group("grid")
    group.add_argument("--out", type=Path, default=Path(default_out),
                       help="folder of the cells' work files and the report (default: %(default)s)")
    group.add_argument("--results", type=Path, default=None if default_results is None else Path(default_results),
                       help="ledger folder of the cell records, committed with the code so that a grid continues "
                            "on any machine (default: %(default)s)")
    group.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds (default: 0)")
    group.add_argument("--report-only", action="store_true",
                       help="compute nothing; report the finished cells and mark the others 'not run'")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--serial", action="store_true", help="run the cells one by one in this process, without Ray")
    where.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="run the cells on this Ray cluster (e.g. 'auto' or 'ray://head:10001'); "
                            "default: start Ray on this machine")


def add_victims_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--victims``: the store of trained models that cells share (:func:`victims_folder`)."""
    parser.add_argument("--victims", type=Path, default=None,
                        help="folder of the trained victims (and the scan's clean twins), shared by every benchmark "
                             "that draws the same one and kept when a cell is run again (default: victims/ beside --out)")


def victims_folder(args: argparse.Namespace) -> Path:
    """``--victims``, by default ``victims/`` beside ``--out`` (``runs/victims`` for every benchmark's default)."""
    return args.victims if args.victims is not None else Path(args.out).parent / "victims"


def grid_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`~backdoorlab.bench.grid.run_grid` given by the shared options."""
    return {"out": args.out, "results": args.results, "serial": args.serial, "ray_address": args.ray_address,
            "report_only": args.report_only, "command": command_line()}


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as a user would type it (script path relative to the
    current folder when it is inside it)."""
    args = list(sys.argv if argv is None else argv)
    if args:
        script = Path(args[0])
        with contextlib.suppress(ValueError):
            args[0] = script.resolve().relative_to(Path.cwd()).as_posix()
    return " ".join(["python", *(shlex.quote(a) for a in args)])


def model_argument(text: str) -> str:
    """A ``--model``-style value: an existing folder becomes absolute (Ray workers may run elsewhere);
    any other text (a packaged name) is kept."""
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def device_kind(device: str) -> str:
    """The cell kind for ``--device``: ``gpu`` for CUDA (``auto`` when this machine has one), else ``cpu``.

    A Ray task that reserves no GPU sees none, so a cell meant to run on one must be of this kind."""
    if device == "auto":
        import torch

        return GPU_KIND if torch.cuda.is_available() else DEFAULT_KIND
    return GPU_KIND if device.startswith("cuda") else DEFAULT_KIND


def data_identity(data: str | Path | None) -> str | None:
    """What identifies a ``--clean-data``-style value in a cell's params: a file's or a folder's
    content digest (a saved dataset, a benchmark data folder: the path is this machine's, so it
    belongs in the cell's run options), or a data set's name."""
    if data is None:
        return None
    path = Path(data).expanduser()
    if path.is_file():
        return f"file:{file_digest(path)}"
    if path.is_dir():
        return f"folder:{folder_digest(path)}"
    return str(data)
