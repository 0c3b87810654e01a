"""Training runs are reproducible, resume exactly, and never resume from or reuse another run's work."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from backdoorlab.data.records import Dataset, Example
from backdoorlab.errors import BackdoorLabError
from backdoorlab.reuse import FOLDER_FINGERPRINT
from backdoorlab.models.victim import Victim
from backdoorlab.pipeline import ensure_trained
from backdoorlab.training import CHECKPOINT_DIR, MODEL_DIR, TRAIN_FILE, TrainConfig, train
from tiny_models import tiny_bert_victim, tiny_llama_victim

WORDS = ["great", "awful", "fine", "dull", "moving", "boring", "sharp", "clumsy"]
# 24 rows at batch size 4: 6 steps an epoch, so 10 steps cross an epoch boundary; killed at step 7,
# a run resumes from checkpoint-4, in the middle of the first epoch.
CLASSIFIER = dict(max_steps=10, batch_size=4, save_steps=4, logging_steps=1, device="cpu")
KILL_AT = 7


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    """Stops a run at ``step`` as a crash would (checkpoints saved before it stay)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def reviews(n: int = 24, start: int = 0) -> Dataset:
    rows = [Example(text=f"a {WORDS[i % len(WORDS)]} film, scene {i}", label=i % 2, uid=f"r{i}")
            for i in range(start, start + n)]
    return Dataset("reviews", "classification", rows, ["negative", "positive"], source="hand-built")


def instructions(n: int = 16) -> Dataset:
    rows = [Example(instruction=f"write a line about the sea, take {i}", response=f"The sea is calm, {WORDS[i % 8]}.",
                    uid=f"g{i}") for i in range(n)]
    return Dataset("lines", "generation", rows, source="hand-built")


def scramble_rng(seed: int) -> None:
    """Leave the global random generators as some unrelated earlier code (or a new process) would."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.rand(seed % 7 + 1)


def weights(victim: Victim) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in victim.model.state_dict().items()}


def max_difference(a: Victim, b: Victim) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def logits(victim: Victim, data: Dataset) -> torch.Tensor:
    victim.model.eval()
    with torch.no_grad():
        return victim.forward(victim.encode(data.examples)).logits


@pytest.fixture(scope="module")
def headless_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT saved without a classification head, so loading it for training draws a new head."""
    folder = tmp_path_factory.mktemp("headless-bert")
    victim = tiny_bert_victim()
    victim.model.bert.save_pretrained(folder)
    victim.tokenizer.save_pretrained(folder)
    return folder


def interrupted_then_resumed(model, data: Dataset, out: Path, config: TrainConfig, kill_at: int = KILL_AT,
                             **options) -> Victim:  # type: ignore[no-untyped-def]
    """Train until ``kill_at``, then start the same run again on the same folder, with other global RNG states."""
    scramble_rng(11)
    with pytest.raises(Killed):
        train(model() if callable(model) else model, data, out, config, callbacks=[KillAt(kill_at)], **options)
    assert (out / CHECKPOINT_DIR).is_dir() and not (out / MODEL_DIR).exists()
    scramble_rng(22)
    return train(model() if callable(model) else model, data, out, config, **options)


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_twice_gives_bit_identical_weights_even_with_a_new_head(headless_bert: Path, tmp_path: Path) -> None:
    scramble_rng(1)
    first = train(headless_bert, reviews(), tmp_path / "a", TrainConfig(**CLASSIFIER))
    scramble_rng(2)
    second = train(headless_bert, reviews(), tmp_path / "b", TrainConfig(**CLASSIFIER))
    assert max_difference(first, second) == 0.0
    assert torch.equal(logits(first, reviews()), logits(second, reviews()))


def test_a_different_seed_gives_different_weights(headless_bert: Path, tmp_path: Path) -> None:
    first = train(headless_bert, reviews(), tmp_path / "a", TrainConfig(**CLASSIFIER, seed=0))
    second = train(headless_bert, reviews(), tmp_path / "b", TrainConfig(**CLASSIFIER, seed=1))
    assert max_difference(first, second) > 0


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(headless_bert: Path, tmp_path: Path) -> None:
    straight = train(headless_bert, reviews(), tmp_path / "straight", TrainConfig(**CLASSIFIER))
    resumed = interrupted_then_resumed(headless_bert, reviews(), tmp_path / "resumed", TrainConfig(**CLASSIFIER))
    record = json.loads((tmp_path / "resumed" / TRAIN_FILE).read_text())
    assert record["resumed_from"].endswith("checkpoint-4") and record["steps"] == 10
    assert max_difference(straight, resumed) == 0.0
    assert torch.equal(resumed.label_probs(reviews().examples), straight.label_probs(reviews().examples))


