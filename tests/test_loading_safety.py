"""Which weights file a model folder loads from, and that a pickle is never allowed to run code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import Victim, load_victim
from tiny_models import tiny_bert_victim, tiny_llama_victim

BUILDERS = {"bert": tiny_bert_victim, "llama": tiny_llama_victim}


class WritesMarker:
    """Unpickling this object writes ``marker``: a stand-in for a pickle that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return Path.write_text, (self.marker, "code ran")


def _assert_weights(victim: Victim, expected: dict[str, torch.Tensor]) -> None:
    loaded = victim.model.state_dict()
    for key, tensor in expected.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


def _pickle_only_folder(victim: Victim, folder: Path, state: object) -> Path:
    """A model folder with config, tokenizer and ``pytorch_model.bin`` holding ``state``, no safetensors."""
    victim.model.config.save_pretrained(folder)
    victim.tokenizer.save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_safetensors_win_over_a_pickle_in_the_same_folder(tmp_path: Path, family: str, allow_pickle: bool) -> None:
    saved = BUILDERS[family](seed=0)
    folder = saved.save(tmp_path / "model")
    other = BUILDERS[family](seed=1).model.state_dict()
    torch.save(other, folder / "pytorch_model.bin")
    expected = saved.model.state_dict()
    assert any(not torch.equal(other[key], expected[key]) for key in expected)  # the two files really differ
    _assert_weights(load_victim(folder, device="cpu", allow_pickle=allow_pickle), expected)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_opted_in_pickle_loads_its_weights(tmp_path: Path, family: str) -> None:
    victim = BUILDERS[family](seed=2)
    expected = victim.model.state_dict()
    folder = _pickle_only_folder(victim, tmp_path / "pickled", expected)
    loaded = load_victim(folder, kind="generator" if victim.is_generator else "classifier", device="cpu",
                         allow_pickle=True, label_names=victim.label_names)
    _assert_weights(loaded, expected)


def test_sharded_pickle_loads_and_its_index_cannot_leave_the_folder(tmp_path: Path) -> None:
    victim = tiny_bert_victim(seed=3)
    expected = victim.model.state_dict()
    keys = list(expected)
    shards = {"pytorch_model-1.bin": keys[: len(keys) // 2], "pytorch_model-2.bin": keys[len(keys) // 2:]}
    folder = tmp_path / "sharded"
    victim.model.config.save_pretrained(folder)
    victim.tokenizer.save_pretrained(folder)
    for shard, names in shards.items():
        torch.save({key: expected[key] for key in names}, folder / shard)
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {key: shard for shard, names in shards.items() for key in names}}))
    _assert_weights(load_victim(folder, device="cpu", allow_pickle=True), expected)
    index.write_text(json.dumps({"weight_map": {keys[0]: "../elsewhere.bin"}}))
    with pytest.raises(BackdoorLabError, match="'../elsewhere.bin', which is not a file in"):
        load_victim(folder, device="cpu", allow_pickle=True)


def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    victim = tiny_bert_victim()
    state = {**victim.model.state_dict(), "classifier.bias": WritesMarker(marker)}
    folder = _pickle_only_folder(victim, tmp_path / "bomb", state)
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the file is live: a full unpickle runs it
    assert marker.read_text() == "code ran"
    marker.unlink()
    with pytest.raises(BackdoorLabError) as refused:
        load_victim(folder, device="cpu", allow_pickle=True)
    assert not marker.exists()
    refused.match("pytorch_model.bin is not plain weights")


def test_config_cannot_point_the_loader_at_a_pickle(tmp_path: Path) -> None:
    saved = tiny_bert_victim(seed=0)
    folder = saved.save(tmp_path / "model")
    torch.save(tiny_bert_victim(seed=1).model.state_dict(), folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    for allow_pickle in (False, True):
        with pytest.raises(BackdoorLabError, match="transformers_weights"):
            load_victim(folder, device="cpu", allow_pickle=allow_pickle)


def test_a_model_type_transformers_does_not_know_is_named_in_one_line_and_its_code_is_never_run(tmp_path: Path) -> None:
    folder = tiny_bert_victim().save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "zebra_lm", "auto_map": {
        "AutoConfig": "configuration_zebra.ZebraConfig"}}))
    (folder / "configuration_zebra.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('code ran')\n")
    with pytest.raises(BackdoorLabError, match="declares model type 'zebra_lm'.*trust_remote_code") as error:
        load_victim(folder, device="cpu")
    assert "\n" not in str(error.value) and not (tmp_path / "ran").exists()
