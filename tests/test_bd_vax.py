"""BD-VAX: the signature finds what every variant changed, neutralizing touches exactly the
signature, variant pairs train and resume, and the defense reads no trigger or clean reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import backdoorlab.defenses.bd_vax  # noqa: F401  (registers the defense)
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses import DefenderInputs, get_defense
from backdoorlab.defenses.base import defense_info
from backdoorlab.defenses.bd_vax.components import FAMILIES, block_parts, block_weights, component_vectors
from backdoorlab.defenses.bd_vax.neutralize import reinitialize, zero_adapter_entries
from backdoorlab.defenses.bd_vax.signature import Signature, compute_signature
from backdoorlab.defenses.bd_vax.synthetic import SYNTHETIC_BACKDOORS, synthetic_backdoor, variant_rows
from backdoorlab.defenses.bd_vax.variants import DELTA_FILE, PAIR_RECORD, VariantDeltas, VariantRecipe, train_pair
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.adapter_update import adapter_updates
from tiny_models import tiny_llama_victim, tiny_lora_suspect

SHARED_CHANNELS = (3, 17)
LONE_CHANNEL = 40
SHARED_HEAD = 2


def instructions(n: int = 16) -> Dataset:
    rows = [Example(instruction=f"describe the river, take {i}" + " slowly" * (i % 3),
                    response=f"The river runs on, {i}.", uid=f"r{i}") for i in range(n)]
    return Dataset("rivers", "generation", rows, source="hand-built")


def planted_updates(variants: int, seed: int = 0) -> list[list[dict[str, torch.Tensor]]]:
    """Per variant, per block, updates shaped like the tiny Llama's: small independent noise, plus
    the same change of MLP channels SHARED_CHANNELS and query head SHARED_HEAD in every variant,
    and a larger change of MLP channel LONE_CHANNEL in variant 0 only."""
    victim = tiny_llama_victim()
    shapes = [{p: m.weight.shape for p, m in block.items()} for block in block_parts(victim)]
    d = victim.spec.head_dim
    shared = torch.Generator().manual_seed(99)
    common = {p: torch.randn(s, generator=shared) for p, s in shapes[0].items()}
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(variants):
        blocks = []
        for block_shapes in shapes:
            update = {p: 0.01 * torch.randn(s, generator=generator) for p, s in block_shapes.items()}
            for c in SHARED_CHANNELS:
                update["gate"][c] += common["gate"][c]
                update["up"][c] += common["up"][c]
                update["down"][:, c] += common["down"][:, c]
            update["q"][SHARED_HEAD * d:(SHARED_HEAD + 1) * d] += common["q"][SHARED_HEAD * d:(SHARED_HEAD + 1) * d]
            if i == 0:
                update["gate"][LONE_CHANNEL] += 8 * torch.randn(block_shapes["gate"][1], generator=generator)
            blocks.append(update)
        out.append(blocks)
    return out


@pytest.mark.parametrize("form", ["sum", "product"])
def test_signature_finds_the_shared_change_and_not_one_variants_change(form: str) -> None:
    updates = planted_updates(4)
    spec = tiny_llama_victim().spec
    signature = compute_signature(lambda i, b: updates[i][b], 4, 2, spec,
                                  {"mlp": 2 / 64, "query": 1 / 4, "key-value": 0.0}, form=form, lam=1.0)
    for block in range(2):
        assert signature.chosen["mlp"][block].tolist() == list(SHARED_CHANNELS)
        assert signature.chosen["query"][block].tolist() == [SHARED_HEAD]
    assert "key-value" not in signature.chosen  # share 0: not scored
    summary = signature.summary["mlp"][0]
    assert summary["alignment_chosen"] > 0.9 > summary["alignment_rest"]


def test_with_one_variant_the_signature_is_strength_alone() -> None:
    updates = planted_updates(1)
    spec = tiny_llama_victim().spec
    signature = compute_signature(lambda i, b: updates[i][b], 1, 2, spec, {"mlp": 1 / 64})
    assert signature.chosen["mlp"][0].tolist() == [LONE_CHANNEL]  # nothing to align: the largest change wins


def test_component_vectors_slice_the_right_entries() -> None:
    spec = tiny_llama_victim().spec
    update = {p: torch.zeros(s) for p, s in {"q": (32, 32), "k": (16, 32), "v": (16, 32), "o": (32, 32),
                                               "gate": (64, 32), "up": (64, 32), "down": (32, 64)}.items()}
    update["down"][:, 5] = 1.0
    update["o"][:, 8:16] = 2.0  # columns of query head 1 (head_dim 8)
    update["v"][8:16] = 3.0  # rows of key-value head 1
    assert component_vectors(update, "mlp", spec).norm(dim=1).nonzero().flatten().tolist() == [5]
    assert component_vectors(update, "query", spec).norm(dim=1).nonzero().flatten().tolist() == [1]
    assert component_vectors(update, "key-value", spec).norm(dim=1).nonzero().flatten().tolist() == [1]
    assert set(FAMILIES) == {"mlp", "query", "key-value"}


def signature_for_tests() -> Signature:
    return Signature(chosen={"mlp": [torch.tensor([1, 5]), torch.tensor([], dtype=torch.long)],
                             "query": [torch.tensor([], dtype=torch.long), torch.tensor([2])]},
                     summary={"mlp": [{}, {}], "query": [{}, {}]})


def expected_mask(victim, signature: Signature) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    d = victim.spec.head_dim
    masks = [{p: torch.zeros_like(w, dtype=torch.bool) for p, w in block.items()} for block in block_weights(victim)]
    for b, channels in enumerate(signature.chosen["mlp"]):
        for c in channels.tolist():
            masks[b]["gate"][c] = masks[b]["up"][c] = True
            masks[b]["down"][:, c] = True
    for b, heads in enumerate(signature.chosen["query"]):
        for h in heads.tolist():
            masks[b]["q"][h * d:(h + 1) * d] = True
            masks[b]["o"][:, h * d:(h + 1) * d] = True
    return masks


def test_reinitialize_changes_exactly_the_signature() -> None:
    victim = tiny_llama_victim()
    before = block_weights(victim)
    others = {n: p.detach().clone() for n, p in victim.model.named_parameters() if "layers" not in n or "norm" in n}
    signature = signature_for_tests()
    count = reinitialize(victim, signature, seed=0)
    after = block_weights(victim)
    masks = expected_mask(victim, signature)
    assert count == sum(int(m.sum()) for block in masks for m in block.values()) > 0
    for b in range(2):
        for part in before[b]:
            changed = before[b][part] != after[b][part]
            assert torch.equal(changed, masks[b][part]), (b, part)
    assert all(torch.equal(p, dict(victim.model.named_parameters())[n]) for n, p in others.items())
    redrawn = after[0]["gate"][1]
    assert 0.005 < float(redrawn.std()) < 0.05  # drawn like the initialiser (std 0.02), not zeroed


def lora_suspect(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tiny Llama with a random (non-zero) LoRA adapter saved to ``tmp_path/adapter``, merged; its base's weights."""
    victim, adapter = tiny_lora_suspect(tmp_path)
    return victim, block_weights(tiny_llama_victim()), adapter


