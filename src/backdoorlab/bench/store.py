"""The results store of a grid: one small JSON record per cell, and a scratch folder per cell.

Records live in the *ledger* folder (``results/<benchmark>/<cell id>.json`` in the repository for
the shipped benchmarks, ``<out>/cells/`` when no ledger is given) and scratch work under
``<out>/work/<cell id>/``. A record holds the cell (victim, defense, seed, params), ``status``
(``ok`` or ``error``), the error message, the cell function's ``result``, ``seconds`` and
``minutes``, the command and the core count of the machine that ran it, and the fingerprint: the
cell's identity plus the digest of the code it runs (:mod:`backdoorlab.codeversion`): the top-level
statements its cell function (``script.py::function``) and the modules it names can run, so editing
a benchmark's tables or command line, or a shared module's functions that the cell never calls,
leaves its records current. Records written by the digest's earlier forms (every imported file
hashed whole; the whole script; the methods' registry imports counted) stay current while the code
those forms covered is unchanged, and reading such a record rewrites its fingerprint in the current
form (the code being the same, so is the result), so that later edits are judged by the current
form; a cell's scratch folder is resumed only under the current form. A cell counts
as finished only when its record says ``ok`` and its fingerprint is current, so a grid started on a
fresh clone computes exactly the cells the committed ledger lacks or that a code change made stale.
Models, checkpoints and generations stay in the scratch folder: a record over
:data:`MAX_RECORD_BYTES` is refused.
"""

from __future__ import annotations

import inspect
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..codeversion import CODE_FORMS, CURRENT_FORM, ENTRY_SEPARATOR
from ..errors import BackdoorLabError
from ..fileio import fresh_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, make_fingerprint, read_if_current
from .cell import Cell, CellFunction

OK, ERROR, NOT_RUN, STALE = "ok", "error", "not run", "stale"
CELLS_FOLDER, WORK_FOLDER = "cells", "work"
WORK_MARKER = ".cell-fingerprint.json"
STAGE = "bench-cell"
#: The fingerprint forms a record may have been written in, newest first: (whole script hashed, code digest form).
RECORD_FORMS = ((False, CURRENT_FORM), *((False, form) for form in CODE_FORMS[1:]), (True, CODE_FORMS[-1]))
#: The record field that says when a record's fingerprint was rewritten in the current form.
REFINGERPRINTED = "fingerprint_rewritten_at"
#: The largest record the ledger takes (results are figures, not artifacts).
MAX_RECORD_BYTES = 64 * 1024


def function_file(fn: CellFunction) -> Path:
    """The source file that defines a cell function (its code is part of every cell's fingerprint)."""
    try:
        source = inspect.getsourcefile(fn)  # type: ignore[arg-type]
    except TypeError:
        source = None
    if source is None:
        raise BackdoorLabError(f"cannot find the source file of cell function {fn!r}; define it in a module or script")
    return Path(source).resolve()


