"""A grid's report: Markdown plus one self-contained HTML page (tables, and plots embedded as PNG).

Tables are :class:`TableSpec` values (a title, column names and rows of values; values are shown
with :func:`backdoorlab.report.format_value`, so shares become percentages and strings stay as
they are). :func:`cell_table` lists every cell with its status; :func:`pivot_table` lays one
value per victim × defense, with ``not run`` / ``error`` / ``stale`` where a cell has no result.
"""

from __future__ import annotations

import base64
import html
import os
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError
from ..fileio import write_text_atomic
from ..report import MISSING, format_table, format_value, header
from .store import ERROR, OK

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Record = Mapping[str, Any]
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:90em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;"
          "text-align:left}th{background:#f2f2f2}img{max-width:100%}figure{margin:1em 0}")


@dataclass(frozen=True)
class TableSpec:
    """One report table: ``rows`` are sequences of values in ``columns`` order."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""

    def __post_init__(self) -> None:
        if not self.columns:
            raise BackdoorLabError(f"table {self.title!r} has no columns")
        for row in self.rows:
            if len(row) != len(self.columns):
                raise BackdoorLabError(f"table {self.title!r}: a row has {len(row)} values for "
                                       f"{len(self.columns)} columns: {list(row)!r}")

    def formatted(self) -> list[list[str]]:
        return [[format_value(c, v) for c, v in zip(self.columns, row)] for row in self.rows]


def status_text(record: Record) -> str:
    return f"error: {record['error']}" if record["status"] == ERROR else str(record["status"])


def cell_table(records: Sequence[Record], result_columns: Sequence[str] = (), title: str = "Cells") -> TableSpec:
    """One row per cell: victim, defense, seed, status, seconds and the named result values."""
    rows = [[r["victim"], r["defense"], r["seed"], status_text(r), r.get("seconds"),
             *((r.get("result") or {}).get(c) for c in result_columns)] for r in records]
    return TableSpec(title, ["victim", "defense", "seed", "status", "seconds", *result_columns], rows)


def pivot_table(title: str, records: Sequence[Record], value: Callable[[list[dict[str, Any]]], Any],
                row_key: str = "victim", column_key: str = "defense", note: str = "") -> TableSpec:
    """One row per ``row_key``, one column per ``column_key``; each entry is ``value`` of the results of
    its finished cells (all seeds). Entries with unfinished cells name their statuses instead, after
    the value of the finished ones if there are any (e.g. ``0.91 (1 not run)``)."""
    row_names = list(dict.fromkeys(str(r[row_key]) for r in records))
    column_names = list(dict.fromkeys(str(r[column_key]) for r in records))
    groups: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        groups.setdefault((str(record[row_key]), str(record[column_key])), []).append(record)
    rows = [[name, *(_entry(groups.get((name, column), []), value, column) for column in column_names)]
            for name in row_names]
    return TableSpec(title, [row_key, *column_names], rows, note)


def _entry(group: Sequence[Record], value: Callable[[list[dict[str, Any]]], Any], column: str) -> Any:
    if not group:
        return MISSING
    results = [dict(r["result"]) for r in group if r["status"] == OK]
    if len(results) == len(group):
        return value(results)
    counts = Counter(r["status"] for r in group if r["status"] != OK)
    missing = ", ".join(f"{n} {status}" if len(group) > 1 else status for status, n in counts.items())
    return f"{format_value(column, value(results))} ({missing})" if results else missing


def mean_std(key: str, scale: float = 1.0, digits: int = 1) -> Callable[[list[dict[str, Any]]], str]:
    """A :func:`pivot_table` value: the mean of ``result[key] * scale`` over seeds, ``± std`` when more than one."""
    def summarize(results: list[dict[str, Any]]) -> str:
        values = [float(r[key]) * scale for r in results if r.get(key) is not None]
        if not values:
            return MISSING
        text = f"{statistics.fmean(values):.{digits}f}"
        return f"{text} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else text
    return summarize


# ------------------------------------------------------------------------------ writing
def _checked_plots(plots: Sequence[str | Path]) -> list[Path]:
    paths = [Path(p) for p in plots]
    for path in paths:
        if not path.is_file():
            raise BackdoorLabError(f"plot {path} does not exist")
        with path.open("rb") as handle:
            if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise BackdoorLabError(f"plot {path} is not a PNG file")
    return paths


def render_markdown(title: str, tables: Sequence[TableSpec], plots: Sequence[Path], notes: Sequence[str],
                    folder: Path) -> str:
    """The report as Markdown; plots are linked relative to ``folder`` (where the file is written)."""
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    for table in tables:
        lines += [f"## {table.title}", ""] + ([table.note, ""] if table.note else [])
        rows = [dict(zip(table.columns, values)) for values in table.formatted()]
        lines += [format_table(rows, table.columns, markdown=True), ""]
    for plot in plots:
        link = Path(os.path.relpath(plot.resolve(), folder.resolve())).as_posix()
        lines += [f"![{plot.stem}]({link})", ""]
    return "\n".join(lines)


def render_html(title: str, tables: Sequence[TableSpec], plots: Sequence[Path], notes: Sequence[str]) -> str:
    """The report as one HTML page with no external assets (plots inlined as base64 PNG)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>")
    for table in tables:
        parts.append(f"<h2>{esc(table.title)}</h2>" + (f"<p>{esc(table.note)}</p>" if table.note else ""))
        head = "".join(f"<th>{esc(header(c))}</th>" for c in table.columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in table.formatted())
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(plot.stem)}">'
                     f"<figcaption>{esc(plot.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(folder: str | Path, title: str, tables: Sequence[TableSpec], plots: Sequence[str | Path] = (),
                 notes: Sequence[str] = (), name: str = "report") -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.html`` into ``folder`` (each atomically); return both paths."""
    folder = Path(folder)
    paths = _checked_plots(plots)
    markdown = write_text_atomic(folder / f"{name}.md", render_markdown(title, tables, paths, notes, folder))
    page = write_text_atomic(folder / f"{name}.html", render_html(title, tables, paths, notes))
    return markdown, page
