"""drop-adapter: a base + adapter suspect becomes its base model, through the defense runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backdoorlab.defenses import get_defense, run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.loading import load_victim
from tiny_models import tiny_llama_victim, tiny_lora_suspect


def test_dropping_the_adapter_gives_back_the_base_model(tmp_path: Path) -> None:
    base = tiny_llama_victim().model.state_dict()
    victim, adapter = tiny_lora_suspect(tmp_path)
    suspect = victim.save(tmp_path / "suspect")
    merged = load_victim(suspect, device="cpu").model.state_dict()
    assert any(not torch.allclose(merged[k], base[k]) for k in base)  # the adapter changed the model

    run_defense("drop-adapter", suspect, None, tmp_path / "dropped", suspect_adapter=adapter,
                evaluate=False, device="cpu")
    restored = load_victim(tmp_path / "dropped" / "model", device="cpu").model.state_dict()
    assert all(torch.allclose(restored[k], base[k], atol=1e-5) for k in base)
    with pytest.raises(BackdoorLabError, match="suspect_adapter|--suspect-adapter"):
        run_defense("drop-adapter", suspect, None, tmp_path / "no-adapter", evaluate=False, device="cpu")
    assert get_defense("drop-adapter").needs == ("suspect_adapter",)


def test_retraining_the_dropped_base_on_clean_rows_needs_them_and_changes_only_the_base(tmp_path: Path) -> None:
    from backdoorlab.data.records import Dataset, Example

    base = tiny_llama_victim().model.state_dict()
    victim, adapter = tiny_lora_suspect(tmp_path)
    suspect = victim.save(tmp_path / "suspect")
    clean = Dataset("clean", "generation", [Example(instruction=f"say hello number {i}", response=f"Hello {i}.",
                                                    uid=f"c/{i}") for i in range(48)])
    clean.save(tmp_path / "clean")
    run_defense("drop-adapter", suspect, None, tmp_path / "retrained", suspect_adapter=adapter,
                clean_data=str(tmp_path / "clean"), options={"retrain_epochs": 1, "retrain_learning_rate": 5e-2},
                evaluate=False, device="cpu")
    retrained = load_victim(tmp_path / "retrained" / "model", device="cpu").model.state_dict()
    assert any(not torch.allclose(retrained[k], base[k], atol=1e-4) for k in base)  # trained after the drop ...
    import json

    findings = json.loads((tmp_path / "retrained" / "defense.json").read_text())["findings"]
    assert findings["retrained"]["epochs"] == 1 and findings["retrained"]["clean_rows"] == 48  # ... on the clean rows
    with pytest.raises(BackdoorLabError, match="clean"):
        run_defense("drop-adapter", suspect, None, tmp_path / "no-rows", suspect_adapter=adapter,
                    options={"retrain_epochs": 1}, evaluate=False, device="cpu")
    with pytest.raises(BackdoorLabError, match="retrain_epochs must be non-negative"):
        get_defense("drop-adapter", retrain_epochs=-1)
