"""Readers for TSV, CSV, JSON and JSONL files that name the file and line of any malformed row."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError

csv.field_size_limit(1 << 24)


def _open_text(path: Path):
    if not path.is_file():
        raise BackdoorLabError(f"data file {path} does not exist")
    return path.open(encoding="utf-8", newline="")


def read_delimited(path: str | Path, delimiter: str, header: bool = True,
                   columns: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Read a TSV/CSV file into dicts.

    With ``header`` the first row names the columns; otherwise ``columns`` must. Every row must
    have as many cells as there are columns, or a :class:`BackdoorLabError` names file and line.
    """
    path = Path(path)
    with _open_text(path) as handle:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        rows: list[dict[str, str]] = []
        names: list[str] | None = list(columns) if columns else None
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if names is None:
                if not header:
                    raise BackdoorLabError(f"{path}: no column names given for a file without header")
                names = [c.strip() for c in row]
                continue
            if len(row) != len(names):
                raise BackdoorLabError(
                    f"{path}:{line}: expected {len(names)} fields ({', '.join(names)}), found {len(row)}"
                )
            rows.append(dict(zip(names, row)))
    if names is None:
        raise BackdoorLabError(f"{path}: file is empty")
    return rows


def read_json(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON file holding a list of objects."""
    path = Path(path)
    with _open_text(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise BackdoorLabError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BackdoorLabError(f"{path}: expected a JSON list of objects")
    return data


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (one object per line; blank lines are skipped)."""
    path = Path(path)
    rows = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BackdoorLabError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise BackdoorLabError(f"{path}:{number}: expected a JSON object per line")
            rows.append(row)
    return rows


def read_records(path: str | Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Read any supported file by its extension (.tsv, .csv, .json, .jsonl)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return read_delimited(path, "\t", header=columns is None, columns=columns)
    if suffix == ".csv":
        return read_delimited(path, ",", header=columns is None, columns=columns)
    if suffix == ".json":
        return read_json(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    raise BackdoorLabError(f"{path}: unsupported data file type {suffix!r}; use .tsv, .csv, .json or .jsonl")


def require_fields(path: str | Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    """Raise a clear error naming the first row (1-based) that lacks one of ``fields``."""
    for number, row in enumerate(rows, start=1):
        missing = [f for f in fields if f not in row]
        if missing:
            raise BackdoorLabError(f"{path}: row {number} lacks field(s) {', '.join(missing)}")
