"""Tables on standard output that fit the reader's screen.

In a terminal, tables wrap to its width; elsewhere (pipes, files, captured output) to ``$COLUMNS``
or :data:`PIPE_WIDTH` columns. Cell text is printed as it is: no markup, emoji codes or colours
are read into it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

PIPE_WIDTH = 110


def console(file: TextIO | None = None) -> Console:
    """A console writing to ``file`` (default: the current ``sys.stdout``)."""
    out = file if file is not None else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = None if _is_terminal(out) else int(columns) if columns.isdigit() else PIPE_WIDTH
    return Console(file=out, width=width, markup=False, emoji=False, highlight=False)


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, wide: Sequence[str] = (),
          title: str | None = None, width: int = PIPE_WIDTH) -> Table:
    """A table of ``rows`` (missing cells stay empty) for ``width`` columns of screen.

    The first column, the row's name, is never broken; the ``wide`` columns (free text) share the
    width the others leave, and each other column gets at most an eighth of it unless a word needs more.
    """
    grid = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", header_style="bold", show_edge=False,
                 pad_edge=False, padding=(0, 1, 0, 0))
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    for i, name in enumerate(columns):
        longest_word = max((len(word) for line in cells for word in line[i].split()), default=0)
        narrow = 0 < i and name not in wide
        grid.add_column(name, no_wrap=i == 0, overflow="fold",
                        max_width=max(longest_word, len(name), width // 8) if narrow else None)
    for line in cells:
        grid.add_row(*(Text(value) for value in line))
    return grid


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, wide: Sequence[str] = (),
                title: str | None = None) -> None:
    """Print :func:`table` to standard output, fitted to its width."""
    out = console()
    out.print(table(rows, columns, wide=wide, title=title, width=out.width))


def print_lines(*lines: str) -> None:
    """Print plain lines, wrapped like the tables."""
    out = console()
    for line in lines:
        out.print(Text(line))


def cell(value: Any) -> str:
    """A value as a user would type it (``none``, ``true``, ``2.0``, ``["a", "b"]``); floats rounded to 4
    decimals, or to 4 significant digits below 0.001."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if 0 < abs(value) < 1e-3 else repr(round(value, 4))
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
