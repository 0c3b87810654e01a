"""Run a benchmark grid: every cell through one cell function, as Ray tasks or in this process.

Each cell runs as a Ray task (a local Ray started with this machine's cores by default, or the
cluster at ``ray_address``) that reserves its kind's :class:`~backdoorlab.bench.cell.Resources`.
Finished cells are stored one JSON each (:mod:`backdoorlab.bench.store`) as they complete, in the
ledger folder when one is given, and a finished cell with a current fingerprint is skipped, so a
killed grid resumes where it stopped, on this machine or on any other with the committed ledger.
A :class:`~backdoorlab.errors.BackdoorLabError` in a cell is recorded as that cell's error; any
other exception is a bug and stops the grid with its traceback (cells finished so far are kept).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import BackdoorLabError
from .cell import DEFAULT_KIND, Cell, CellFunction, Resources
from .store import ERROR, OK, CellStore

Done = Callable[[Cell, dict[str, Any]], None]


@dataclass
class GridResult:
    """The grid's records in the cells' order, and how many cells were computed or skipped."""

    records: list[dict[str, Any]]
    computed: int
    skipped: int

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == ERROR]


def function_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def limit_threads(threads: int) -> None:
    """Make this process use ``threads`` intra-op threads: for torch if it is loaded (a reused Ray
    worker keeps the thread count of its first task), and through ``OMP_NUM_THREADS`` for later imports."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def compute_cell(cell: Cell, fn: CellFunction, workdir: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Run ``fn`` on one cell in its (created) work folder; the outcome, with a BackdoorLabError as its error.

    ``threads`` (the cores a Ray task reserved) caps the process's intra-op threads first."""
    if threads is not None:
        limit_threads(threads)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    outcome: dict[str, Any] = {"function": function_name(fn)}
    try:
        result = fn(cell, workdir)
    except BackdoorLabError as error:
        return {**outcome, "status": ERROR, "error": str(error) or type(error).__name__,
                "seconds": time.perf_counter() - started}
    if not isinstance(result, Mapping):
        raise TypeError(f"cell function {function_name(fn)} returned {type(result).__name__}, not a dict (cell {cell.id})")
    return {**outcome, "status": OK, "result": dict(result), "seconds": time.perf_counter() - started}


def describe(record: Mapping[str, Any]) -> str:
    """One line for a finished cell."""
    line = f"{record['id']}: {record['status']} in {record['seconds']:.1f} s"
    return f"{line}: {record['error']}" if record["status"] == ERROR else line


def unfinished(cells: Sequence[Cell], fn: CellFunction, out: str | Path,
               results: str | Path | None = None) -> list[Cell]:
    """The cells a :func:`run_grid` with these arguments would compute (no current ``ok`` record)."""
    store = CellStore(out, fn, results)
    return [c for c in cells if store.finished(c) is None]


def run_grid(cells: Sequence[Cell], fn: CellFunction, out: str | Path, *, results: str | Path | None = None,
             command: str | None = None, serial: bool = False,
             ray_address: str | None = None, report_only: bool = False,
             resources: Mapping[str, Resources] | None = None, num_cpus: int | None = None,
             progress: bool = True, refresh: Callable[[Cell], bool] | None = None) -> GridResult:
    """Compute the cells not yet finished and return every cell's record.

    Records go to the ledger folder ``results`` (default ``<out>/cells``), each with ``command``
    (how the grid was started); each cell's scratch files go to ``<out>/work/<cell id>``.
    ``refresh`` picks finished cells to compute again anyway (e.g. a cell whose files later cells
    read, finished on another machine, so its files are not on this one).

    ``serial`` runs cells one after another in this process (no Ray); ``report_only`` computes
    nothing and returns what the store holds (``not run`` / ``stale`` placeholders for the rest).
    ``resources`` maps a cell kind to what its task reserves (the ``cpu`` kind defaults to one
    core); ``num_cpus`` caps a locally started Ray (default: this machine's cores). An already
    initialised Ray session is used as it is and left running.
    """
    cells = list(cells)
    needs = _resources_by_kind(cells, resources or {})
    _check_unique(cells)
    if serial and ray_address:
        raise BackdoorLabError("--serial runs the cells in this process; it cannot be combined with --ray-address")
    store = CellStore(out, fn, results)
    if report_only:
        return GridResult([store.lookup(c) for c in cells], computed=0, skipped=0)
    records = {c.id: None if refresh is not None and refresh(c) else store.finished(c) for c in cells}
    pending = [c for c in cells if records[c.id] is None]
    skipped = len(cells) - len(pending)
    with tqdm(total=len(cells), initial=skipped, desc="grid", unit="cell", disable=not progress) as bar:
        if skipped:
            bar.write(f"{skipped} of {len(cells)} cells already finished in {store.results}; computing {len(pending)}")

        def done(cell: Cell, outcome: dict[str, Any]) -> None:
            records[cell.id] = store.save(cell, outcome, command)
            bar.update(1)
            bar.write(describe(records[cell.id]))

        if serial:
            for cell in pending:
                done(cell, compute_cell(cell, fn, store.claim_workdir(cell)))
        elif pending:
            _run_on_ray(pending, fn, store, needs, ray_address, num_cpus, done)
    return GridResult([records[c.id] for c in cells], computed=len(pending), skipped=skipped)  # type: ignore[misc]


