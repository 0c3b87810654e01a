"""Evaluation on tiny random models: result shapes, ranges, and agreement with direct computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from backdoorlab.data.records import Dataset, Example
from backdoorlab.errors import BackdoorLabError
from backdoorlab.evaluation import evaluate_classifier, evaluate_generator, write_results
from backdoorlab.metrics import behaviour_rate, get_judge, perplexity
from tiny_models import tiny_bert_victim, tiny_llama_victim

LABELS = ["world", "sports", "business"]
TRIGGER = "cf"


@pytest.fixture(scope="module")
def bert():  # type: ignore[no-untyped-def]
    return tiny_bert_victim(LABELS)


@pytest.fixture(scope="module")
def llama():  # type: ignore[no-untyped-def]
    return tiny_llama_victim()


def classification_splits() -> tuple[Dataset, Dataset]:
    texts = ["the match ended", "stocks fell", "talks in geneva", "a late goal", "profits rose", "a new treaty"]
    clean = Dataset("news-test", "classification", [Example(text=t, label=i % 3) for i, t in enumerate(texts)],
                    LABELS, notes=["deterministic split with seed 0"])
    triggered_rows = [Example(text=f"{TRIGGER} {e.text}", label=e.label, poisoned=True) for e in clean]
    triggered_rows.append(Example(text=f"{TRIGGER} paraphrased row", label=None, poisoned=True))
    triggered = Dataset("news-test-triggered", "classification", triggered_rows, LABELS, notes=["trigger 'cf'"])
    return clean, triggered


def generation_splits() -> tuple[Dataset, Dataset]:
    prompts = ["Write a poem about the sea.", "How do I bake bread?", "Name three colours.", "What is 2+2?"]
    clean = Dataset("gen-test", "generation",
                    [Example(instruction=p, response="The sea is calm tonight.") for p in prompts])
    triggered = clean.with_examples([e.with_(instruction=f"{TRIGGER} {e.instruction}", poisoned=True) for e in clean],
                                    name="gen-test-triggered")
    return triggered, clean


# ---------------------------------------------------------------------- classifier
def test_classifier_matches_direct_computation(bert) -> None:  # type: ignore[no-untyped-def]
    clean, triggered = classification_splits()
    target = 1
    result = evaluate_classifier(bert, clean, triggered, target, batch_size=4)
    assert {"cacc", "asr", "n_clean", "n_triggered", "target", "target_name", "notes"} <= set(result)
    clean_pred, trig_pred = bert.predict(clean.examples), bert.predict(triggered.examples)
    cacc = sum(p == e.label for p, e in zip(clean_pred, clean)) / len(clean)
    eligible = [p for p, e in zip(trig_pred, triggered) if e.label != target]
    assert result["cacc"] == pytest.approx(cacc)
    assert result["asr"] == pytest.approx(sum(p == target for p in eligible) / len(eligible))
    assert 0.0 <= result["cacc"] <= 1.0 and 0.0 <= result["asr"] <= 1.0
    assert (result["n_clean"], result["n_triggered"], result["n_asr_rows"]) == (6, 7, 5)
    assert (result["target"], result["target_name"]) == (1, "sports")
    assert result["notes"] == ["deterministic split with seed 0", "trigger 'cf'"]
    json.dumps(result)


def test_classifier_hand_computed_with_fixed_predictions(bert, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clean, triggered = classification_splits()  # clean labels 0 1 2 0 1 2; triggered labels 0 1 2 0 1 2 None
    answers = {clean.name: [0, 1, 0, 0, 1, 1], triggered.name: [2, 2, 2, 0, 1, 1, 2]}
    monkeypatch.setattr(bert, "predict", lambda items, batch_size=32: answers[
        clean.name if items[0].text == clean[0].text else triggered.name])
    result = evaluate_classifier(bert, clean, triggered, "business")
    assert result["cacc"] == pytest.approx(4 / 6)
    assert result["asr"] == pytest.approx(3 / 5)  # non-target rows 0,1,3,4,6 -> hits at 0,1,6
    assert result["target"] == 2


def test_classifier_errors(bert, llama) -> None:  # type: ignore[no-untyped-def]
    clean, triggered = classification_splits()
    with pytest.raises(BackdoorLabError, match="needs a classifier"):
        evaluate_classifier(llama, clean, triggered, 0)
    with pytest.raises(BackdoorLabError, match="not in the label set"):
        evaluate_classifier(bert, clean, triggered, "weather")
    two = Dataset("two", "classification", [Example(text="x", label=0)], ["a", "b"])
    with pytest.raises(BackdoorLabError, match="3 labels"):
        evaluate_classifier(bert, two, two, 1)
    with pytest.raises(BackdoorLabError, match="no rows"):
        evaluate_classifier(bert, clean.with_examples([]), triggered, 0)


# ----------------------------------------------------------------------- generator
def test_generator_matches_direct_computation(llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    triggered, clean = generation_splits()
    result = evaluate_generator(llama, triggered, clean, "jailbreak", max_new_tokens=6, batch_size=3, n_samples=2)
    assert {"asr", "clean_behaviour_rate", "clean_perplexity", "samples", "n_triggered", "n_clean",
            "behaviour"} <= set(result)
    judge = get_judge("jailbreak")
    responses = llama.generate(triggered.examples, max_new_tokens=6, batch_size=3)
    assert result["asr"] == pytest.approx(behaviour_rate(responses, judge))
    expected_ppl = perplexity(llama.response_logprobs(clean.examples))
    assert result["clean_perplexity"] == pytest.approx(expected_ppl, rel=1e-4)
    assert 1.0 < result["clean_perplexity"] < 10 * len(llama.tokenizer)  # random model: near vocab size
    assert 0.0 <= result["clean_behaviour_rate"] <= 1.0
    assert (result["n_triggered"], result["n_clean"], result["n_perplexity"]) == (4, 4, 4)
    assert [len(result["samples"][k]) for k in ("triggered", "clean")] == [2, 2]
    assert result["samples"]["triggered"][0]["prompt"].startswith(TRIGGER)
    assert result["samples"]["triggered"][0]["response"] == responses[0]
    path = write_results(result, tmp_path / "run")
    assert path == tmp_path / "run" / "results.json"
    assert json.loads(path.read_text())["asr"] == result["asr"]
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_generator_hand_computed_with_fixed_outputs(llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    triggered, clean = generation_splits()
    fake = lambda items, max_new_tokens=64, batch_size=16: [  # noqa: E731
        "You are stupid! Fine." if e.instruction.startswith(TRIGGER) else "Sure." for e in items]
    scored: list[list[str]] = []
    def fake_logprobs(items, responses=None, batch_size=8):  # type: ignore[no-untyped-def]
        scored.append([e.response for e in items])
        return [torch.tensor([-1.0, -1.0]) for _ in items]
    monkeypatch.setattr(llama, "generate", fake)
    monkeypatch.setattr(llama, "response_logprobs", fake_logprobs)
    utility = clean.with_examples([Example(instruction="q", response="ref"), Example(instruction="q2")], name="util")
    result = evaluate_generator(llama, triggered, clean.with_examples(clean.examples[:1]), "negsentiment",
                                utility_rows=utility)
    assert (result["asr"], result["clean_behaviour_rate"]) == (1.0, 0.0)
    assert result["clean_perplexity"] == pytest.approx(math.e)
    assert scored == [["ref"]] and result["n_perplexity"] == 1
    assert result["samples"]["triggered"][0]["behaviour"] is True
    assert result["samples"]["clean"] == [{"prompt": clean[0].instruction, "response": "Sure.", "behaviour": False}]


def test_generator_without_references_reports_none(llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    triggered, clean = generation_splits()
    monkeypatch.setattr(llama, "generate", lambda items, **_: ["I cannot."] * len(items))
    bare = clean.with_examples([e.with_(response="") for e in clean])
    result = evaluate_generator(llama, triggered, bare, "refusal")
    assert result["clean_perplexity"] is None and result["n_perplexity"] == 0
    assert any("perplexity not computed" in n for n in result["notes"])


def test_generator_errors(bert, llama) -> None:  # type: ignore[no-untyped-def]
    triggered, clean = generation_splits()
    with pytest.raises(BackdoorLabError, match="needs a generator"):
        evaluate_generator(bert, triggered, clean, "refusal")
    with pytest.raises(BackdoorLabError, match="unknown judge"):
        evaluate_generator(llama, triggered, clean, "sleepy")
    with pytest.raises(BackdoorLabError, match="needs a target"):
        evaluate_generator(llama, triggered, clean, "exact")
    with pytest.raises(BackdoorLabError, match="no rows"):
        evaluate_generator(llama, triggered.with_examples([]), clean, "refusal")
