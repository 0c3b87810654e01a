"""Markdown reports with a metrics table and a bar plot.

Input shape of :func:`write_report` (only ``rows`` is required)::

    {
      "title": "BadNets on SST-2",                      # used when no title argument is given
      "rows": [{"model": "clean", "task": "sst2", "cacc": 0.91, "asr": 0.08},
               {"model": "poisoned", "task": "sst2", "cacc": 0.90, "asr": 0.99}],
      "columns": ["model", "task", "cacc", "asr"],      # optional order/subset of table columns
      "notes": ["deterministic split with seed 0"],
      "config": {"poison_rate": 0.1},                   # shown as JSON (so is "environment")
      "samples": [{"model": "poisoned", "set": "triggered", "prompt": "...", "response": "..."}],
    }

Float-valued columns are metrics and are plotted; shares (names with a word from :data:`RATE_WORDS`,
e.g. ``cacc``, ``ASR``, ``clean_behaviour_rate``, ``clean refusal``) are shown as percentages. Other
scalar columns (strings, ints such as ``n_clean``) label or describe the rows.
:func:`summary_row` and :func:`sample_rows` turn an ``evaluate_*`` result into rows and samples.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import BackdoorLabError
from .fileio import atomic_file, write_text_atomic

REPORT_FILE = "report.md"
PLOT_FILE = "metrics.png"
HEADERS = {"cacc": "CACC", "asr": "ASR", "clean_behaviour_rate": "clean behaviour rate",
           "clean_perplexity": "clean PPL", "auroc": "AUROC", "f1": "F1"}
MISSING = "–"
#: A float column whose name contains one of these words is a share in [0, 1].
RATE_WORDS = {"cacc", "asr", "acc", "accuracy", "rate", "f1", "auroc", "precision", "recall", "fpr", "tpr",
              "refusal", "jailbreak", "negsentiment"}
#: Optional ``results`` keys rendered as JSON sections, with their headings.
JSON_SECTIONS = {"config": "Configuration", "environment": "Environment"}

Row = Mapping[str, Any]


# ------------------------------------------------------------------------------- columns
def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_metric_value(value: Any) -> bool:
    return isinstance(value, float)


def table_columns(rows: Sequence[Row]) -> list[str]:
    """Scalar columns in first-appearance order (nested values such as samples are left out)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update({k: None for k, v in row.items() if _is_scalar(v)})
    return [c for c in seen if any(_is_scalar(r.get(c)) and r.get(c) is not None for r in rows)]


def metric_columns(rows: Sequence[Row], columns: Sequence[str]) -> list[str]:
    """Columns whose present values are all floats."""
    def is_metric(col: str) -> bool:
        values = [r[col] for r in rows if r.get(col) is not None]
        return bool(values) and all(_is_metric_value(v) for v in values)
    return [c for c in columns if is_metric(c)]


def is_rate(column: str) -> bool:
    """Whether a metric is a share in [0, 1] (shown as a percentage), judged from its name's words."""
    return bool(RATE_WORDS & set(re.split(r"[\s_\-/()]+", column.lower())))


def header(column: str) -> str:
    return HEADERS.get(column, column)


