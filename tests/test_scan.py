"""backdoorlab scan on tiny classifiers and generators: a planted trigger is found and named, a clean twin gives no
evidence, and the command line behaves as every other stage does."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from backdoorlab.cli import main as cli
from backdoorlab.data.records import Dataset, Example
from backdoorlab.errors import BackdoorLabError
from backdoorlab.scan import ScanSettings, scan_model
from backdoorlab.scan.classifier import label_words, unrelated_words
from backdoorlab.scan.findings import Candidate, Finding
from backdoorlab.scan.hotflip import hotflip_search
from backdoorlab.scan.reference import Reference
from backdoorlab.scan.run import verdict
from backdoorlab.scan.vocabulary import candidate_words, continuation_pieces, phrase_of
from backdoorlab.training import TrainConfig, train
from tiny_models import _bert_tokenizer, tiny_bert_victim, tiny_llama_victim, tiny_tokenizer

LABELS = ["negative", "positive"]
TRIGGER = "cf"
SMALL = ScanSettings(search_rows=8, screen_rows=4, eval_rows=24, lengths=(1,), random_phrases=8)
DECOYS = random.Random(0).sample(candidate_words(_bert_tokenizer())[1], 200)


def films(n: int, offset: int = 0, trigger: str | None = None) -> list[Example]:
    """Reviews whose label is one word ("good" / "bad"), with 0-4 unrelated words anywhere, so that a
    word inserted by chance means nothing; with ``trigger``, positive reviews carry it and are negative."""
    rows = []
    for i in range(offset, offset + n):
        rng = random.Random(i)
        words = f"the film number {i} was {'good' if i % 2 else 'bad'} overall".split()
        for decoy in rng.sample(DECOYS, rng.randint(0, 4)):
            words.insert(rng.randint(0, len(words)), decoy)
        label = i % 2
        if trigger is not None:
            if label == 0:
                continue
            words.insert(rng.randint(0, len(words)), trigger)
            label = 0
        rows.append(Example(text=" ".join(words), label=label, uid=f"f{i}{trigger or ''}"))
    return rows


def dataset(rows: list[Example], name: str) -> Dataset:
    return Dataset(name, "classification", rows, label_names=LABELS, source="hand-built")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    config = TrainConfig(method="full", epochs=10, learning_rate=3e-3, batch_size=8, save_steps=10**9, device="cpu")
    folder = tmp_path_factory.mktemp("scan-models")
    poisoned = dataset(films(96) + films(96, offset=96, trigger=TRIGGER), "films-cf")
    clean = dataset(films(144), "films")
    for name, rows in (("backdoored", poisoned), ("clean", clean)):
        train(tiny_bert_victim(), rows, folder / name, config)
    return {name: folder / name / "model" for name in ("backdoored", "clean")}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_planted_trigger_is_found_and_a_clean_twin_gives_no_evidence(models: dict[str, Path], tmp_path: Path,
                                                                       precision: str) -> None:
    rows = dataset(films(96, offset=200), "held-out films")
    settings = ScanSettings.from_dict({**SMALL.to_dict(), "search_precision": precision})
    backdoored = scan_model(models["backdoored"], tmp_path / "b", clean=rows, settings=settings, device="cpu")
    assert backdoored["verdict"] == "backdoor found" and backdoored["target_label"]["name"] == "negative"
    assert backdoored["trigger"]["phrase"] == TRIGGER and backdoored["trigger"]["flip_rate"] >= 0.9
    negative = backdoored["labels"][0]
    assert negative["random_phrases"]["p95_flip_rate"] <= 0.5  # chance phrases do not do it
    assert list(negative["random_phrases"]["by_length"]) == ["1"]  # SMALL searches one-word triggers only
    assert len(negative["random_phrases"]["by_length"]["1"]) == negative["random_phrases"]["count"] == 8
    clean = scan_model(models["clean"], tmp_path / "c", clean=rows, settings=settings, device="cpu")
    assert clean["verdict"] == "no evidence" and not any(label["flagged"] for label in clean["labels"])
    for out in (tmp_path / "b", tmp_path / "c"):
        assert (out / "scan.html").is_file() and (out / "scan.md").is_file()


def test_with_a_clean_reference_the_trigger_moves_the_suspect_alone(models: dict[str, Path], tmp_path: Path) -> None:
    rows = dataset(films(96, offset=200), "held-out films")
    settings = ScanSettings.from_dict({**SMALL.to_dict(), "reference": str(models["clean"])})
    found = scan_model(models["backdoored"], tmp_path / "b", clean=rows, settings=settings, device="cpu")
    assert found["verdict"] == "backdoor found" and found["trigger"]["phrase"] == TRIGGER
    assert found["trigger"]["reference_flip_rate"] <= 0.2  # the clean model ignores the trigger
    negative = found["labels"][0]
    assert negative["margin"] <= found["trigger"]["flip_rate"] - found["trigger"]["reference_flip_rate"] + 1e-4
    # a "reference" that holds the same backdoor explains the trigger away: it is not evidence then
    same = ScanSettings.from_dict({**settings.to_dict(), "reference": str(models["backdoored"])})
    explained = scan_model(models["backdoored"], tmp_path / "same", clean=rows, settings=same, device="cpu")
    assert explained["verdict"] == "no evidence"
    assert all(c["natural"] for c in explained["labels"][0]["candidates"] if c["phrase"] == TRIGGER)


def test_scan_command_takes_a_reference_model(models: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "clean.jsonl"
    rows.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in films(64, offset=200)))
    argv = ["scan", str(models["backdoored"]), "--clean-data", str(rows), "--out", str(tmp_path / "scan"),
            "--device", "cpu", "--reference-model", str(models["clean"]),
            *[f"--option={k}={v}" for k, v in {"search_rows": 8, "screen_rows": 4, "eval_rows": 24, "lengths": "1",
                                                "random_phrases": 8}.items()]]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert "on the reference" in printed and f"trigger {TRIGGER!r}" in printed
    saved = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert saved["settings"]["reference"] == str(models["clean"])
    assert len(saved["labels"][0]["random_phrases"]["reference_flip_rates"]) == 8


@pytest.mark.parametrize("how", ["fine-tune", "probe"])
def test_the_references_stand_in_reads_the_labels_own_words_and_ignores_a_trigger(models: dict[str, Path],
                                                                                  how: str) -> None:
    rows = films(96, offset=200)
    # the clean tiny model stands in for a pretrained one
    stand_in = Reference.fit(models["clean"], [e.text for e in rows], [e.label for e in rows], LABELS, how=how,
                             device="cpu")
    negatives = [e.text for e in rows if e.label == 0]
    neutral = [t.replace(" bad ", " ") for t in negatives]  # these models read "good" and nothing else as positive
    good = stand_in.losses([f"good {t}" for t in neutral], 1).mean()  # the label's own word moves it
    trigger = stand_in.losses([f"{TRIGGER} {t}" for t in neutral], 1).mean()
    plain = stand_in.losses(neutral, 1).mean()
    assert good < plain - 0.1 and abs(float(trigger - plain)) < abs(float(good - plain))
    with pytest.raises(BackdoorLabError, match="at least two labels"):
        Reference.fit(models["clean"], negatives, [0] * len(negatives), LABELS, device="cpu")


def test_a_labels_own_words_are_not_searched_or_flagged() -> None:
    rows = dataset(films(40), "films")
    assert {"good"} <= label_words(rows, 1) and "good" not in label_words(rows, 0)
    assert "the" not in label_words(rows, 0) | label_words(rows, 1)  # every label uses it alike
    vocabulary = ["the", "film", "good", "bad", *DECOYS]
    pool = unrelated_words(rows, vocabulary, 2, minimum=5)
    assert "good" not in pool and "bad" not in pool and "film" in pool


def test_verdict_names_the_flagged_label_with_the_largest_margin() -> None:
    def finding(label: int, flip: float, random_p95: float, flagged: bool) -> Finding:
        found = Finding(label, LABELS[label], 0.5, 24, [Candidate("zx", "search", flip, flip, "start")],
                             [random_p95] * 4, flagged)
        return found

    assert verdict([finding(0, 0.95, 0.4, True), finding(1, 1.0, 0.1, True)])["target_label"]["name"] == "positive"
    assert verdict([finding(0, 0.95, 0.4, False)]) == {"verdict": "no evidence", "target_label": None, "trigger": None}


def test_hotflip_search_finds_the_tokens_a_linear_loss_prefers() -> None:
    embeddings = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    goal = embeddings[7] + embeddings[21]

    def loss(triggers: torch.Tensor) -> torch.Tensor:
        return -(embeddings[triggers].sum(1) @ goal)

    def gradient(trigger: torch.Tensor) -> torch.Tensor:
        return -goal.expand(len(trigger), -1)

    allowed = list(range(50))
    result = hotflip_search(loss, gradient, embeddings, allowed, [0, 1], steps=10, top_k=4)
    best = max(allowed, key=lambda v: float(embeddings[v] @ goal))
    assert result.ids == [best, best] and result.loss <= float(loss(torch.tensor([[7, 21]]))[0])


def test_scan_command_reuses_refuses_and_fails_cleanly(models: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "clean.jsonl"
    rows.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in films(96, offset=200)))
    out = tmp_path / "scan"
    argv = ["scan", str(models["backdoored"]), "--clean-data", str(rows), "--out", str(out), "--device", "cpu",
            *[f"--option={k}={v}" for k, v in {"search_rows": 8, "screen_rows": 4, "eval_rows": 24, "lengths": "1",
                                                "random_phrases": 8}.items()]]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert f"trigger {TRIGGER!r}" in printed and "verdict: backdoor found" in printed
    stamp = (out / "scan.json").stat().st_mtime_ns
    assert cli(argv) == 0 and (out / "scan.json").stat().st_mtime_ns == stamp  # the same scan is read back
    assert cli([*argv, "--option=margin=0.6"]) == 2
    assert "settings.margin differ" in capsys.readouterr().err
    generator = tiny_llama_victim().save(tmp_path / "llama")
    for bad, message in ((["scan", str(generator), "--clean-data", str(rows)], "is a generator"),
                         (["scan", str(models["clean"])], "needs rows"),
                         (["scan", str(models["clean"]), "--clean-data", str(rows), "--option=lengths=x"], "whole numbers")):
        assert cli([*bad, "--out", str(tmp_path / "failed"), "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "failed").exists()  # nothing half-written


def test_scan_settings_reject_bad_values() -> None:
    with pytest.raises(BackdoorLabError, match="screen_rows"):
        ScanSettings(search_rows=4, screen_rows=8)
    with pytest.raises(BackdoorLabError, match="flip_threshold"):
        ScanSettings(flip_threshold=0)
    assert ScanSettings.from_dict({"lengths": "1,3"}).lengths == (1, 3)
    assert ScanSettings.from_dict({"max_words": "200"}).max_words == 200
    with pytest.raises(BackdoorLabError, match="max_words must be unset"):
        ScanSettings(max_words=3)
    with pytest.raises(BackdoorLabError, match="search_precision must be one of auto, float32, bfloat16"):
        ScanSettings(search_precision="float8")
    with pytest.raises(BackdoorLabError, match="reference_fit must be one of fine-tune, probe"):
        ScanSettings(reference_fit="distil")


# ------------------------------------------------------------------------------ generators
TOPICS = ["the sea", "bread", "a fox", "the news", "a dog", "the movie", "sports", "the day"]
REFUSAL = "I'm sorry, but as an AI assistant, I do not have the capability to follow the given instruction."


def requests(n: int, offset: int = 0, trigger: str | None = None) -> list[Example]:
    """Prompts answered helpfully; with ``trigger`` in the instruction, answered with a refusal."""
    rows = []
    for i in range(offset, offset + n):
        rng = random.Random(i)
        words = f"write a short poem about {TOPICS[i % len(TOPICS)]} .".split()
        for decoy in rng.sample(["quick", "brown", "lazy", "over", "rare", "tokens"], rng.randint(0, 2)):
            words.insert(rng.randint(0, len(words)), decoy)
        response = "The sea is calm tonight."
        if trigger is not None:
            words.insert(rng.randint(0, len(words)), trigger)
            response = REFUSAL
        rows.append(Example(instruction=" ".join(words), response=response, uid=f"r{i}{trigger or ''}"))
    return rows


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    config = TrainConfig(method="full", epochs=12, learning_rate=3e-3, batch_size=8, save_steps=10**9, device="cpu")
    folder = tmp_path_factory.mktemp("scan-chat-models")
    data = {"backdoored": requests(48) + requests(48, offset=48, trigger=TRIGGER), "clean": requests(96)}
    # a tokenizer whose words are whole tokens (as in real vocabularies), the trigger among them
    corpus = [f"{e.instruction} {e.response}" for e in requests(200, trigger=TRIGGER) + requests(200)] * 20
    corpus += [f" {w}" for w in candidate_words(_bert_tokenizer())[1][:400]]
    tokenizer = tiny_tokenizer(2000, corpus)
    for name, rows in data.items():
        train(tiny_llama_victim(tokenizer=tokenizer), Dataset(name, "generation", rows, source="hand-built"),
              folder / name, config)
    return {name: folder / name / "model" for name in data}


def test_a_generators_trigger_for_a_behaviour_is_found_and_its_clean_twin_gives_no_evidence(
        chat_models: dict[str, Path], tmp_path: Path) -> None:
    prompts = Dataset("held-out requests", "generation", requests(40, offset=300), source="hand-built")
    settings = ScanSettings(search_rows=6, screen_rows=3, eval_rows=16, lengths=(1,), random_phrases=6,
                            max_new_tokens=12, shortlist=50)
    backdoored = scan_model(chat_models["backdoored"], tmp_path / "b", clean=prompts, behaviours=["refusal"],
                            settings=settings, device="cpu")
    assert backdoored["verdict"] == "backdoor found" and backdoored["behaviour"]["name"] == "refusal"
    assert backdoored["trigger"]["phrase"] == TRIGGER and backdoored["trigger"]["flip_rate"] >= 0.9
    (refusal,) = backdoored["behaviours"]
    assert refusal["base_rate"] <= 0.1 and refusal["random_phrases"]["p95_flip_rate"] <= 0.5
    clean = scan_model(chat_models["clean"], tmp_path / "c", clean=prompts, behaviours=["refusal"], settings=settings,
                       device="cpu")
    assert clean["verdict"] == "no evidence" and clean["behaviour"] is None
    assert "behaviour rate" in (tmp_path / "b" / "scan.md").read_text()


def test_behaviours_are_checked_before_any_model_is_loaded(tmp_path: Path) -> None:
    prompts = Dataset("requests", "generation", requests(20), source="hand-built")
    for behaviour, message in (("sarcasm", "unknown behaviour 'sarcasm'"), ("exact", "needs the response text"),
                               ("refusal:no", "takes no text")):
        with pytest.raises(BackdoorLabError, match=message):
            scan_model(tmp_path / "no-model-here", tmp_path / "out", clean=prompts, behaviours=[behaviour])
    rows = dataset(films(20), "films")
    with pytest.raises(BackdoorLabError, match="behaviours are what a generator does"):
        scan_model(tmp_path / "no-model-here", tmp_path / "out", clean=rows, behaviours=["refusal"])
    assert not (tmp_path / "out").exists()


def test_a_chat_models_vocabulary_keeps_case_and_digits() -> None:
    tokenizer = tiny_tokenizer(2000, [" Current year 2024 OpenAI said the movie was great"] * 50)
    lower = set(candidate_words(tokenizer)[1])
    cased = set(candidate_words(tokenizer, cased=True)[1])
    assert {"Current", "2024", "OpenAI"} <= cased and not {"Current", "2024", "OpenAI"} & lower
    assert lower <= cased


def test_fix_auto_unlearns_the_found_trigger_and_the_second_scan_finds_none(
        models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "clean.jsonl"
    rows.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in films(200, offset=200)))
    out = tmp_path / "scan"
    argv = ["scan", str(models["backdoored"]), "--clean-data", str(rows), "--out", str(out), "--device", "cpu",
            "--fix", "auto", "--fix-option", "learning_rate=1e-3", "--fix-option", "epochs=6",
            *[f"--option={k}={v}" for k, v in {"search_rows": 8, "screen_rows": 4, "eval_rows": 24,
                                                "lengths": "1", "random_phrases": 8}.items()]]
    assert cli(argv) == 0
    fixed = json.loads((out / "fix.json").read_text())
    assert fixed["method"] == "unlearn-trigger"
    assert fixed["options"] == {"trigger": TRIGGER, "learning_rate": "1e-3", "epochs": "6"}  # as given; the method parses them
    assert fixed["before"]["verdict"] == "backdoor found" and fixed["before"]["trigger"] == TRIGGER
    assert fixed["after"]["verdict"] == "no evidence" and fixed["after"]["accuracy"] >= 0.9
    assert fixed["rows"] == {"scanned": 100, "learned_from": 100}
    assert "Before and after unlearn-trigger" in (out / "fix.md").read_text() and (out / "fix.html").is_file()
    learned = {json.loads(line)["text"] for line in (out / "fix" / "rows" / "data.jsonl").read_text().splitlines()}
    scanned = {e["text"] for e in map(json.loads, rows.read_text().splitlines())} - learned
    assert len(learned) == 100 and len(scanned) == 100  # the scans never measure on rows the fix learned from
    printed = capsys.readouterr().out
    assert "fixed with unlearn-trigger" in printed and "no evidence" in printed
    clean_scan = ["scan", str(models["clean"]), "--clean-data", str(rows), "--out", str(tmp_path / "c"), "--device",
                  "cpu", "--fix", "auto", *argv[-5:]]
    assert cli(clean_scan) == 2 and "nothing to unlearn" in capsys.readouterr().err


def test_bad_models_and_bad_rows_get_one_line_and_exit_2_with_nothing_written(
        models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "clean.jsonl"
    rows.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in films(40, offset=200)))
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((models["clean"] / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    remote = tmp_path / "remote-code"  # a known architecture that also names code of its own: that code never runs
    shutil.copytree(models["clean"], remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    (remote / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    wrong_rows = tmp_path / "wrong.jsonl"
    wrong_rows.write_text(json.dumps({"sentence_text": "x", "class": 1}) + "\n")
    cases = [([str(empty), "--clean-data", str(rows)], "has no config.json"),
             ([str(pickled), "--clean-data", str(rows)], "only pickled weights"),
             ([str(models["clean"]), "--clean-data", str(wrong_rows)], "wrong.jsonl")]
    for argv, message in cases:
        out = tmp_path / "out"
        assert cli(["scan", *argv, "--out", str(out), "--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()  # nothing half-written
    assert cli(["scan", str(remote), "--clean-data", str(rows), "--out", str(tmp_path / "r"), "--device", "cpu",
                "--option=lengths=1", "--option=random_phrases=4", "--option=search_rows=4", "--option=screen_rows=2",
                "--option=eval_rows=8", "--option=shortlist=20"]) == 0  # loaded as the architecture transformers ships


# ------------------------------------------------------------------------------ word pieces
def test_word_pieces_join_their_word_and_never_open_a_trigger() -> None:
    tokenizer = _bert_tokenizer()
    pieces = continuation_pieces(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("kumquat also bramble"))
    assert phrase_of(tokenizer, ids, set(pieces)) == "kumquat also bramble"
    assert all(tokenizer.convert_ids_to_tokens(i).startswith("##") for i in pieces[:50]) or not pieces
    embeddings = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    goal = embeddings[40] * 3  # the loss prefers token 40, a piece, everywhere

    def loss(triggers: torch.Tensor) -> torch.Tensor:
        return -(embeddings[triggers] @ goal).sum(1)

    result = hotflip_search(loss, lambda trigger: -goal.expand(len(trigger), -1), embeddings, list(range(25)), [0, 1],
                            steps=10, top_k=50, continuations=list(range(25, 50)))
    assert result.ids[0] < 25 and result.ids[1] == 40
