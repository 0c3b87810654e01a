"""The victim zoo: LoRA adapters kept beside the merged model, quality verdicts, and a tiny zoo built,
cached, resumed and listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama_victim

from backdoorlab.data.records import Dataset, Example
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.loading import load_victim
from backdoorlab.training import ADAPTER_DIR, MODEL_DIR, TrainConfig, train, train_fingerprint


def lines(n: int = 16) -> Dataset:
    rows = [Example(instruction=f"write a line about the sea, take {i}", response=f"The sea is calm, take {i}.",
                    uid=f"g{i}") for i in range(n)]
    return Dataset("lines", "generation", rows, source="hand-built")


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    return tiny_llama_victim().save(tmp_path / "base")


# ------------------------------------------------------------------ keep_adapter
def test_a_kept_adapter_on_the_base_model_reproduces_the_merged_model(tiny_base: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    config = TrainConfig(method="lora", max_steps=3, batch_size=4, learning_rate=5e-2, keep_adapter=True,
                         device="cpu")
    merged = train(str(tiny_base), lines(), tmp_path / "run", config)
    adapter = tmp_path / "run" / ADAPTER_DIR
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not list(adapter.glob("*.bin"))

    base = load_victim(tiny_base, device="cpu")
    batch = base.encode(lines(4).examples)
    with torch.no_grad():
        before = base.model(**batch).logits
        adapted = PeftModel.from_pretrained(base.model, str(adapter)).eval()(**batch).logits
        after = merged.model.eval()(**batch).logits
    assert (adapted - before).abs().max() > 1e-3  # the adapter changes the model ...
    torch.testing.assert_close(adapted, after, atol=1e-4, rtol=1e-4)  # ... exactly as merging it does


def test_no_adapter_is_kept_unless_asked(tiny_base: Path, tmp_path: Path) -> None:
    train(str(tiny_base), lines(), tmp_path / "run", TrainConfig(method="lora", max_steps=1, batch_size=4, device="cpu"))
    assert (tmp_path / "run" / MODEL_DIR).is_dir() and not (tmp_path / "run" / ADAPTER_DIR).exists()


def test_keep_adapter_needs_lora_and_changes_the_fingerprint_only_when_on() -> None:
    with pytest.raises(BackdoorLabError, match="keep_adapter"):
        TrainConfig(method="full", keep_adapter=True).resolved("generator")
    plain = train_fingerprint("m", "generator", lines(), TrainConfig(method="lora"))
    kept = train_fingerprint("m", "generator", lines(), TrainConfig(method="lora", keep_adapter=True))
    assert "keep_adapter" not in plain["config"] and kept["config"]["keep_adapter"] is True