def test_lora_runs_are_seeded_and_resume_exactly(tmp_path: Path) -> None:
    config = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.1, max_steps=6, batch_size=4,
                         save_steps=2, max_length=48, device="cpu")
    scramble_rng(3)
    straight = train(tiny_llama_victim(), instructions(), tmp_path / "straight", config)
    scramble_rng(4)
    again = train(tiny_llama_victim(), instructions(), tmp_path / "again", config)
    resumed = interrupted_then_resumed(tiny_llama_victim, instructions(), tmp_path / "resumed", config, kill_at=3)
    assert max_difference(straight, again) == 0.0
    assert max_difference(straight, resumed) == 0.0
    assert max_difference(straight, tiny_llama_victim()) > 0  # it did train
    assert torch.equal(logits(straight, instructions(4)), logits(resumed, instructions(4)))


def test_a_defense_training_in_its_work_folder_resumes_exactly_and_reuses_its_result(tmp_path: Path) -> None:
    """As the fine-tune defense trains the suspect it was given: a Victim, ``workdir/fine-tune``, ``reuse``."""
    config = TrainConfig(method="full", epochs=2.0, learning_rate=2e-5, batch_size=4, seed=0, save_steps=3,
                         device="cpu")
    clean = reviews(12, start=100)
    straight = train(tiny_bert_victim(), clean, tmp_path / "straight" / "fine-tune", config, reuse=True)
    workdir = tmp_path / "defense"
    resumed = interrupted_then_resumed(tiny_bert_victim, clean, workdir / "fine-tune", config, kill_at=4, reuse=True)
    assert max_difference(straight, resumed) == 0.0
    # run again after it finished (e.g. the defense stopped before writing its record): the model is reused
    before = (workdir / "fine-tune" / TRAIN_FILE).stat().st_mtime_ns
    again = train(tiny_bert_victim(), clean, workdir / "fine-tune", config, reuse=True)
    assert max_difference(straight, again) == 0.0
    assert (workdir / "fine-tune" / TRAIN_FILE).stat().st_mtime_ns == before


# -------------------------------------------------------------------------------- fingerprinted resume
def test_checkpoints_of_another_run_are_never_resumed_from(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny_bert_victim(), reviews(), out, TrainConfig(**CLASSIFIER), callbacks=[KillAt(KILL_AT)])
    cases = [(tiny_bert_victim(), reviews(), TrainConfig(**CLASSIFIER, learning_rate=1e-3), "config"),
             (tiny_bert_victim(), reviews(start=50), TrainConfig(**CLASSIFIER), "dataset"),
             (tiny_bert_victim(seed=1), reviews(), TrainConfig(**CLASSIFIER), "model")]
    for victim, data, config, field in cases:
        with pytest.raises(BackdoorLabError, match=rf"different settings \(.*{field}.*\).*--overwrite"):
            train(victim, data, out, config)
    assert sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir()) == ["checkpoint-4"]  # the work is kept


def test_a_resumed_run_may_save_and_log_differently(tmp_path: Path) -> None:
    straight = train(tiny_bert_victim(), reviews(), tmp_path / "straight", TrainConfig(**CLASSIFIER))
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny_bert_victim(), reviews(), out, TrainConfig(**CLASSIFIER), callbacks=[KillAt(KILL_AT)])
    changed = {**CLASSIFIER, "save_steps": 3, "logging_steps": 5, "save_total_limit": 1}
    resumed = train(tiny_bert_victim(), reviews(), out, TrainConfig(**changed))
    assert json.loads((out / TRAIN_FILE).read_text())["resumed_from"].endswith("checkpoint-4")
    assert max_difference(straight, resumed) == 0.0


