"""What the command line prints: tables that fit the width, one method's options with their help,
results as tables, and bad options refused before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdoorlab.console import PIPE_WIDTH, print_table
from backdoorlab.defenses import list_defenses
from test_cli import assert_user_error, run


@pytest.fixture(autouse=True)
def no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


def widest(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


@pytest.mark.parametrize("command", ["models", "datasets", "attacks", "injections", "defenses"])
def test_listings_fit_the_width_and_name_every_entry(capsys: pytest.CaptureFixture[str], command: str) -> None:
    status, out, _ = run(capsys, command)
    assert status == 0 and widest(out) <= PIPE_WIDTH
    if command == "defenses":
        names = [name for name, _, _ in list_defenses()]
        assert len(names) > 5 and all(f"\n{name} " in out for name in names)  # whole names, at line starts


def test_the_width_follows_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "70")
    status, out, _ = run(capsys, "defenses", "badllm-tg")
    assert status == 0 and 60 < widest(out) <= 70 and "identify_records" in out


def test_one_defense_shows_its_stage_and_every_option_with_type_default_and_help(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "defenses", "onion")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "onion: inference-stage defense" and "ONION" in lines[1]
    threshold = next(line for line in lines if line.startswith("threshold "))
    assert threshold.split()[:5] == ["threshold", "float", "|", "None", "none"]
    assert "remove words with suspicion" in threshold
    lm = next(line for line in lines if line.startswith("lm "))
    assert lm.split()[1:3] == ["str", "smollm2-135m-instruct"] and "causal LM" in lm
    assert_user_error(run(capsys, "defenses", "onoin"), "unknown defense 'onoin'", "onion", "rap", "badllm-tg")


def test_one_attack_and_one_injection_method_show_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "attacks", "badnets")
    assert status == 0 and out.startswith("badnets: classification attack")
    assert any(line.split()[:3] == ["words", "list[str]", '["cf",'] for line in out.splitlines())
    status, out, _ = run(capsys, "injections", "dpo")
    assert status == 0 and any(line.split()[:3] == ["beta", "float", "0.1"] for line in out.splitlines())
    assert_user_error(run(capsys, "attacks", "badnetz"), "unknown attack 'badnetz'", "badnets")


def test_tables_keep_text_as_given_and_wrap_long_cells(capsys: pytest.CaptureFixture[str]) -> None:
    long = " ".join(["word"] * 80)
    print_table([{"name": "a-long-entry-name", "note": "[bold]x[/bold] :smile:", "text": long}],
                ["name", "note", "text"], wide=["text"])
    out = capsys.readouterr().out
    assert "[bold]x[/bold]" in out and ":smile:" in out and "a-long-entry-name" in out  # no markup, no emoji
    assert widest(out) <= PIPE_WIDTH and out.count("word") == 80


def test_defend_and_evaluate_print_their_results_as_tables(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = {"before": {"asr": 0.9375, "cacc": 0.91}, "after": {"asr": 0.0625, "cacc": 0.9, "n_clean": 16,
                                                                  "flagged": True, "notes": "x"}}
    monkeypatch.setattr("backdoorlab.defenses.run_defense", lambda *args, **kwargs: metrics)
    status, out, _ = run(capsys, "defend", "--method", "none", "--model", "m", "--data", tmp_path, "--out", tmp_path)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert status == 0 and rows["metric"] == ["before", "after"]
    assert rows["asr"] == ["0.9375", "0.0625"] and rows["cacc"] == ["0.91", "0.9"] and rows["n_clean"] == ["-", "16"]
    assert "flagged" not in rows and "notes" not in rows
    results = {"metrics": {"cacc": 0.8125, "asr": 0.25, "behaviour": "refusal", "per_row": [1, 0]},
               "written_to": str(tmp_path / "results.json")}
    monkeypatch.setattr("backdoorlab.pipeline.run_evaluate", lambda *args, **kwargs: results)
    status, out, _ = run(capsys, "evaluate", "--model", "m", "--data", tmp_path)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert status == 0 and rows["cacc"] == ["0.8125"] and rows["behaviour"] == ["refusal"] and "per_row" not in rows


def test_defend_measures_the_rows_its_baseline_was_measured_on_and_says_what_it_wrote(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake_defense(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "defense.json").write_text("{}")
        return {}

    monkeypatch.setattr("backdoorlab.defenses.run_defense", fake_defense)
    baseline = tmp_path / "results.json"  # an evaluation of every row: 240 clean and 113 triggered
    baseline.write_text(json.dumps({"rows": {"clean": [f"c{i}" for i in range(240)],
                                             "triggered": [f"t{i}" for i in range(113)]}}))
    argv = ["defend", "--method", "none", "--model", "m", "--out", tmp_path / "out"]
    status, out, _ = run(capsys, *argv, "--data", tmp_path, "--baseline", baseline)
    assert status == 0 and seen["max_eval_rows"] == 240
    status, out, _ = run(capsys, *argv, "--data", tmp_path, "--baseline", baseline, "--max-rows", "50")
    assert status == 0 and seen["max_eval_rows"] == 50  # an explicit choice wins (the runner then checks the rows)
    status, out, _ = run(capsys, *argv, "--clean-data", tmp_path / "rows.jsonl")
    assert status == 0 and seen["max_eval_rows"] == 100
    assert "(defense.json)" in out and "metrics.json" not in out and "nothing measured: give --data" in out


@pytest.mark.parametrize(("method", "option", "fragments"), [
    ("head-ablation", "top_fraction=abc", ["defense 'head-ablation', option top_fraction: expected a number, got 'abc'"]),
    ("badllm-tg", "top_fraction=2", ["top_fraction", "(0, 1]"]),
    ("onion", "threshold_percentile=101", ["threshold_percentile", "[0, 100]"]),
    ("rap", "wrod=cf", ["defense 'rap' has no option 'wrod'", "word"]),
])
def test_defend_with_a_bad_option_fails_before_any_model_is_loaded(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, method: str,
                                                                   option: str, fragments: list[str]) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr("backdoorlab.models.loading.load_victim", no_loading)
    out = tmp_path / "defended"
    assert_user_error(run(capsys, "defend", "--method", method, "--model", tmp_path / "no-model", "--data",
                          tmp_path / "no-run", "--out", out, "--option", option), *fragments)
    assert not out.exists()


def test_one_defense_shows_the_defender_inputs_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "defenses", "rap")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "defender inputs besides --model")
    inputs = {line.split()[0]: line for line in lines[start:]
              if line.split() and line.split()[0] in ("clean_rows", "target_label", "oracle")}
    assert status == 0 and "required" in inputs["clean_rows"] and "optional" in inputs["target_label"]
    assert "oracle" not in inputs
    status, out, _ = run(capsys, "defenses", "head-ablation")
    assert status == 0 and "oracle knowledge" in out
    status, out, _ = run(capsys, "defenses", "none")
    assert status == 0 and "only the suspect model" in out


def test_help_shows_each_options_default(capsys: pytest.CaptureFixture[str]) -> None:
    for command, expected in (("train", ["--seed SEED           default: 0", "--split SPLIT         default: train",
                                         "--epochs EPOCHS       default: 3"]),
                              ("defend", ["rows --baseline was measured on"]),
                              ("scan", ["(default: 300)"])):
        with pytest.raises(SystemExit):
            run(capsys, command, "--help")
        out = " ".join(capsys.readouterr().out.split())
        for fragment in expected:
            assert " ".join(fragment.split()) in out, (command, fragment)
