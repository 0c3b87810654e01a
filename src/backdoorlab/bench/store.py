"""The results store of a grid: one JSON record per cell in ``<out>/cells/<cell id>.json``.

A record holds the cell (victim, defense, seed, params), ``status`` (``ok`` or ``error``), the
error message, the cell function's ``result``, ``seconds``, the host that ran it and a fingerprint
of the cell's identity and the package version. A cell counts as finished only when its record
says ``ok`` and its fingerprint is current; error records are retried by the next run.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..fileio import fresh_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, make_fingerprint, read_if_current
from .cell import Cell

OK, ERROR, NOT_RUN, STALE = "ok", "error", "not run", "stale"
CELLS_FOLDER, WORK_FOLDER = "cells", "work"
WORK_MARKER = ".cell-fingerprint.json"
STAGE = "bench-cell"


class CellStore:
    """Reads and writes the per-cell records under one output folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).expanduser().resolve()  # absolute, so Ray workers find it whatever their folder

    def path(self, cell: Cell) -> Path:
        return self.out / CELLS_FOLDER / f"{cell.id}.json"

    def workdir(self, cell: Cell) -> Path:
        """The cell's own scratch folder (``<out>/work/<cell id>``)."""
        return self.out / WORK_FOLDER / cell.id

    def claim_workdir(self, cell: Cell) -> Path:
        """The cell's scratch folder, emptied first when it holds work of the same cell id computed
        with other params or another package version (so nothing stale is resumed), and marked with
        the cell's fingerprint; work of the same fingerprint (an interrupted cell) is kept."""
        folder = self.workdir(cell)
        marker = folder / WORK_MARKER
        expected = self.fingerprint(cell)
        if folder.is_dir() and read_if_current(marker, expected) is None:
            fresh_directory(folder)
        if not marker.is_file():
            write_json_atomic(marker, {FINGERPRINT_KEY: expected})
        return folder

    @staticmethod
    def fingerprint(cell: Cell) -> dict[str, Any]:
        return make_fingerprint(STAGE, **cell.identity())

    def current(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's record if it was computed with the current fingerprint, else ``None``."""
        return read_if_current(self.path(cell), self.fingerprint(cell))

    def finished(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's current record if it finished without error (the grid skips such cells)."""
        record = self.current(cell)
        return record if record is not None and record.get("status") == OK else None

    def lookup(self, cell: Cell) -> dict[str, Any]:
        """What the store knows of a cell: its current record, or a placeholder whose status is
        ``not run`` (no record) or ``stale`` (a record computed with other params or version)."""
        record = self.current(cell)
        if record is not None:
            return record
        status = STALE if self.path(cell).is_file() else NOT_RUN
        return new_record(cell, status=status)

    def save(self, cell: Cell, outcome: dict[str, Any]) -> dict[str, Any]:
        """Write a cell's outcome (from :func:`~backdoorlab.bench.grid.compute_cell`) atomically."""
        record = new_record(cell, **outcome)
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record[FINGERPRINT_KEY] = self.fingerprint(cell)
        write_json_atomic(self.path(cell), record)
        return json.loads(json.dumps(record, default=str))  # as a later read would return it


def new_record(cell: Cell, *, status: str, error: str | None = None, result: dict[str, Any] | None = None,
               seconds: float | None = None, **extra: Any) -> dict[str, Any]:
    """A cell record: id, kind, the cell's identity, and the outcome fields."""
    return {"id": cell.id, **cell.identity(), "kind": cell.kind, "status": status, "error": error,
            "result": result, "seconds": seconds, **extra}
