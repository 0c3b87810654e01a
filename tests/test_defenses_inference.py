"""Inference-time defenses: ONION (perplexity-based word removal) and RAP (robustness-aware perturbation)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from backdoorlab.defenses.base import get_defense
from backdoorlab.defenses.guard import REJECTED, load_guard
from backdoorlab.defenses.onion import OnionGuard, suspicion_scores
from backdoorlab.defenses.onion.lm_perplexity import PerplexityScorer
from backdoorlab.defenses.rap import RapGuard, embedding_row, optimise_row, word_token
from backdoorlab.defenses.runner import run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.pipeline import run_attack
from defender import defender_view
from tiny_models import tiny_bert_victim, tiny_llama_victim

TEXTS = ["the movie was great", "a dull and boring film with bad actors", "hi", "",
         "the quick brown fox jumps over the lazy dog"]
FLUENT = ["the movie was great and the actors were wonderful", "the quick brown fox jumps over the lazy dog",
          "a dull and boring film with bad actors", "sports business and world news of the day"]


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("inference") / "attack"
    return run_attack("sst2", "badnets", folder, rate=0.2, target=1, max_train=10, max_test=24)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------ ONION


def test_batched_perplexity_equals_one_at_a_time_and_the_model_loss() -> None:
    lm = tiny_llama_victim()
    scorer = PerplexityScorer(lm)
    assert scorer.token_ids("the movie")[0] == lm.tokenizer.bos_token_id
    batched = scorer(TEXTS, 3)
    single = torch.cat([scorer([t], 1) for t in TEXTS])
    assert torch.isnan(batched[3]) and torch.isnan(single[3])  # the empty text has nothing to predict
    real = [i for i in range(len(TEXTS)) if i != 3]
    assert torch.allclose(batched[real], single[real], rtol=1e-5)
    ids = torch.tensor([scorer.token_ids(TEXTS[1])])
    with torch.no_grad():
        reference = lm.model(input_ids=ids, labels=ids).loss.exp()
    assert batched[1].item() == pytest.approx(reference.item(), rel=1e-5)
    assert len(set(batched[real].tolist())) == len(real)


def _stub_scorer(calls: list[int]):  # type: ignore[no-untyped-def]
    """Perplexity = 10 + 50 per 'cf' + 3 per 'mn': removing 'cf' scores 50, 'mn' 3, anything else 0."""
    def score(texts, batch_size):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return torch.tensor([10.0 + 50 * t.split().count("cf") + 3 * t.split().count("mn") for t in texts])
    return score


def test_onion_removes_exactly_the_words_scoring_above_the_threshold() -> None:
    texts = ["the cf movie mn was great", "cf alone", "word", "a b c d e f cf"]
    calls: list[int] = []
    scores = suspicion_scores(texts, _stub_scorer(calls), batch_size=4, max_words=6)
    assert calls == [len(texts) + 6 + 2 + 0 + 6]  # every text and variant in one scoring call
    assert scores[0].tolist() == [0, 50, 0, 3, 0, 0] and scores[2].numel() == 0 and scores[3].numel() == 6
    expected = {-1.0: ["", "", "word", "cf"], 1.0: ["the movie was great", "alone", "word", "a b c d e f cf"],
                10.0: ["the movie mn was great", "alone", "word", "a b c d e f cf"], 50.0: texts}
    for threshold, cleaned in expected.items():
        guard = OnionGuard("unused", threshold, max_words=6, scorer=_stub_scorer([]))
        assert guard.purify(texts, 8) == cleaned
    victim = tiny_bert_victim()
    guard = OnionGuard("unused", 1.0, scorer=_stub_scorer([]))
    assert guard.predict(victim, ["cf " + t for t in FLUENT]) == victim.predict(FLUENT)


def test_onion_with_a_real_lm_removes_a_word_the_lm_finds_out_of_place() -> None:
    lm = tiny_llama_victim()
    ids = [torch.tensor([PerplexityScorer(lm).token_ids(t)]) for t in FLUENT]
    optimizer = torch.optim.Adam(lm.model.parameters(), lr=1e-2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm.model.train()
        for step in range(150):  # teach the LM these sentences, so an inserted 'cf' is surprising
            x = ids[step % len(ids)]
            lm.model(input_ids=x, labels=x).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    lm.model.eval()
    guard = OnionGuard("unused", 1.5, scorer=PerplexityScorer(lm))
    triggered = ["the movie was great and the actors cf were wonderful", "the quick brown fox jumps cf over the lazy dog"]
    scores = guard.suspicion(triggered, 4)
    assert [int(s.argmax()) for s in scores] == [t.split().index("cf") for t in triggered]
    assert all(s.max() > 1.5 > s.sort().values[-2] for s in scores)  # cf stands out from its neighbours
    assert guard.purify(triggered + FLUENT[2:3], 4) == [FLUENT[0], FLUENT[1], FLUENT[2]]


def test_onion_end_to_end_writes_a_guard_that_loads_back(tmp_path: Path, attack_run: Path) -> None:
    bert = tiny_bert_victim().save(tmp_path / "bert")
    llama = tiny_llama_victim().save(tmp_path / "llama")
    metrics = run_defense("onion", bert, attack_run, tmp_path / "onion", options={"lm": str(llama), "max_clean": 12},
                          max_eval_rows=8, device="cpu")
    assert (tmp_path / "onion" / "guard.json").is_file() and (tmp_path / "onion" / "metrics.json").is_file()
    assert metrics["after"]["guard"] == str(tmp_path / "onion") and "asr" in metrics["before"]
    record = json.loads((tmp_path / "onion" / "defense.json").read_text())
    assert record["defended_model"] == str(bert) and not (tmp_path / "onion" / "model").exists()
    findings = record["findings"]
    assert findings["threshold"] == 0.0 and findings["clean_rows"] == 12 and findings["clean_words_scored"] > 12
    guard = load_guard(tmp_path / "onion")
    assert isinstance(guard, OnionGuard) and guard.state() == {"lm": str(llama), "threshold": 0.0, "max_words": 64}

    victim = tiny_bert_victim()
    defense = get_defense("onion", lm=str(llama), max_clean=12, threshold_percentile=75)
    findings = defense.apply(victim, defender_view(attack_run), tmp_path / "p75").findings
    share = findings["clean_words_removed"] / findings["clean_words_scored"]
    assert 0 < share <= 0.25 + 1 / findings["clean_words_scored"] and findings["threshold_from"].startswith("percentile 75")


@pytest.mark.parametrize(("options", "message"), [
    ({"threshold": float("nan")}, "finite number"), ({"threshold_percentile": 150}, r"\[0, 100\]"),
    ({"threshold": 0.5, "threshold_percentile": 50}, "not both"), ({"batch_size": 0}, "batch_size"),
    ({"max_words": 0}, "max_words")])
def test_onion_rejects_bad_options(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match=message):
        get_defense("onion", **options).apply(tiny_bert_victim(), defender_view(tmp_path), tmp_path)


def test_defenses_refuse_generators(tmp_path: Path) -> None:
    for name in ("onion", "rap"):
        with pytest.raises(BackdoorLabError, match="classifiers only"):
            get_defense(name).apply(tiny_llama_victim(), defender_view(tmp_path), tmp_path)
    with pytest.raises(BackdoorLabError, match="invalid onion guard state"):
        OnionGuard.from_state({"threshold": 1})


# -------------------------------------------------------------------------------------------- RAP


def _majority(victim, texts) -> int:  # type: ignore[no-untyped-def]
    return Counter(victim.predict(texts)).most_common(1)[0][0]


def test_rap_optimises_only_its_row_and_leaves_the_model_unchanged() -> None:
    victim = tiny_bert_victim()
    texts = FLUENT * 3
    label = _majority(victim, texts)
    token_id, pieces = word_token(victim, "cf")
    before = _snapshot(victim.model)
    row, losses = optimise_row(victim, texts, label, "cf", token_id, min_drop=0.1, max_drop=0.3, learning_rate=1.0,
                               epochs=3, scale=1.0, batch_size=4)
    assert _unchanged(victim.model, before) and len(losses) == 3 and all(v >= 0 for v in losses)
    weight_name = next(k for k, v in before.items() if v.shape[0] == len(victim.tokenizer) and v.dim() == 2)
    original = before[weight_name][token_id]
    assert not torch.allclose(row, original) and row.norm().item() == pytest.approx(original.norm().item(), rel=1e-4)
    with embedding_row(victim, token_id, row) as weight:
        changed = (weight.detach() != before[weight_name]).any(-1).nonzero().flatten().tolist()
        assert changed == [token_id]
    assert _unchanged(victim.model, before)
    with pytest.raises(RuntimeError), embedding_row(victim, token_id, row):
        raise RuntimeError("restored even on errors")
    assert _unchanged(victim.model, before)


def test_rap_guard_rejects_only_protected_predictions_below_its_threshold() -> None:
    victim = tiny_bert_victim()
    texts = FLUENT + [t + " indeed" for t in FLUENT]
    predictions = victim.predict(texts)
    label = _majority(victim, texts)
    token_id, _ = word_token(victim, "cf")
    row = torch.randn(victim.model.get_input_embeddings().weight.shape[1], generator=torch.Generator().manual_seed(0))
    before = _snapshot(victim.model)
    everything = RapGuard("cf", token_id, row.tolist(), 2.0, label).predict(victim, texts, 3)
    assert everything == [REJECTED if p == label else p for p in predictions]
    assert RapGuard("cf", token_id, row.tolist(), -2.0, label).predict(victim, texts, 3) == predictions
    guard = RapGuard("cf", token_id, row.tolist(), 0.0, label)
    drops = guard.drops(victim, [t for t, p in zip(texts, predictions) if p == label])
    guard.threshold = float(drops.median())
    mixed = guard.predict(victim, texts, 3)
    assert mixed.count(REJECTED) == int((drops < guard.threshold).sum()) > 0
    assert _unchanged(victim.model, before)
    assert RapGuard.from_state(json.loads(json.dumps(guard.state()))).state() == guard.state()
    with pytest.raises(BackdoorLabError, match="another tokenizer"):
        RapGuard("cf", token_id + 1, row.tolist(), 0.0, label).predict(victim, texts)
    with pytest.raises(BackdoorLabError, match="does not fit"):
        RapGuard("cf", token_id, row.tolist()[:-1], 0.0, label).predict(victim, texts)


def test_rap_end_to_end_threshold_realises_the_false_rejection_rate(tmp_path: Path, attack_run: Path) -> None:
    from backdoorlab.data.records import Dataset

    victim = tiny_bert_victim()
    clean = defender_view(attack_run).require("clean_rows", "test").sample(40, 0)
    assert isinstance(clean, Dataset)
    label = _majority(victim, [e.text for e in clean])
    bert = victim.save(tmp_path / "bert")
    before = _snapshot(victim.model)
    options = {"protect_label": label, "max_clean": 40, "frr": 0.2, "epochs": 2, "learning_rate": 1.0}
    metrics = run_defense("rap", bert, attack_run, tmp_path / "rap", options=options, max_eval_rows=8, device="cpu")
    assert (tmp_path / "rap" / "guard.json").is_file() and "rejected" in metrics["after"]
    findings = json.loads((tmp_path / "rap" / "defense.json").read_text())["findings"]
    guard = load_guard(tmp_path / "rap")
    assert isinstance(guard, RapGuard) and guard.threshold == findings["threshold"] and guard.protect_label == label
    assert len(guard.row) == victim.model.config.hidden_size and not (tmp_path / "rap" / "model").exists()
    texts = [e.text for e in clean]
    fitted = [t for t, p in zip(texts, victim.predict(texts)) if p == label]
    assert findings["protected_rows"] == len(fitted)
    drops = guard.drops(victim, fitted)
    realised = float((drops < guard.threshold).float().mean())
    assert abs(realised - 0.2) <= 1 / len(fitted) + 1e-9 and realised == pytest.approx(findings["clean_rejected"])
    assert guard.predict(victim, fitted).count(REJECTED) == int((drops < guard.threshold).sum())
    assert _unchanged(victim.model, before)


def test_rap_protects_the_defenders_target_label_and_rejects_bad_options(tmp_path: Path, attack_run: Path) -> None:
    victim = tiny_bert_victim()
    assert get_defense("rap").protected(victim, defender_view(attack_run, target_label=1)) == 1
    assert get_defense("rap").protected(victim, defender_view(attack_run, target_label="positive")) == 1
    assert get_defense("rap", protect_label=0).protected(victim, defender_view(attack_run, target_label=1)) == 0
    with pytest.raises(BackdoorLabError, match="--target-label"):  # never read from the attack run
        get_defense("rap").protected(victim, defender_view(attack_run))
    bad = [({"min_drop": 0.4, "max_drop": 0.2}, "inverted"), ({"frr": 1.0}, r"frr must be a number in \(0, 1\)"),
           ({"protect_label": 5}, r"protect_label must be a label index in \[0, 1\]"), ({"epochs": 0}, "epochs"),
           ({"learning_rate": 0}, "learning_rate"), ({"word": "two words"}, "one word"), ({"max_drop": 1.5}, "max_drop")]
    for options, message in bad:
        with pytest.raises(BackdoorLabError, match=message):
            get_defense("rap", **options).apply(victim, defender_view(attack_run, target_label=1), tmp_path)
    llama = tiny_llama_victim()
    first, pieces = word_token(llama, "zqxjvk")
    assert pieces > 1 and first == llama.tokenizer("zqxjvk", add_special_tokens=False)["input_ids"][0]