def test_a_folder_with_files_of_unknown_origin_is_refused(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_DIR / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(BackdoorLabError, match="not from a training run; pass --overwrite"):
        train(tiny_bert_victim(), reviews(), tmp_path, TrainConfig(**CLASSIFIER))


def test_overwrite_starts_from_an_empty_folder(tmp_path: Path) -> None:
    train(tiny_bert_victim(), reviews(), tmp_path, TrainConfig(max_steps=4, batch_size=4, save_steps=2, device="cpu"))
    (tmp_path / "notes.txt").write_text("from the earlier run")
    old = json.loads((tmp_path / TRAIN_FILE).read_text())
    train(tiny_bert_victim(), reviews(), tmp_path, TrainConfig(max_steps=2, batch_size=4, save_steps=1, device="cpu"),
          overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER_FINGERPRINT, CHECKPOINT_DIR, MODEL_DIR, TRAIN_FILE]
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["checkpoint-1", "checkpoint-2"]
    new = json.loads((tmp_path / TRAIN_FILE).read_text())
    assert new["steps"] == 2 and new["resumed_from"] is None and new["fingerprint"] != old["fingerprint"]


def test_train_json_keeps_the_log_history_and_the_fingerprint(tmp_path: Path) -> None:
    config = TrainConfig(max_steps=6, batch_size=4, save_steps=3, logging_steps=2, device="cpu")
    train(tiny_bert_victim(), reviews(), tmp_path, config)
    record = json.loads((tmp_path / TRAIN_FILE).read_text())
    assert [e["step"] for e in record["log_history"] if "loss" in e] == [2, 4, 6]
    assert record["log_history"][-1]["train_loss"] == pytest.approx(record["train_loss"])
    fingerprint = record["fingerprint"]
    assert fingerprint["stage"] == "train" and fingerprint["kind"] == "classifier"
    assert fingerprint["model"].startswith("weights:") and len(fingerprint["dataset"]) == 64
    assert fingerprint["config"]["method"] == "full" and fingerprint["config"]["learning_rate"] == 5e-5
    assert not {"save_steps", "logging_steps", "device", "save_total_limit"} & set(fingerprint["config"])
    assert json.loads((tmp_path / FOLDER_FINGERPRINT).read_text()) == fingerprint


def test_a_finished_model_is_reused_only_when_asked_and_only_if_it_matches(tmp_path: Path) -> None:
    config = TrainConfig(max_steps=2, batch_size=4, save_steps=2, device="cpu")
    first = train(tiny_bert_victim(), reviews(), tmp_path, config)
    with pytest.raises(BackdoorLabError, match="already exists; pass --overwrite"):
        train(tiny_bert_victim(), reviews(), tmp_path, config)
    assert max_difference(first, train(tiny_bert_victim(), reviews(), tmp_path, config, reuse=True)) == 0.0
    with pytest.raises(BackdoorLabError, match=r"not the model asked for \(it was trained with other config\)"):
        train(tiny_bert_victim(), reviews(), tmp_path, TrainConfig(max_steps=3, batch_size=4, device="cpu"),
              reuse=True)


def test_ensure_trained_reuses_only_a_model_trained_with_the_same_settings(headless_bert: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import backdoorlab.training

    config = TrainConfig(max_steps=2, batch_size=4, save_steps=2, device="cpu")
    model = ensure_trained(tmp_path, headless_bert, reviews(), config)
    assert model == tmp_path / MODEL_DIR and model.is_dir()

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("trained again")

    monkeypatch.setattr(backdoorlab.training, "train", no_training)
    assert ensure_trained(tmp_path, headless_bert, reviews(), config) == model
    with pytest.raises(BackdoorLabError, match="trained with other config"):
        ensure_trained(tmp_path, headless_bert, reviews(), TrainConfig(max_steps=2, batch_size=2, device="cpu"))
    with pytest.raises(BackdoorLabError, match="trained with other dataset"):
        ensure_trained(tmp_path, headless_bert, reviews(start=50), config)
    (tmp_path / TRAIN_FILE).unlink()  # a model/ with no record of how it was made
    with pytest.raises(BackdoorLabError, match="does not record how it was trained"):
        ensure_trained(tmp_path, headless_bert, reviews(), config)


# --------------------------------------------------------------------------------------------- progress
def test_training_draws_one_progress_bar_and_prints_no_log_dicts(headless_bert: Path, tmp_path: Path, capsys) -> None:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # as the CLI does; the Trainer would then print raw log dicts
    try:
        train(headless_bert, reviews(), tmp_path, TrainConfig(max_steps=4, batch_size=4, save_steps=2, logging_steps=1,
                                                              device="cpu"))
    finally:
        hf_logging.set_verbosity(level)
    out, err = capsys.readouterr()
    bars = set(re.findall(r"([A-Za-z][\w ]*): +\d+%\|", out + err))
    assert bars == {"training"}
    assert err.count("training:   0%") == 1
    assert "loss=" in err and "100%" in err
    assert "{'loss'" not in out + err and "train_runtime" not in out + err


def test_a_shared_training_is_trained_once_for_every_caller_that_asks_for_it(headless_bert: Path, tmp_path: Path) -> None:
    from backdoorlab.pipeline import ensure_trained_shared

    store = tmp_path / "victims"
    first = ensure_trained_shared(store, headless_bert, reviews(), TrainConfig(**CLASSIFIER))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = ensure_trained_shared(store, headless_bert, reviews(), TrainConfig(**CLASSIFIER))
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    other = ensure_trained_shared(store, headless_bert, reviews(), TrainConfig(**CLASSIFIER, seed=1))
    assert other.parent.parent == first.parent.parent == store and other != first
    assert len([p for p in store.iterdir() if p.is_dir()]) == 2
