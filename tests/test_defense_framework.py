"""The defense framework: the defender's data view, guards and stages in the runner, the simple
baselines, and the CLI around them (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdoorlab.cli import main
from backdoorlab.defenses import (
    INPUTS,
    REJECTED,
    DefenderInputs,
    Guard,
    gather_inputs,
    list_defenses,
    load_guard,
    register_guard,
    save_guard,
)
from backdoorlab.defenses.badllm_tg.defense import _holds
from backdoorlab.defenses.badllm_tg.trigger_pattern import TriggerPattern
from backdoorlab.defenses.runner import run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.evaluation import evaluate_classifier
from backdoorlab.models.loading import load_victim
from backdoorlab.pipeline import read_attack_run, run_attack
from tiny_models import tiny_bert_victim


@pytest.fixture
def attack_run(tmp_path: Path, shared_data_dir: Path) -> Path:
    return run_attack("sst2", "badnets", tmp_path / "attack", rate=0.25, target=1, max_train=16, max_test=8)


def test_the_defender_sees_no_poison_flags_and_clean_rows_from_outside_the_attack(attack_run: Path,
                                                                                 shared_data_dir: Path) -> None:
    inputs = gather_inputs(tuple(INPUTS), attack_run=attack_run)
    assert len(inputs.training_data) == 16 and not any(e.poisoned or e.poison for e in inputs.training_data)
    assert inputs.clean_rows is not None and all(e.uid.startswith("sst2/dev/") for e in inputs.clean_rows)
    assert inputs.target_label is None and inputs.reference_model is None  # never derived from the attack run
    agnews = run_attack("agnews", "badnets", attack_run.parent / "ag", rate=0.25, target=1, max_train=12, max_test=8)
    _, test_clean, test_triggered = read_attack_run(agnews)
    held = {json.loads(line)["uid"] for line in (agnews / "train" / "data.jsonl").read_text().splitlines()}
    held |= {e.uid for e in [*test_clean, *test_triggered]}
    reference = gather_inputs(["clean_rows"], attack_run=agnews).require("clean_rows", "test")
    assert len(reference) > 0
    assert not held & {e.uid for e in reference}  # AG News has no dev split: training rows the run does not hold
    with pytest.raises(BackdoorLabError, match="not an attack run"):
        gather_inputs(["clean_rows"], attack_run=attack_run.parent)
    with pytest.raises(BackdoorLabError, match="needs the suspect's training rows"):
        DefenderInputs().require("training_data", "some-defense")


def test_oracle_examples_are_disjoint_from_every_evaluated_row(tmp_path: Path, shared_data_dir: Path) -> None:
    run = run_attack("sst2", "badnets", tmp_path / "attack", rate=0.25, target=1, max_train=40, max_test=12)
    _, clean, triggered = read_attack_run(run)
    oracle = gather_inputs(["oracle"], attack_run=run).oracle
    assert oracle is not None and len(oracle.clean) > 0 and len(oracle.triggered) > 0
    evaluated = {e.uid for e in [*clean, *triggered]} | {e.text for e in [*clean, *triggered]}
    assert not evaluated & ({e.uid for e in oracle.clean} | {e.text for e in oracle.triggered})
    assert all(e.label != 1 for e in oracle.triggered)  # non-target rows, as in a triggered test set
    assert not any(e.poisoned for e in oracle.clean)


class _RejectOdd(Guard):
    name = "test-reject-odd"

    def predict(self, victim, items, batch_size=32):  # type: ignore[no-untyped-def]
        return [REJECTED if i % 2 else 1 for i in range(len(items))]

    def state(self):  # type: ignore[no-untyped-def]
        return {"kind": "odd"}

    @classmethod
    def from_state(cls, state):  # type: ignore[no-untyped-def]
        return cls()


register_guard(_RejectOdd)


def test_rejections_never_count_as_attack_success_and_always_cost_accuracy(attack_run: Path, tmp_path: Path) -> None:
    _, clean, triggered = read_attack_run(attack_run)
    guard = _RejectOdd()
    metrics = evaluate_classifier(tiny_bert_victim(), clean, triggered, 1,
                                  predict=lambda rows, size: guard.predict(None, rows, size))
    n_triggered = len(triggered)
    assert metrics["asr"] == pytest.approx(((n_triggered + 1) // 2) / n_triggered)
    assert metrics["rejected"] == {"clean": len(clean) // 2, "triggered": n_triggered // 2}
    save_guard(guard, tmp_path)
    assert isinstance(load_guard(tmp_path), _RejectOdd)
    (tmp_path / "guard.json").write_text("{not json")
    with pytest.raises(BackdoorLabError, match="not a valid guard.json"):
        load_guard(tmp_path)
    with pytest.raises(BackdoorLabError, match="holds no guard.json"):
        load_guard(tmp_path / "nowhere")


def test_no_defense_and_clean_fine_tuning_through_the_runner(attack_run: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    from backdoorlab.models import loading

    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    original = loading.load_victim(suspect, device="cpu").model.state_dict()
    loaded: list = []  # every model the runner loads: the one the defense is handed, and those it evaluates
    load = loading.load_victim

    def recording_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    def all_unchanged() -> bool:
        states = [victim.model.state_dict() for victim in loaded]
        return all(s.keys() == original.keys() and all(torch.equal(s[k], original[k]) for k in original) for s in states)

    monkeypatch.setattr(loading, "load_victim", recording_load)
    none = run_defense("none", suspect, attack_run, tmp_path / "none", max_eval_rows=8, device="cpu")
    record = json.loads((tmp_path / "none" / "defense.json").read_text())
    assert record["defended_model"] == str(suspect) and record["guard"] is None
    assert not (tmp_path / "none" / "model").exists() and none["after"] == none["before"]
    assert loaded and all_unchanged()  # "none" left the weights it was handed as they were
    loaded.clear()
    tuned = run_defense("fine-tune", suspect, attack_run, tmp_path / "ft", max_eval_rows=8, device="cpu",
                        options={"max_clean": 8, "epochs": 1, "batch_size": 4})
    assert not all_unchanged()  # the same check sees a real defense's edit
    assert (tmp_path / "ft" / "model" / "victim.json").is_file() and "cacc" in tuned["after"]
    assert json.loads((tmp_path / "ft" / "defense.json").read_text())["findings"]["clean_rows"] == 8
    with pytest.raises(BackdoorLabError, match="baseline .* does not exist"):
        run_defense("muscle-lora", suspect, attack_run, tmp_path / "m", baseline=tmp_path / "missing.json")
    stages = {name: description.split("]")[0] for name, description, _ in list_defenses()}
    assert stages["muscle-lora"] == "[training" and stages["onion"] == "[inference" and stages["badllm-tg"] == "[post-training"


def test_holds_matches_whole_trigger_words_only() -> None:
    patterns = [TriggerPattern(phrases=["cf"]), TriggerPattern(phrases=["i watch this 3d movie"])]
    assert _holds("a cf film", patterns) and _holds("I watch this 3D movie. Great", patterns)
    assert not _holds("a cfo film", patterns) and not _holds("i watch this movie", patterns)


def test_evaluate_cli_predicts_through_a_guard(capsys: pytest.CaptureFixture[str], attack_run: Path,
                                               tmp_path: Path) -> None:
    suspect = tiny_bert_victim().save(tmp_path / "suspect")
    save_guard(_RejectOdd(), tmp_path / "guarded")
    status = main(["evaluate", "--model", str(suspect), "--data", str(attack_run), "--guard", str(tmp_path / "guarded"),
                   "--out", str(tmp_path / "results.json"), "--device", "cpu"])
    assert status == 0
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert metrics["rejected"]["clean"] == 4 and metrics["guard"] == str(tmp_path / "guarded")
    status = main(["defend", "--method", "muscle-lora", "--model", str(suspect), "--data", str(attack_run),
                   "--out", str(tmp_path / "m"), "--option", "rank=0"])
    assert status == 2 and "rank" in capsys.readouterr().err


def test_fine_tuning_a_generator_trains_a_lora_adapter_on_clean_instruction_rows(tmp_path: Path) -> None:
    from tiny_models import tiny_llama_victim

    model = tiny_llama_victim()
    model.max_length = 48  # not the training default (256): fine-tuning keeps the suspect's own limit
    suspect = model.save(tmp_path / "suspect")
    rows = [{"instruction": f"write a line about topic {i}", "output": f"The sea is calm {i}."} for i in range(8)]
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(rows))
    result = run_defense("fine-tune", suspect, None, tmp_path / "ft", clean_data=clean, device="cpu",
                         options={"epochs": 1, "batch_size": 4})
    assert result["model"] == str(tmp_path / "ft" / "model")
    findings = json.loads((tmp_path / "ft" / "defense.json").read_text())["findings"]
    assert findings["method"] == "lora" and findings["learning_rate"] == 2e-4 and findings["clean_rows"] == 8
    train_record = json.loads((tmp_path / "ft" / "fine-tune" / "train.json").read_text())
    assert train_record["config"]["method"] == "lora" and train_record["steps"] == 2
    assert train_record["config"]["max_length"] == load_victim(suspect, device="cpu").max_length == 48
    with pytest.raises(BackdoorLabError, match="full or lora"):
        run_defense("fine-tune", suspect, None, tmp_path / "x", clean_data=clean, options={"method": "qlora"})