def _resources_by_kind(cells: Sequence[Cell], resources: Mapping[str, Resources]) -> dict[str, Resources]:
    known = {DEFAULT_KIND: Resources(), **resources}
    missing = sorted({c.kind for c in cells} - set(known))
    if missing:
        raise BackdoorLabError(f"no resources given for cell kind(s) {', '.join(missing)}; "
                               f"pass resources={{kind: Resources(num_cpus=..., num_gpus=...)}}")
    return known


def _check_unique(cells: Sequence[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in seen:
            raise BackdoorLabError(f"two grid cells share the id {cell.id!r} ({seen[cell.id]} and {cell}); "
                                   "give them different victim, defense or seed names")
        seen[cell.id] = cell


def _run_on_ray(pending: Sequence[Cell], fn: CellFunction, store: CellStore, needs: Mapping[str, Resources],
                ray_address: str | None, num_cpus: int | None, done: Done) -> None:
    import ray

    with ray_session(ray_address, num_cpus):
        if ray_address is None:
            check_capacity(ray.cluster_resources(), {c.kind: needs[c.kind] for c in pending})
        task = ray.remote(compute_cell)
        refs: dict[Any, Cell] = {}
        for cell in pending:
            need = needs[cell.kind]
            ref = task.options(num_cpus=need.num_cpus, num_gpus=need.num_gpus, name=f"cell {cell.id}").remote(
                cell, fn, str(store.claim_workdir(cell)), max(1, int(need.num_cpus)))
            refs[ref] = cell
        wait_for_each(list(refs), lambda ref: done(refs[ref], ray.get(ref)))


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Ray for the duration of the block: an already initialised session is used as it is and left
    running; otherwise one is started (:func:`_start_ray`) and shut down at the end."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        _start_ray(address, num_cpus)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def wait_for_each(refs: Sequence[Any], on_ready: Callable[[Any], None]) -> None:
    """Call ``on_ready(ref)`` for each Ray object ref as its task finishes; if anything fails (a
    task or ``on_ready``), cancel the tasks still running and re-raise."""
    import ray

    try:
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                on_ready(ref)
    except BaseException:
        for ref in refs:
            with suppress(Exception):  # a finished or already-failed task has nothing to cancel
                ray.cancel(ref)
        raise


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    """Connect to the Ray cluster at ``address``, or start a local Ray with ``num_cpus`` cores
    (default: this machine's)."""
    import ray

    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
        else:
            ray.init(address=address)
    except ConnectionError as error:
        raise BackdoorLabError(f"cannot reach the Ray cluster at {address}: {error}") from None


def check_capacity(available: Mapping[str, float], needs: Mapping[str, Resources]) -> None:
    """Stop with a clear error when one cell asks for more CPUs or GPUs than Ray has (it would wait forever)."""
    for kind, need in needs.items():
        for key, amount in (("CPU", need.num_cpus), ("GPU", need.num_gpus)):
            have = available.get(key, 0.0)
            if amount > have:
                raise BackdoorLabError(f"cells of kind {kind!r} ask for {amount:g} {key}(s) each, but this Ray "
                                       f"has {have:g}; lower the request, or pass --ray-address of a cluster that has them")
