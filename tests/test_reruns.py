"""Nothing a user made is overwritten silently: the same command reuses its output, a different one
stops naming what differs, ``--overwrite`` replaces it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdoorlab.cli import main
from backdoorlab.defenses import Guard, save_guard
from tiny_models import tiny_bert_victim


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class _AlwaysPositive(Guard):
    name = "test-always-positive"

    def predict(self, victim, items, batch_size=32):  # type: ignore[no-untyped-def]
        return [1 for _ in items]

    def state(self):  # type: ignore[no-untyped-def]
        return {}

    @classmethod
    def from_state(cls, state):  # type: ignore[no-untyped-def]
        return cls()


@pytest.fixture
def attack_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data_dir: Path) -> Path:
    out = tmp_path / "attack"
    status, _, err = run(capsys, "attack", "--dataset", "sst2", "--attack", "badnets", "--rate", "0.25", "--target", "1",
                         "--out", out, "--max-train", "16", "--max-test", "8")
    assert status == 0, err
    return out


def test_a_guarded_evaluation_keeps_the_baseline_the_defense_is_compared_with(
        capsys: pytest.CaptureFixture[str], attack_run: Path, tmp_path: Path) -> None:
    from backdoorlab.defenses import register_guard

    register_guard(_AlwaysPositive)
    victim = tmp_path / "victim"
    tiny_bert_victim().save(victim / "model")
    (victim / "train.json").write_text("{}")  # a training run folder: results go beside model/
    assert run(capsys, "evaluate", "--model", victim / "model", "--data", attack_run, "--device", "cpu")[0] == 0
    baseline = (victim / "results.json").read_text()
    save_guard(_AlwaysPositive(), tmp_path / "onion")
    status, out, err = run(capsys, "evaluate", "--model", victim / "model", "--data", attack_run, "--guard",
                           tmp_path / "onion", "--device", "cpu")
    assert status == 0, err
    assert (victim / "results.json").read_text() == baseline  # the unguarded evaluation is kept
    guarded = out.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert Path(guarded) != victim / "results.json"
    assert json.loads(Path(guarded).read_text())["metrics"]["guard"] == str(tmp_path / "onion")


def test_evaluate_reuses_its_result_and_stops_on_other_settings(capsys: pytest.CaptureFixture[str], attack_run: Path,
                                                                tmp_path: Path) -> None:
    model = tiny_bert_victim().save(tmp_path / "model")
    results = tmp_path / "results.json"
    command = ["evaluate", "--model", model, "--data", attack_run, "--out", results, "--device", "cpu"]
    assert run(capsys, *command)[0] == 0
    written = results.stat().st_mtime_ns
    status, out, _ = run(capsys, *command)
    assert status == 0 and "reused" in out and results.stat().st_mtime_ns == written  # not recomputed
    status, _, err = run(capsys, *command, "--max-rows", "4")
    assert status == 2 and "different settings" in err and "clean" in err and "--overwrite" in err
    assert results.stat().st_mtime_ns == written
    assert run(capsys, *command, "--max-rows", "4", "--overwrite")[0] == 0
    assert json.loads(results.read_text())["metrics"]["n_clean"] == 4


def test_attack_rerun_reuses_the_run_and_stops_on_other_settings(capsys: pytest.CaptureFixture[str],
                                                                 attack_run: Path) -> None:
    command = ["attack", "--dataset", "sst2", "--attack", "badnets", "--target", "1", "--out", attack_run,
               "--max-train", "16", "--max-test", "8"]
    manifest = attack_run / "manifest.json"
    written = manifest.stat().st_mtime_ns
    status, out, err = run(capsys, *command, "--rate", "0.25")
    assert status == 0, err
    assert "reused" in out and manifest.stat().st_mtime_ns == written
    status, _, err = run(capsys, *command, "--rate", "0.5")
    assert status == 2 and "different settings" in err and "rate" in err and "--overwrite" in err
    assert manifest.stat().st_mtime_ns == written
    assert run(capsys, *command, "--rate", "0.5", "--overwrite")[0] == 0
    assert json.loads(manifest.read_text())["rate"] == 0.5
