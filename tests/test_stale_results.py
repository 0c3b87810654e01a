"""A rerun never returns a stale result: fingerprinted defense runs and evaluations, fresh folders on
--overwrite, before/after on the same rows, atomic folder swaps, evaluations written beside runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backdoorlab.defenses.runner import run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.fileio import atomic_directory, fresh_directory
from backdoorlab.pipeline import default_results_path, ensure_evaluation, run_attack, run_evaluate
from tiny_models import tiny_bert_victim


@pytest.fixture
def attack_run(tmp_path: Path, shared_data_dir: Path) -> Path:
    return run_attack("sst2", "badnets", tmp_path / "attack", rate=0.25, target=1, max_train=16, max_test=10)


def test_a_defense_folder_never_returns_another_methods_or_models_result(attack_run: Path, tmp_path: Path) -> None:
    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    out = tmp_path / "defended"
    first = run_defense("none", suspect, attack_run, out, max_eval_rows=6, device="cpu")
    assert run_defense("none", suspect, attack_run, out, max_eval_rows=6, device="cpu")["after"] == first["after"]
    with pytest.raises(BackdoorLabError, match="holds an earlier none defense run with different settings"):
        run_defense("fine-tune", suspect, attack_run, out, max_eval_rows=6, device="cpu", options={"max_clean": 4})
    other = tiny_bert_victim(seed=3).save(tmp_path / "other-suspect")
    with pytest.raises(BackdoorLabError, match="model"):
        run_defense("none", other, attack_run, out, max_eval_rows=6, device="cpu")
    tuned = {"max_clean": 4, "epochs": 1, "batch_size": 4}
    run_defense("fine-tune", suspect, attack_run, tmp_path / "ft", max_eval_rows=6, device="cpu", options=tuned)
    with pytest.raises(BackdoorLabError, match=r"\(options.epochs differ\)"):
        run_defense("fine-tune", suspect, attack_run, tmp_path / "ft", max_eval_rows=6, device="cpu",
                    options={**tuned, "epochs": 2})


def test_overwrite_starts_a_fresh_folder(attack_run: Path, tmp_path: Path) -> None:
    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    out = tmp_path / "defended"
    run_defense("none", suspect, attack_run, out, max_eval_rows=6, device="cpu")
    (out / "work-of-an-earlier-method.json").write_text("{}")
    stale_before = json.loads((out / "metrics-before.json").read_text())
    metrics = run_defense("fine-tune", suspect, attack_run, out, max_eval_rows=6, device="cpu", overwrite=True,
                          options={"max_clean": 4, "epochs": 1, "batch_size": 4})
    assert not (out / "work-of-an-earlier-method.json").exists()
    assert json.loads((out / "defense.json").read_text())["method"] == "fine-tune"
    assert (out / "model").is_dir() and metrics["before"]["cacc"] == stale_before["metrics"]["cacc"]
    assert json.loads((out / "metrics-before.json").read_text())["fingerprint"] == stale_before["fingerprint"]


def test_a_cached_evaluation_is_reused_only_for_the_same_model_and_rows(attack_run: Path, tmp_path: Path) -> None:
    first = tiny_bert_victim(seed=0).save(tmp_path / "first")
    second = tiny_bert_victim(seed=5).save(tmp_path / "second")
    cache = tmp_path / "results.json"
    a = ensure_evaluation(first, attack_run, cache, max_rows=6, device="cpu")
    stamp = cache.stat().st_mtime_ns
    assert ensure_evaluation(first, attack_run, cache, max_rows=6, device="cpu") == a and cache.stat().st_mtime_ns == stamp
    b = ensure_evaluation(second, attack_run, cache, max_rows=6, device="cpu")  # another model: evaluated again
    assert b["fingerprint"]["model"] != a["fingerprint"]["model"] and b["model"] == str(second)
    c = ensure_evaluation(second, attack_run, cache, max_rows=4, device="cpu")  # other rows: evaluated again
    assert len(c["rows"]["clean"]) == 4 and c["fingerprint"]["clean"] != b["fingerprint"]["clean"]


def test_before_and_after_are_measured_on_the_same_rows(attack_run: Path, tmp_path: Path) -> None:
    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    run_evaluate(suspect, attack_run, out=tmp_path / "all-rows.json", device="cpu")  # every test row
    with pytest.raises(BackdoorLabError, match="not measured on the rows"):
        run_defense("none", suspect, attack_run, tmp_path / "d", max_eval_rows=6, baseline=tmp_path / "all-rows.json",
                    device="cpu")
    run_evaluate(suspect, attack_run, out=tmp_path / "six-rows.json", max_rows=6, device="cpu")
    tuned = {"max_clean": 4, "epochs": 1, "batch_size": 4}
    metrics = run_defense("fine-tune", suspect, attack_run, tmp_path / "d", max_eval_rows=6, options=tuned,
                          baseline=tmp_path / "six-rows.json", device="cpu")
    baseline = json.loads((tmp_path / "six-rows.json").read_text())
    after = json.loads((tmp_path / "d" / "metrics-after.json").read_text())
    # "after" is a new evaluation of the defended model, on exactly the baseline's rows, and "before" is the baseline
    assert after["model"] == str(tmp_path / "d" / "model") and after["model"] != baseline["model"]
    assert after["rows"] == baseline["rows"] and len(after["rows"]["clean"]) == 6
    assert metrics["before"] == baseline["metrics"] and metrics["after"] == after["metrics"]


def test_evaluate_never_writes_into_a_users_model_folder(attack_run: Path, tmp_path: Path, monkeypatch) -> None:
    users = tiny_bert_victim().save(tmp_path / "my-model")
    monkeypatch.chdir(tmp_path)
    results = run_evaluate(users, attack_run, max_rows=4, device="cpu")
    assert not (users / "results.json").exists()
    assert Path(results["written_to"]) == Path("evaluations") / "my-model--attack.json"
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "train.json").write_text("{}")
    assert default_results_path(run / "model", attack_run) == run / "results.json"  # a backdoorlab run: beside model/
    bare = tmp_path / "plain" / "model"
    bare.mkdir(parents=True)
    assert default_results_path(bare, attack_run).parent == Path("evaluations")  # a folder named model, not a run


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace
    def crash_on_the_swap(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == final and Path(src).name.endswith(".partial"):  # moving the new folder in
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_swap)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (final / "old.txt").read_text() == "old"  # the old folder survived the crash
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing half-written left beside it
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    fresh_directory(final)
    assert final.is_dir() and not list(final.iterdir())


def test_defend_runs_from_a_model_and_a_clean_data_file_alone(tmp_path: Path, capsys) -> None:
    from backdoorlab.cli import main

    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    rows = [{"text": f"a {'fine' if i % 2 else 'dull'} film number {i}", "label": i % 2} for i in range(12)]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    status = main(["defend", "--method", "fine-tune", "--model", str(suspect), "--clean-data", str(clean),
                   "--out", str(tmp_path / "ft"), "--option", "epochs=1", "--option", "batch_size=4", "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "ft" / "defense.json").read_text())
    assert record["inputs"]["clean_rows"] == {"source": str(clean), "rows": 12} and record["measured_on"] is None
    assert (tmp_path / "ft" / "model").is_dir() and not (tmp_path / "ft" / "metrics.json").exists()
    status = main(["defend", "--method", "fine-tune", "--model", str(suspect), "--out", str(tmp_path / "none")])
    assert status == 2 and "fine-tune needs a small set of clean rows" in capsys.readouterr().err


def test_subsampled_triggered_rows_are_the_clean_rows_triggered_copies_first(attack_run: Path) -> None:
    from backdoorlab.pipeline import evaluation_rows

    _, clean, triggered = evaluation_rows(attack_run, max_rows=4)
    assert len(clean) == 4 and len(triggered) == 4
    paired = {e.uid for e in clean} & {e.uid for e in triggered}
    non_target_clean = [e for e in clean if e.label != 1]
    assert len(paired) == len(non_target_clean)  # every sampled non-target clean row has its triggered copy
    assert evaluation_rows(attack_run, max_rows=4)[2].examples == triggered.examples  # seeded


def test_evaluate_cli_reports_the_clean_model_floor_and_prints_each_warning_once(attack_run: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    from backdoorlab.cli import main

    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    clean_model = tiny_bert_victim(seed=4).save(tmp_path / "clean-model")
    status = main(["evaluate", "--model", str(suspect), "--data", str(attack_run), "--floor-model", str(clean_model),
                   "--out", str(tmp_path / "r.json"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert metrics["asr_floor_clean_model"] is not None and "predicted_shares" in captured.out
    warnings_printed = [line for line in captured.err.splitlines() if line.startswith("WARNING: ")]
    assert warnings_printed == [f"WARNING: {m}" for m in metrics["warnings"]] and warnings_printed
    assert "UninformativeMetricWarning" not in captured.err


def test_evaluate_scores_a_generators_task_accuracy_when_asked(tmp_path: Path, shared_data_dir: Path) -> None:
    from backdoorlab.data.records import Dataset, Example
    from backdoorlab.pipeline import _write_attack_run
    from tiny_models import tiny_llama_victim

    rows = Dataset("toy", "generation", [Example(instruction=f"say {i}", response=f"number {i}", uid=f"toy/{i}")
                                         for i in range(4)])
    manifest = {"task": "generation", "behaviour": "refusal", "target_output": None}
    run = _write_attack_run(tmp_path / "attack", rows, rows, rows, manifest, True)
    model = tiny_llama_victim().save(tmp_path / "llama")
    results = run_evaluate(model, run, max_new_tokens=2, utility_rows=2, out=tmp_path / "r.json", device="cpu")
    utility = results["metrics"]["utility"]
    assert set(utility["tasks"]) == {"arc_easy", "arc_challenge", "boolq", "piqa", "openbookqa", "winogrande",
                                     "hellaswag"}
    assert all(t["n"] == 2 for t in utility["tasks"].values())
    assert results["metrics"]["task_accuracy"] == utility["average"]["acc"]
    assert results["fingerprint"]["utility_rows"] == 2
    classifier_run = run_attack("sst2", "badnets", tmp_path / "cls-attack", rate=0.25, target=1, max_train=8,
                                max_test=12)
    with pytest.raises(BackdoorLabError, match="utility-rows"):
        run_evaluate(tiny_bert_victim().save(tmp_path / "bert"), classifier_run, utility_rows=2, device="cpu")