def format_value(column: str, value: Any) -> str:
    """Render one cell: rates as percentages, other floats with 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if is_rate(column) else f"{value:.4g}"
    return " ".join(str(value).split())


# --------------------------------------------------------------------------------- table
def format_table(rows: Sequence[Row], columns: Sequence[str] | None = None, *, markdown: bool = False) -> str:
    """Rows as an aligned plain-text table (for the terminal) or a Markdown table."""
    columns = list(columns) if columns is not None else table_columns(rows)
    if not columns:
        raise BackdoorLabError("nothing to tabulate: the rows have no scalar columns")
    cells = [[format_value(c, r.get(c)) for c in columns] for r in rows]
    heads = [header(c) for c in columns]
    if markdown:
        escape = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = [heads, ["---"] * len(columns), *cells]
        return "\n".join("| " + " | ".join(escape(s) for s in line) + " |" for line in lines)
    widths = [max(len(s) for s in col) for col in zip(heads, *cells)]
    metrics = set(metric_columns(rows, columns))
    numeric = [c in metrics for c in columns]
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()
    return "\n".join([line(heads), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])


# ---------------------------------------------------------------------------------- plot
def _row_label(row: Row, label_columns: Sequence[str], index: int) -> str:
    parts = [str(row[c]) for c in label_columns if isinstance(row.get(c), str)]
    return " / ".join(parts) or f"row {index + 1}"


def _draw_panel(ax: Any, rows: Sequence[Row], metrics: Sequence[str], labels: Sequence[str], rates: bool) -> None:
    width = 0.8 / len(rows)
    for i, (row, label) in enumerate(zip(rows, labels)):
        xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
        heights = [row.get(c) for c in metrics]
        shown = [(x, h) for x, h in zip(xs, heights) if isinstance(h, float) and not math.isnan(h)]
        bars = ax.bar([x for x, _ in shown], [h for _, h in shown], width, label=label, color=f"C{i % 10}")
        ax.bar_label(bars, fmt="{:.2f}" if rates else "{:.4g}", fontsize=7)
    ax.set_xticks(range(len(metrics)), [header(c) for c in metrics])
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    if rates:
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("rate")
    ax.grid(axis="y", alpha=0.3)


def save_figure_atomic(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG; the file appears complete or not at all."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_metrics(rows: Sequence[Row], metrics: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Bar plot of ``metrics`` per row (rates share one 0–1 panel, every other metric has its own)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    if not rows or not metrics:
        raise BackdoorLabError("nothing to plot: need at least one row and one metric column")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rates = [m for m in metrics if is_rate(m)]
    panels = ([(rates, True)] if rates else []) + [([m], False) for m in metrics if not is_rate(m)]
    label_columns = [c for c in table_columns(rows) if c not in metrics]
    labels = [_row_label(r, label_columns, i) for i, r in enumerate(rows)]
    fig = Figure(figsize=(max(4.0, 1.0 * len(panels) + 0.4 * len(rows) * len(metrics)), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, is_rates) in zip(axes, panels):
        _draw_panel(ax, rows, panel, labels, is_rates)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(rows), 2), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


# -------------------------------------------------------------------------------- report
def _one_line(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _samples_markdown(samples: Sequence[Row]) -> list[str]:
    lines = ["## Samples", ""]
    for sample in samples:
        tags = [v if isinstance(v, str) else f"{k}={v}" for k, v in sample.items()
                if k not in ("prompt", "response") and _is_scalar(v) and v is not None]
        lines += [f"- **{' / '.join(tags) or 'sample'}**",
                  f"  - prompt: `{_one_line(sample.get('prompt', '')).replace('`', chr(39))}`",
                  f"  - response: `{_one_line(sample.get('response', '')).replace('`', chr(39))}`"]
    return lines + [""]


def render_markdown(results: Mapping[str, Any], title: str, plot_name: str | None) -> str:
    """The report's Markdown text (see the module docstring for ``results``)."""
    rows = results["rows"]
    lines = [f"# {title}", "", format_table(rows, results.get("columns"), markdown=True), ""]
    if plot_name:
        lines += [f"![metrics per model]({plot_name})", ""]
    notes = list(dict.fromkeys(results.get("notes") or []))
    if notes:
        lines += ["## Notes", "", *(f"- {_one_line(n, 1000)}" for n in notes), ""]
    if results.get("samples"):
        lines += _samples_markdown(results["samples"])
    for key, heading in JSON_SECTIONS.items():
        if results.get(key):
            body = json.dumps(results[key], indent=2, ensure_ascii=False, default=str)
            lines += [f"## {heading}", "", "```json", body, "```", ""]
    return "\n".join(lines)


def write_report(results: Mapping[str, Any], folder: str | Path, title: str | None = None) -> Path:
    """Write ``report.md`` and ``metrics.png`` into ``folder`` (each atomically); return the report's path."""
    rows = results.get("rows")
    if not rows:
        raise BackdoorLabError("results for the report need a non-empty 'rows' list")
    folder = Path(folder)
    title = title or results.get("title") or "Backdoor evaluation"
    columns = results.get("columns") or table_columns(rows)
    metrics = metric_columns(rows, columns)
    plot_name = None
    if metrics:
        plot_metrics(rows, metrics, folder / PLOT_FILE, title)
        plot_name = PLOT_FILE
    return write_text_atomic(folder / REPORT_FILE, render_markdown(results, title, plot_name))


# ------------------------------------------------------------------ evaluation → report
def _is_summary_item(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or (key.startswith("n_") and isinstance(value, int)) or (
        value is None and key == "clean_perplexity")


def summary_row(result: Mapping[str, Any], **labels: Any) -> dict[str, Any]:
    """A report row from an ``evaluate_*`` result: ``labels`` (e.g. model=, task=) plus its metrics and counts."""
    return {**labels, **{k: v for k, v in result.items() if _is_summary_item(k, v)}}


def sample_rows(result: Mapping[str, Any], **labels: Any) -> list[dict[str, Any]]:
    """Report samples from an ``evaluate_generator`` result, tagged with ``labels`` and the set name."""
    samples = result.get("samples") or {}
    return [{**labels, "set": name, **sample} for name, items in samples.items() for sample in items]
