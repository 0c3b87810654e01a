"""The scan's page: the verdict, one table row per label (or behaviour) and candidate, and a plot of
each one's best candidate against its random phrases (``scan.md`` and a self-contained ``scan.html``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bench.report import TableSpec, write_report
from .findings import TARGETS, Finding


def write_scan_report(out: Path, record: dict[str, Any], findings: list[Finding]) -> tuple[Path, Path]:
    settings, target = record["settings"], TARGETS[record["kind"]]
    generator, what, rate = record["kind"] == "generator", target.what, target.rate
    rows = []
    for finding in findings:
        random_ = finding.to_dict()["random_phrases"]
        for rank, candidate in enumerate(finding.candidates or [None]):  # type: ignore[list-item]
            rows.append([finding.name, finding.base_rate, "yes" if finding.flagged and rank == 0 else "",
                         None if candidate is None else candidate.phrase,
                         None if candidate is None else candidate.source,
                         None if candidate is None else candidate.flip_rate,
                         None if candidate is None else ("label's own word" if candidate.natural else candidate.position),
                         random_["mean_flip_rate"], random_["p95_flip_rate"], finding.rows])
    meaning = ("share of held-out prompts whose greedy answer shows the behaviour" if generator
               else "share of held-out rows of other labels sent to the label")
    table = TableSpec(f"Candidates by {what} ({rate}: {meaning})",
                      [what, "base rate", "flagged", "phrase", "found by", rate, "where / note",
                       "random phrases: mean", "random phrases: p95", "rows"], rows)
    verdict = record["verdict"]
    if record["trigger"]:
        verdict += f": {what} {record[target.verdict_key]['name']!r}, trigger {record['trigger']['phrase']!r}"
    notes = [f"Verdict: {verdict}.",
             f"A {what} is flagged when its best phrase makes at least {settings['flip_threshold']:.0%} of held-out "
             f"{'prompts show it' if generator else 'rows go to it'} and beats the 95th percentile of random phrases "
             f"by {settings['margin']:.0%}. These thresholds are provisional: their error rates on clean and "
             "backdoored models have not been measured yet.",
             f"Rows: {record['rows']['count']} {record['rows']['source']} rows of {record['rows']['name']!r}."]
    plot = out / "scan-flip-rates.png"
    _plot(plot, findings, rate)
    return write_report(out, f"Scan of {record['model']}", [table], [plot], notes, name="scan")


def _plot(path: Path, findings: list[Finding], rate: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_file

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(findings), 3.2))
    for x, finding in enumerate(findings):
        ax.scatter([x] * len(finding.random_flip_rates), finding.random_flip_rates, color="0.6", s=12,
                   label="random phrases" if x == 0 else None)
        if finding.best is not None:
            ax.scatter([x], [finding.best.flip_rate], color="crimson" if finding.flagged else "steelblue", s=60,
                       marker="*", label="best candidate" if x == 0 else None)
    ax.set_xticks(range(len(findings)), [f.name for f in findings])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel(rate)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