class CellStore:
    """Reads and writes the records of one grid (in ``results``) and the cells' scratch folders (in ``out``)."""

    def __init__(self, out: str | Path, fn: CellFunction, results: str | Path | None = None) -> None:
        self.out = Path(out).expanduser().resolve()  # absolute, so Ray workers find it whatever their folder
        self.results = Path(results).expanduser().resolve() if results is not None else self.out / CELLS_FOLDER
        self.script = function_file(fn)
        self.entry = f"{self.script}{ENTRY_SEPARATOR}{fn.__name__}"
        self._fingerprints: dict[tuple[str, bool, str], dict[str, Any]] = {}

    def path(self, cell: Cell) -> Path:
        return self.results / f"{cell.id}.json"

    def workdir(self, cell: Cell) -> Path:
        """The cell's own scratch folder (``<out>/work/<cell id>``)."""
        return self.out / WORK_FOLDER / cell.id

    def claim_workdir(self, cell: Cell) -> Path:
        """The cell's scratch folder, emptied first when it holds work of the same cell id computed
        with other params or other code (so nothing stale is resumed), and marked with the cell's
        fingerprint; work of the same fingerprint (an interrupted cell) is kept."""
        folder = self.workdir(cell)
        marker = folder / WORK_MARKER
        expected = self.fingerprint(cell)
        if folder.is_dir() and read_if_current(marker, expected) is None:
            fresh_directory(folder)
        if not marker.is_file():
            write_json_atomic(marker, {FINGERPRINT_KEY: expected})
        return folder

    def fingerprint(self, cell: Cell) -> dict[str, Any]:
        """The cell's identity and the digest of its code: the cell function's script, the modules
        it names and what they import (:mod:`backdoorlab.codeversion`). Computed once per store, when
        the grid starts, so a record names the code that was loaded, not files edited meanwhile."""
        return self._fingerprint(cell, whole_script=False, form=CURRENT_FORM)

    def _fingerprint(self, cell: Cell, *, whole_script: bool, form: str) -> dict[str, Any]:
        key = (json.dumps([cell.id, cell.identity(), cell.code, cell.methods], sort_keys=True, default=str),
               whole_script, form)
        if key not in self._fingerprints:
            script = self.script if whole_script else self.entry
            self._fingerprints[key] = make_fingerprint(STAGE, code=[script, *cell.code], methods=cell.methods,
                                                       code_form=form, **cell.identity())
        return self._fingerprints[key]

    def _read_current(self, path: Path, cell: Cell) -> dict[str, Any] | None:
        """The record at ``path`` if its fingerprint is the cell's in the current form or an earlier
        one; a record found under an earlier form is rewritten in the current one."""
        for whole_script, form in RECORD_FORMS:
            found = read_if_current(path, self._fingerprint(cell, whole_script=whole_script, form=form))
            if found is None:
                continue
            if (whole_script, form) != RECORD_FORMS[0]:
                found[FINGERPRINT_KEY] = self.fingerprint(cell)
                found[REFINGERPRINTED] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                try:
                    write_json_atomic(path, found)
                except OSError:
                    pass  # a read-only ledger: the record is current all the same, and is rewritten later
            return found
        return None

    def current(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's record if it was computed with the current fingerprint, else ``None``."""
        return self._read_current(self.path(cell), cell)

    def finished(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's current record if it finished without error (the grid skips such cells)."""
        record = self.current(cell)
        return record if record is not None and record.get("status") == OK else None

    def lookup(self, cell: Cell) -> dict[str, Any]:
        """What the store knows of a cell: its current record, or a placeholder whose status is
        ``not run`` (no record) or ``stale`` (a record computed with other params or code)."""
        record = self.current(cell)
        if record is not None:
            return record
        status = STALE if self.path(cell).is_file() else NOT_RUN
        return new_record(cell, status=status)

    def save(self, cell: Cell, outcome: dict[str, Any], command: str | None = None) -> dict[str, Any]:
        """Write a cell's outcome (from :func:`~backdoorlab.bench.grid.compute_cell`) atomically."""
        record = new_record(cell, **outcome)
        seconds = record.get("seconds")
        record.update(minutes=None if seconds is None else round(seconds / 60, 2), command=command,
                      cpus=os.cpu_count(),
                      finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        record[FINGERPRINT_KEY] = self.fingerprint(cell)
        text = json.dumps(record, indent=2, sort_keys=False, default=str)
        if len(text.encode("utf-8")) > MAX_RECORD_BYTES:
            raise BackdoorLabError(f"cell {cell.id}'s record is {len(text.encode('utf-8')) // 1024} KB, over the "
                                   f"ledger's {MAX_RECORD_BYTES // 1024} KB: return figures from the cell function "
                                   "and keep models, generations and other large outputs in its work folder")
        write_json_atomic(self.path(cell), record)
        return json.loads(json.dumps(record, default=str))  # as a later read would return it


def new_record(cell: Cell, *, status: str, error: str | None = None, result: dict[str, Any] | None = None,
               seconds: float | None = None, **extra: Any) -> dict[str, Any]:
    """A cell record: id, kind, the cell's identity, and the outcome fields."""
    return {"id": cell.id, **cell.identity(), "kind": cell.kind, "status": status, "error": error,
            "result": result, "seconds": seconds, **extra}
