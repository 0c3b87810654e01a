"""Every step that touches blocks, heads or channels, on tiny random models of the architectures users bring.

Generators: Llama, Mistral, Qwen2, Gemma2 and Phi-3 (whose attention and MLP projections are fused);
classifiers: BERT, RoBERTa and DeBERTa-v2. Head attribution, its hooks and the probes' features are
covered for the same list in ``test_analysis.py`` and ``test_models.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoorlab.analysis.probe import stream_features
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses import run_defense
from backdoorlab.defenses.bd_vax.components import FAMILIES, block_parts, component_count
from backdoorlab.defenses.bd_vax.neutralize import reinitialize
from backdoorlab.defenses.bd_vax.signature import random_signature
from backdoorlab.defenses.fine_pruning.channels import ChannelMask, mlp_channels, remove_channels
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import ActivationCache, load_victim, recording
from backdoorlab.models.architecture import attention_input_norm, block_projections, describe, transformer_layers
from backdoorlab.scan import ScanSettings, scan_model
from tiny_models import ARCHITECTURES, DECODERS, tiny_victim

PROMPTS = [Example(instruction=f"write a short line about topic {i} and the sea") for i in range(6)]
TEXTS = ["the movie was great", "a dull and boring film", "the actors were wonderful", "bad plot, worse acting"]


def _items(victim):  # type: ignore[no-untyped-def]
    return PROMPTS if victim.is_generator else TEXTS


def _logits(victim, items) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return victim.forward(victim.encode(items)).logits


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_block_is_described_with_projections_that_match_its_head_geometry(architecture: str) -> None:
    victim = tiny_victim(architecture)
    spec = victim.spec
    assert spec.family == ("decoder" if architecture in DECODERS else "encoder")
    layers = transformer_layers(victim.model, spec)
    assert len(layers) == spec.num_layers == 2
    parts = block_projections(layers[0], spec)
    assert set(parts) == ({"q", "k", "v", "o", "gate", "up", "down"} if spec.family == "decoder"
                          else {"q", "k", "v", "o", "up", "down"})
    width = spec.num_heads * spec.head_dim
    assert parts["q"].weight.shape[0] == width and parts["o"].weight.shape[1] == width
    assert parts["k"].weight.shape[0] == parts["v"].weight.shape[0] == spec.num_kv_heads * spec.head_dim
    assert parts["up"].weight.shape[0] == parts["down"].weight.shape[1]
    group = spec.num_heads // spec.num_kv_heads
    with torch.no_grad():  # a projection's weight is a view: zeroing key/value head 0's values silences its query heads
        parts["v"].weight[:spec.head_dim] = 0
        if parts["v"].bias is not None:
            parts["v"].bias[:spec.head_dim] = 0
    cache = ActivationCache()
    with victim.hooked({(0, "head_out"): recording(cache, (0, "head_out"))}):
        _logits(victim, _items(victim)[:2])
    heads = cache[(0, "head_out")].abs().amax(dim=(0, 1, 3))
    assert torch.all(heads[:group] < 1e-6) and torch.all(heads[group:] > 1e-4), heads


def test_an_architecture_without_a_layout_is_named_in_a_clear_error() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(BackdoorLabError, match="unsupported architecture 'gpt2'.*phi3"):
        describe(model)


@pytest.mark.parametrize("architecture", DECODERS)
def test_bd_vax_redraws_exactly_the_signatures_entries(architecture: str) -> None:
    victim = tiny_victim(architecture)
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    blocks = block_parts(victim)
    counts = {f: component_count(victim.spec, f, blocks[0]["down"].linear.in_features) for f in FAMILIES}
    signature = random_signature(len(blocks), counts, {f: 0.25 for f in FAMILIES}, seed=0)
    redrawn = reinitialize(victim, signature, seed=1)
    after = victim.model.state_dict()
    changed = {k: int((before[k] != after[k]).sum()) for k in before if not torch.equal(before[k], after[k])}
    assert redrawn > 0 and sum(changed.values()) == redrawn
    assert all(".layers." in k and ("attn" in k or "mlp" in k) for k in changed), changed


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_removing_mlp_channels_computes_what_masking_them_does(architecture: str) -> None:
    victim = tiny_victim(architecture)
    channels = mlp_channels(victim, [0, 1])
    pruned = [torch.tensor([0, 5, 17]), torch.tensor([3, 40])]
    plain = _logits(victim, _items(victim))
    mask = ChannelMask(channels)
    mask.set(pruned)
    with mask.active():
        masked = _logits(victim, _items(victim))
    assert not torch.allclose(plain, masked, atol=1e-6)
    assert remove_channels(channels, pruned) == 5
    assert torch.allclose(_logits(victim, _items(victim)), masked, atol=1e-5)


def _generation_rows(tmp_path: Path) -> Path:
    rows = [{"instruction": f"write a line about topic {i}", "output": f"The sea is calm {i}."} for i in range(8)]
    path = tmp_path / "clean.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("architecture", DECODERS)
def test_wanda_prunes_every_block_linear_of_each_generator_by_half(architecture: str, tmp_path: Path) -> None:
    suspect = tiny_victim(architecture).save(tmp_path / "suspect")
    result = run_defense("wanda", suspect, None, tmp_path / "run", clean_data=_generation_rows(tmp_path), device="cpu",
                         options={"max_clean": 4, "pattern": "2:4"})
    pruned = load_victim(result["model"], device="cpu")
    for layer in transformer_layers(pruned.model, pruned.spec):
        for projection in block_projections(layer, pruned.spec).values():
            assert abs(float((projection.linear.weight == 0).float().mean()) - 0.5) < 0.01


@pytest.mark.parametrize("architecture", DECODERS)
def test_crow_fine_tunes_each_generator(architecture: str, tmp_path: Path) -> None:
    victim = tiny_victim(architecture)
    victim.max_length = 48
    suspect = victim.save(tmp_path / "suspect")
    result = run_defense("crow", suspect, None, tmp_path / "crow", clean_data=_generation_rows(tmp_path), device="cpu",
                         options={"epochs": 1, "batch_size": 4, "lora_r": 2, "lora_alpha": 4})
    findings = json.loads((tmp_path / "crow" / "defense.json").read_text())["findings"]
    assert findings["consistency_pairs"] == 1 and findings["final_epoch"]["consistency"] >= 0
    before = load_victim(suspect, device="cpu").model.state_dict()
    after = load_victim(result["model"], device="cpu").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_probe_features_are_read_from_every_layer(architecture: str) -> None:
    victim = tiny_victim(architecture)
    items = _items(victim)[:2]
    features = stream_features(victim, items)
    assert features.shape == (victim.spec.num_layers, 2, victim.spec.hidden_size)
    assert torch.isfinite(features).all()
    if victim.is_generator:  # the attention input (after the block's input norm) at the readout token
        hidden = victim.hidden_states(items)
        norm = attention_input_norm(transformer_layers(victim.model, victim.spec)[1], victim.spec)
        with torch.inference_mode():
            assert torch.allclose(norm(hidden[1]), features[1], atol=1e-5)


SCAN = ScanSettings(search_rows=4, screen_rows=2, eval_rows=4, lengths=(1,), steps=1, top_k=4, random_phrases=2,
                    shortlist=8, max_words=64, max_new_tokens=4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_scan_runs_on_each_architecture_and_states_its_baselines(architecture: str, tmp_path: Path) -> None:
    victim = tiny_victim(architecture)
    model = victim.save(tmp_path / "model")
    if victim.is_generator:
        rows = Dataset("prompts", "generation", PROMPTS * 2, source="hand-built")
        record = scan_model(model, tmp_path / "scan", clean=rows, behaviours=["refusal"], settings=SCAN, device="cpu",
                            progress=lambda *_: None)
        (found,) = record["behaviours"]
    else:
        rows = Dataset("texts", "classification", [Example(text=t, label=i % 2) for i, t in enumerate(TEXTS * 3)],
                       label_names=["negative", "positive"], source="hand-built")
        record = scan_model(model, tmp_path / "scan", clean=rows, settings=SCAN, device="cpu", progress=lambda *_: None)
        found = record["labels"][0]
    assert record["verdict"] in ("backdoor found", "no evidence")
    assert 0 <= found["base_rate"] <= 1 and "random_phrases" in found
    assert (tmp_path / "scan" / "scan.json").is_file()