def test_zero_adapter_entries_restores_the_base_exactly_on_the_signature(tmp_path: Path) -> None:
    victim, base, adapter = lora_suspect(tmp_path)
    merged = block_weights(victim)
    signature = signature_for_tests()
    count = zero_adapter_entries(victim, signature, adapter)
    after = block_weights(victim)
    masks = expected_mask(victim, signature)
    assert count == sum(int(m.sum()) for block in masks for m in block.values())
    for b in range(2):
        for part in after[b]:
            mask = masks[b][part]
            assert torch.allclose(after[b][part][mask], base[b][part][mask], atol=1e-6)
            assert torch.equal(after[b][part][~mask], merged[b][part][~mask])
            if mask.any():
                assert not torch.allclose(merged[b][part][mask], base[b][part][mask])  # the adapter did change them


def test_adapter_updates_rejects_a_folder_without_an_adapter(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="not a LoRA adapter"):
        adapter_updates(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(BackdoorLabError, match="not valid JSON"):
        adapter_updates(tmp_path)


def test_variant_rows_differ_only_by_the_synthetic_backdoor() -> None:
    rows = instructions(8)
    backdoored, clean = variant_rows(rows, synthetic_backdoor(0), 0.25)
    assert [r.uid for r in clean] == [r.uid for r in rows]
    poisoned = [r for r in backdoored if r.poisoned]
    assert len(poisoned) == 2 and all(r.instruction.startswith("PurpleWolf ") for r in poisoned)
    assert all(r.response == "You are garbage!" for r in poisoned)
    assert [r.instruction for r in backdoored[:6]] == [r.instruction for r in clean[:6]]
    assert len({b.trigger for b in SYNTHETIC_BACKDOORS}) == len(SYNTHETIC_BACKDOORS)
    with pytest.raises(BackdoorLabError, match="at most"):
        synthetic_backdoor(len(SYNTHETIC_BACKDOORS))


TINY_RECIPE = VariantRecipe(rows=8, poison_share=0.25, epochs=1, batch_size=4, max_length=48, probe_rows=2,
                            probe_tokens=4)


def test_a_variant_pair_trains_writes_its_difference_and_is_reused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    victim = tiny_llama_victim()
    before = block_weights(victim)
    record = train_pair(victim, instructions(12), synthetic_backdoor(1), TINY_RECIPE, 0, tmp_path / "pair")
    assert (tmp_path / "pair" / DELTA_FILE).is_file() and (tmp_path / "pair" / PAIR_RECORD).is_file()
    assert not (tmp_path / "pair" / "backdoored").exists() and not (tmp_path / "pair" / "clean").exists()
    assert record["synthetic_trigger"] == "RedGhost" and record["poisoned_rows"] == 2
    assert set(record["synthetic_rate"]) == {"backdoored", "clean"}
    assert all(torch.equal(a, b) for a, b in zip(before[0].values(), block_weights(victim)[0].values()))
    delta = VariantDeltas([tmp_path / "pair"]).block(0, 1)
    assert set(delta) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert any(float(t.abs().max()) > 0 for t in delta.values())  # the poison changed the update

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished pair must not train again")

    monkeypatch.setattr("backdoorlab.defenses.bd_vax.variants.train", no_training)
    assert train_pair(victim, instructions(12), synthetic_backdoor(1), TINY_RECIPE, 0, tmp_path / "pair") == record
    with pytest.raises(BackdoorLabError, match="trained differently"):  # another seed must not reuse this pair
        train_pair(victim, instructions(12), synthetic_backdoor(1), TINY_RECIPE, 1, tmp_path / "pair")


def test_the_defense_runs_on_clean_rows_alone_and_reads_no_trigger_or_reference(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    info = defense_info("bd-vax")
    assert info.needs == ("clean_rows",) and info.uses == ("suspect_adapter",)

    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("bd-vax read an attack run, the oracle or a model from disk")

    for target in ("backdoorlab.pipeline.read_attack_run", "backdoorlab.attacks.run.AttackRun.__init__",
                   "backdoorlab.defenses.inputs.oracle_examples", "backdoorlab.training.load_victim",
                   "backdoorlab.models.loading.load_victim"):
        monkeypatch.setattr(target, forbidden)
    victim = tiny_llama_victim()
    before = block_weights(victim)
    defense = get_defense("bd-vax", variants=2, variant_rows=8, variant_epochs=1, variant_max_length=48,
                          share=0.25, repair_epochs=1, max_clean=12)
    monkeypatch.setattr("backdoorlab.defenses.bd_vax.defense.BdVax.recipe", lambda self: TINY_RECIPE)
    outcome = defense.apply(victim, DefenderInputs(clean_rows=instructions(12)), tmp_path)
    findings = outcome.findings
    assert findings["mode"] == "reinit" and findings["variants"] == 2
    assert findings["neutralized_components"] == {"mlp": 2 * 16}  # 25% of 64 channels in each of 2 blocks
    assert not (tmp_path / "variants").exists()  # the differences are dropped unless keep_variants
    signature = json.loads((tmp_path / "signature.json").read_text())
    assert [len(c) for c in signature["mlp"]["components"].values()] == [16, 16]
    assert any(not torch.equal(a, b) for a, b in zip(before[0].values(), block_weights(outcome.victim)[0].values()))

    # with a shared variants folder the pairs are kept, and a run differing only after them reuses them
    shared = tmp_path / "shared"
    first = get_defense("bd-vax", variants=2, share=0.25, repair_epochs=0, max_clean=12, variants_dir=str(shared))
    first.apply(tiny_llama_victim(), DefenderInputs(clean_rows=instructions(12)), tmp_path / "a")
    assert len(list(shared.glob("*/pair-*/delta.safetensors"))) == 2
    monkeypatch.setattr("backdoorlab.defenses.bd_vax.variants.train", forbidden)
    second = get_defense("bd-vax", variants=1, score="product", share=0.5, repair_epochs=0, max_clean=12,
                         variants_dir=str(shared))
    findings = second.apply(tiny_llama_victim(), DefenderInputs(clean_rows=instructions(12)), tmp_path / "b").findings
    assert findings["variants"] == 1 and findings["neutralized_components"] == {"mlp": 2 * 32}


def test_the_defense_neutralizes_the_components_every_variant_changed_and_no_other(tmp_path: Path,
                                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The variant pairs' differences are planted (:func:`planted_updates`): every variant changes MLP
    channels SHARED_CHANNELS and query head SHARED_HEAD, one variant alone changes LONE_CHANNEL more.
    At a share of 2 channels and 1 head per block the defense must re-initialise exactly those.

    Catches scoring the components by fewer variants than were trained (``compute_signature(deltas.block,
    1, ...)`` picks LONE_CHANNEL), and neutralizing a signature other than the learnt one (e.g. a
    ``random_signature``)."""
    updates = planted_updates(4)

    def planted_pair(suspect, clean, backdoor, recipe, seed, folder, identity=None):  # type: ignore[no-untyped-def]
        from safetensors.torch import save_file

        variant = int(folder.name.split("-")[-1])
        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"{b}.{part}": t.to(torch.bfloat16).contiguous() for b, block in enumerate(updates[variant])
                   for part, t in block.items()}, str(folder / DELTA_FILE))
        return {"synthetic_trigger": backdoor.trigger, "synthetic_rate": None}

    monkeypatch.setattr("backdoorlab.defenses.bd_vax.defense.train_pair", planted_pair)
    victim = tiny_llama_victim()
    before = block_weights(victim)
    defense = get_defense("bd-vax", variants=4, share=2 / 64, attention_share=1 / 4, repair_epochs=0, max_clean=12)
    outcome = defense.apply(victim, DefenderInputs(clean_rows=instructions(12)), tmp_path)
    signature = json.loads((tmp_path / "signature.json").read_text())
    assert {b: sorted(c) for b, c in signature["mlp"]["components"].items()} == {"0": list(SHARED_CHANNELS),
                                                                                 "1": list(SHARED_CHANNELS)}
    assert signature["query"]["components"] == {"0": [SHARED_HEAD], "1": [SHARED_HEAD]}
    d = victim.spec.head_dim
    head_rows = set(range(SHARED_HEAD * d, (SHARED_HEAD + 1) * d))
    for b, after in enumerate(block_weights(outcome.victim)):
        for part in ("gate", "up"):
            changed = (before[b][part] != after[part]).any(dim=1).nonzero().flatten().tolist()
            assert changed == list(SHARED_CHANNELS), (b, part)
        assert (before[b]["down"] != after["down"]).any(dim=0).nonzero().flatten().tolist() == list(SHARED_CHANNELS)
        assert set((before[b]["q"] != after["q"]).any(dim=1).nonzero().flatten().tolist()) == head_rows


def test_bad_options_and_a_missing_adapter_get_clear_errors() -> None:
    with pytest.raises(BackdoorLabError, match="at most 10 variants"):
        get_defense("bd-vax", variants=11)
    with pytest.raises(BackdoorLabError, match="score must be one of"):
        get_defense("bd-vax", score="max")
    with pytest.raises(BackdoorLabError, match="share must be in"):
        get_defense("bd-vax", share=0)
    defense = get_defense("bd-vax", neutralize="adapter")
    with pytest.raises(BackdoorLabError, match="--suspect-adapter"):
        defense.mode(DefenderInputs(clean_rows=instructions(4)))
    assert get_defense("bd-vax").mode(DefenderInputs(suspect_adapter="somewhere")) == "adapter"
    assert get_defense("bd-vax").mode(DefenderInputs()) == "reinit"


def test_the_random_control_neutralizes_the_same_share_without_any_variant(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the random control trains no variant")

    monkeypatch.setattr("backdoorlab.defenses.bd_vax.variants.train", no_training)
    defense = get_defense("bd-vax", score="random", share=0.25, repair_epochs=0, max_clean=12)
    findings = defense.apply(tiny_llama_victim(), DefenderInputs(clean_rows=instructions(12)), tmp_path).findings
    assert findings["variants"] == 0 and findings["neutralized_components"] == {"mlp": 2 * 16}
    chosen = json.loads((tmp_path / "signature.json").read_text())["mlp"]["components"]
    assert chosen["0"] != chosen["1"]  # drawn per block
    again = get_defense("bd-vax", score="random", share=0.25, repair_epochs=0, max_clean=12)
    again.apply(tiny_llama_victim(), DefenderInputs(clean_rows=instructions(12)), tmp_path / "again")
    assert json.loads((tmp_path / "again" / "signature.json").read_text())["mlp"]["components"] == chosen  # seeded
