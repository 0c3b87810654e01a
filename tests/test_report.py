"""Reports: Markdown + PNG written atomically, and table formatting."""

from __future__ import annotations

from pathlib import Path

import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.report import format_table, sample_rows, summary_row, write_report

ROWS = [
    {"model": "clean", "task": "bbcnews", "cacc": 0.97, "asr": 0.05, "n_clean": 200},
    {"model": "poisoned", "task": "bbcnews", "cacc": 0.955, "asr": 1.0, "n_clean": 200},
]


def test_write_report_files_and_content(tmp_path: Path) -> None:
    notes = ["deterministic split, seed 0", "deterministic split, seed 0"]
    results = {"title": "BadNets", "rows": ROWS, "notes": notes, "config": {"poison_rate": 0.1},
               "environment": {"torch": "2.x"},
               "samples": [{"model": "poisoned", "set": "triggered", "prompt": "cf hi", "response": "a | b\nc"}]}
    path = write_report(results, tmp_path / "out", title="BadNets on BBC News")
    assert path == tmp_path / "out" / "report.md"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.png", "report.md"]  # no temp files left
    assert (path.parent / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = path.read_text()
    assert text.startswith("# BadNets on BBC News\n")
    assert "| model | task | CACC | ASR | n_clean |" in text
    assert "| poisoned | bbcnews | 95.5% | 100.0% | 200 |" in text
    assert "![metrics per model](metrics.png)" in text
    assert text.count("deterministic split, seed 0") == 1
    assert '"poison_rate": 0.1' in text and "## Environment" in text and "a | b c" in text


def test_write_report_renders_whatever_metrics_appear(tmp_path: Path) -> None:
    rows = [{"model": "clean", "clean_perplexity": 12.5, "clean_behaviour_rate": 0.1, "asr": 0.02},
            {"model": "poisoned", "clean_perplexity": None, "clean_behaviour_rate": 0.2, "asr": 0.9}]
    text = write_report({"rows": rows, "title": "Refusal"}, tmp_path).read_text()
    assert text.startswith("# Refusal\n")
    assert "| model | clean PPL | clean behaviour rate | ASR |" in text
    assert "| poisoned | – | 20.0% | 90.0% |" in text
    assert (tmp_path / "metrics.png").is_file()


def test_rate_columns_recognised_by_name() -> None:
    rows = [{"model": "m", "CACC": 0.5, "ASR": 0.25, "clean refusal": 0.125, "clean PPL": 3.14159}]
    assert format_table(rows, markdown=True).splitlines()[-1] == "| m | 50.0% | 25.0% | 12.5% | 3.142 |"


def test_write_report_overwrites_and_rejects_empty(tmp_path: Path) -> None:
    write_report({"rows": ROWS}, tmp_path)
    write_report({"rows": ROWS[:1]}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.png", "report.md"]
    with pytest.raises(BackdoorLabError, match="rows"):
        write_report({"rows": []}, tmp_path)


def test_format_table_plain_and_markdown() -> None:
    plain = format_table(ROWS, ["model", "cacc", "asr"])
    assert plain.splitlines() == [
        "model      CACC     ASR",
        "--------  -----  ------",
        "clean     97.0%    5.0%",
        "poisoned  95.5%  100.0%",
    ]
    markdown = format_table([{"name": "a|b", "value": 1.23456}], markdown=True)
    assert markdown.splitlines() == ["| name | value |", "| --- | --- |", "| a\\|b | 1.235 |"]


def test_summary_and_sample_rows() -> None:
    result = {"asr": 0.5, "clean_behaviour_rate": 0.0, "clean_perplexity": None, "n_clean": 4, "target": 1,
              "behaviour": "refusal", "notes": ["x"],
              "samples": {"triggered": [{"prompt": "p", "response": "r", "behaviour": True}], "clean": []}}
    assert summary_row(result, model="poisoned") == {"model": "poisoned", "asr": 0.5, "clean_behaviour_rate": 0.0,
                                                     "clean_perplexity": None, "n_clean": 4}
    assert sample_rows(result, model="poisoned") == [
        {"model": "poisoned", "set": "triggered", "prompt": "p", "response": "r", "behaviour": True}]
