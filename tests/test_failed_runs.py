"""A `defend` run that fails before doing any work leaves nothing behind, and says what was wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdoorlab.cli import main
from tiny_models import tiny_bert_victim, tiny_llama_victim


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def instruction_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"write a line about topic {i}", "output": f"Line {i}."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture
def llama(tmp_path: Path) -> Path:
    return tiny_llama_victim().save(tmp_path / "llama")


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded before the options and inputs were checked")

    monkeypatch.setattr("backdoorlab.models.loading.load_victim", forbidden)


def test_too_few_clean_rows_for_bd_vax_stop_before_the_folder_is_claimed(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, llama: Path, no_model_loading: None) -> None:
    out = tmp_path / "bd-vax"
    status, err = run(capsys, "defend", "--method", "bd-vax", "--model", llama, "--clean-data",
                      instruction_rows(tmp_path / "few.jsonl", 3), "--out", out, "--device", "cpu")
    assert status == 2 and "clean rows" in err and "holds 3" in err
    assert not out.exists()


def test_an_unknown_behaviour_stops_self_awareness_before_the_model_is_loaded(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, llama: Path, no_model_loading: None) -> None:
    out = tmp_path / "sa"
    status, err = run(capsys, "defend", "--method", "self-awareness", "--model", llama, "--clean-data",
                      instruction_rows(tmp_path / "rows.jsonl", 40), "--behaviour", "teleport", "--out", out,
                      "--device", "cpu")
    assert status == 2 and "'teleport'" in err and "refusal" in err
    assert not out.exists()


def test_a_missing_clean_data_file_is_named_as_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       llama: Path) -> None:
    out = tmp_path / "ft"
    status, err = run(capsys, "defend", "--method", "fine-tune", "--model", llama, "--clean-data",
                      tmp_path / "nowhere" / "clean.jsonl", "--out", out)
    assert status == 2 and "no such file or folder" in err and "known datasets" not in err
    assert not out.exists()


def test_a_defense_that_fails_before_any_work_leaves_no_claim(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    bert = tiny_bert_victim().save(tmp_path / "bert")  # bd-vax purifies generators: it stops on this classifier
    out = tmp_path / "bd-vax"
    status, err = run(capsys, "defend", "--method", "bd-vax", "--model", bert, "--clean-data",
                      instruction_rows(tmp_path / "rows.jsonl", 40), "--out", out, "--device", "cpu")
    assert status == 2 and "classifier" in err
    assert not out.exists()


def test_a_folder_of_another_run_is_refused_naming_that_runs_method(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path, llama: Path) -> None:
    out = tmp_path / "defended"
    assert run(capsys, "defend", "--method", "none", "--model", llama, "--out", out, "--device", "cpu")[0] == 0
    status, err = run(capsys, "defend", "--method", "fine-tune", "--model", llama, "--clean-data",
                      instruction_rows(tmp_path / "rows.jsonl", 8), "--out", out, "--device", "cpu")
    assert status == 2 and "earlier none defense run" in err and "method" in err
