"""Class weighting of a classifier's training loss (``TrainConfig.class_weighting``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from backdoorlab.data.records import Dataset, Example
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import (
    TRAIN_FILE,
    ClassWeightedLoss,
    TrainConfig,
    class_weights,
    train,
    train_fingerprint,
    training_collator,
    training_features,
)
from tiny_models import tiny_bert_victim

WORDS = ["great", "awful", "fine", "dull", "moving", "boring"]
RUN = dict(max_steps=3, batch_size=4, save_steps=10**9, logging_steps=1, device="cpu")


def rows(labels: list[int], label_names: tuple[str, ...] = ("negative", "positive")) -> Dataset:
    examples = [Example(text=f"a {WORDS[i % len(WORDS)]} film, scene {i}", label=label, uid=f"r{i}")
                for i, label in enumerate(labels)]
    return Dataset("reviews", "classification", examples, list(label_names), source="hand-built")


def test_balanced_weights_are_rows_over_labels_times_count_and_zero_for_an_absent_label() -> None:
    weights = class_weights(rows([0, 0, 0, 0, 0, 1, 1, 1], ("a", "b", "c")))
    assert weights.tolist() == pytest.approx([8 / (3 * 5), 8 / (3 * 3), 0.0])
    assert class_weights(rows([0, 1, 1, 0])).tolist() == [1.0, 1.0]


def test_the_weighted_loss_of_a_batch_is_the_hand_computed_weighted_cross_entropy() -> None:
    data = rows([0, 0, 0, 1, 0, 0])  # weights 6/(2*5) = 0.6 and 6/(2*1) = 3
    victim = tiny_bert_victim()
    victim.model.eval()  # no dropout: the loss and the reference see the same logits
    batch = training_collator(victim)(training_features(victim, data, 32))
    weights = class_weights(data)
    assert weights.tolist() == pytest.approx([0.6, 3.0])

    loss = ClassWeightedLoss(weights).loss(victim.model, batch)

    with torch.no_grad():
        logits = victim.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.0
    for row, label in zip(logits.tolist(), batch["labels"].tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += weights[label].item() * (log_z - row[label])
    expected /= len(data)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    unweighted = victim.model(**batch).loss.item()  # the model's own (plain mean) cross-entropy
    assert abs(loss.item() - unweighted) > 1e-3, "the weights must change the loss on imbalanced rows"
    assert ClassWeightedLoss(torch.ones(2)).loss(victim.model, batch).item() == pytest.approx(unweighted, rel=1e-5)
    loss.backward()  # it trains: gradients reach the weights
    assert victim.model.classifier.weight.grad is not None


def test_balanced_training_uses_the_weighted_loss_and_records_it(tmp_path: Path) -> None:
    data = rows([0] * 10 + [1] * 2)
    plain = train(tiny_bert_victim(), data, tmp_path / "none", TrainConfig(**RUN))
    weighted = train(tiny_bert_victim(), data, tmp_path / "balanced", TrainConfig(**RUN, class_weighting="balanced"))
    difference = max((a - b).abs().max().item() for a, b in
                     zip(plain.model.state_dict().values(), weighted.model.state_dict().values()))
    assert difference > 0, "balanced weighting must change what an imbalanced run learns"
    record = json.loads((tmp_path / "balanced" / TRAIN_FILE).read_text())
    assert record["config"]["class_weighting"] == "balanced"
    assert record["class_weights"] == pytest.approx([12 / 20, 12 / 4])
    assert "class_weights" not in json.loads((tmp_path / "none" / TRAIN_FILE).read_text())


def test_balanced_training_on_balanced_rows_is_plain_training(tmp_path: Path) -> None:
    data = rows([0, 1] * 6)  # every weight 1: the same loss as the model's own
    plain = train(tiny_bert_victim(), data, tmp_path / "none", TrainConfig(**RUN))
    weighted = train(tiny_bert_victim(), data, tmp_path / "balanced", TrainConfig(**RUN, class_weighting="balanced"))
    for a, b in zip(plain.model.state_dict().values(), weighted.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_class_weighting_is_part_of_the_fingerprint_and_none_leaves_it_as_before() -> None:
    data = rows([0, 0, 1])
    none = train_fingerprint("m", "classifier", data, TrainConfig())
    balanced = train_fingerprint("m", "classifier", data, TrainConfig(class_weighting="balanced"))
    assert balanced["config"]["class_weighting"] == "balanced"
    assert "class_weighting" not in none["config"]  # runs from before the option stay current
    assert none != balanced


def test_bad_class_weighting_values_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="none, balanced.*'inverse'"):
        TrainConfig(class_weighting="inverse").resolved("classifier")
    with pytest.raises(BackdoorLabError, match="classifier"):
        TrainConfig(class_weighting="balanced").resolved("generator")
    assert TrainConfig.from_dict({"class_weighting": "balanced"}).resolved("classifier").class_weighting == "balanced"

    class Objective:
        name = "mine"

        def settings(self):  # type: ignore[no-untyped-def]
            return {}

        def loss(self, model, inputs):  # type: ignore[no-untyped-def]
            return model(**inputs).loss

    with pytest.raises(BackdoorLabError, match="one or the other"):
        train(tiny_bert_victim(), rows([0, 1]), tmp_path / "run", TrainConfig(**RUN, class_weighting="balanced"),
              objective=Objective())


def test_the_train_command_takes_class_weighting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 shared_data_dir: Path) -> None:
    from backdoorlab.cli import main

    base = tiny_bert_victim().save(tmp_path / "base")
    status = main(["train", "--model", str(base), "--data", "hsol", "--out", str(tmp_path / "run"), "--max-rows", "12",
                   "--max-steps", "1", "--batch-size", "4", "--class-weighting", "balanced", "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / TRAIN_FILE).read_text())
    assert record["config"]["class_weighting"] == "balanced" and len(record["class_weights"]) == 2
