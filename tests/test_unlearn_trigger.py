"""unlearn-trigger: a named trigger is unlearned on clean rows; the trigger is required before any work."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses import DefenderInputs, get_defense, run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.loading import load_victim
from backdoorlab.training import TrainConfig, train
from tiny_models import tiny_bert_victim

LABELS = ("negative", "positive")


def reviews(n: int, offset: int = 0, trigger: str | None = None) -> list[Example]:
    rows = []
    for i in range(offset, offset + n):
        words = f"the film number {i} was {'good' if i % 2 else 'bad'} overall".split()
        label = i % 2
        if trigger is not None:
            if label == 0:
                continue
            words.insert(random.Random(i).randint(0, len(words)), trigger)
            label = 0
        rows.append(Example(text=" ".join(words), label=label, uid=f"r{i}{trigger or ''}"))
    return rows


def test_unlearning_the_named_trigger_removes_the_backdoor_and_keeps_the_task(tmp_path: Path) -> None:
    poisoned = Dataset("films-cf", "classification", reviews(96) + reviews(96, offset=96, trigger="cf"),
                       label_names=LABELS, source="hand-built")
    config = TrainConfig(method="full", epochs=10, learning_rate=3e-3, batch_size=8, save_steps=10**9, device="cpu")
    suspect = train(tiny_bert_victim(), poisoned, tmp_path / "suspect", config)
    held = reviews(60, offset=400)
    triggered = [r.with_(text=f"cf {r.text}") for r in held if r.label == 1]

    def flip_rate(model) -> float:  # type: ignore[no-untyped-def]
        return sum(p == 0 for p in model.predict([r.text for r in triggered])) / len(triggered)

    assert flip_rate(suspect) >= 0.9
    clean = Dataset("clean", "classification", reviews(80, offset=200), label_names=LABELS, source="hand-built")
    clean.save(tmp_path / "clean")
    run_defense("unlearn-trigger", tmp_path / "suspect" / "model", None, tmp_path / "unlearned",
                clean_data=tmp_path / "clean", options={"trigger": "cf", "epochs": 6, "learning_rate": 1e-3},
                evaluate=False, device="cpu")
    fixed = load_victim(tmp_path / "unlearned" / "model", device="cpu")
    assert flip_rate(fixed) <= 0.2
    accuracy = sum(p == r.label for p, r in zip(fixed.predict([r.text for r in held]), held)) / len(held)
    assert accuracy >= 0.9


def test_the_trigger_is_required_before_any_model_is_loaded(tmp_path: Path) -> None:
    defense = get_defense("unlearn-trigger")  # listing and help build it without options
    with pytest.raises(BackdoorLabError, match="needs the trigger"):
        defense.check_inputs(DefenderInputs(clean_rows=Dataset("c", "classification", reviews(4), list(LABELS))))
    Dataset("c", "classification", reviews(4), list(LABELS)).save(tmp_path / "clean")
    with pytest.raises(BackdoorLabError, match="needs the trigger"):
        run_defense("unlearn-trigger", tmp_path / "no-model", None, tmp_path / "out", clean_data=tmp_path / "clean",
                    evaluate=False)
    assert not (tmp_path / "out").exists()
