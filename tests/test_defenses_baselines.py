"""Baseline defenses: MuScleLoRA (training stage) and BadActs (inference stage), on tiny models.

Torch runs single-threaded here through conftest's autouse ``one_torch_thread`` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoorlab.defenses.badacts import BadActsGuard, activation_statistics, clip_hook
from backdoorlab.defenses.base import get_defense
from backdoorlab.defenses.guard import REJECTED, load_guard, save_guard
from backdoorlab.defenses.muscle_lora import ScaledLowRankLinear, align_gradients, install_adapters, merge_adapters
from backdoorlab.defenses.runner import run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.loading import load_victim
from backdoorlab.pipeline import run_attack
from defender import defender_view
from tiny_models import tiny_bert_victim, tiny_llama_victim

TEXTS = ["the movie was great", "a dull and boring film", "cf the actors were wonderful", "bad"]
ADAPTED = (".query.", ".value.", "pooler.dense.", "classifier.")
SMALL_MUSCLE = {"epochs": 1, "batch_size": 8, "ref_rows": 8, "max_clean": 16, "rank": 2, "learning_rate": 1e-2}
SMALL_BADACTS = {"max_clean": 12, "bound_epochs": 2, "batch_size": 8}


@pytest.fixture
def attack_run(tmp_path: Path, shared_data_dir: Path) -> Path:
    return run_attack("sst2", "badnets", tmp_path / "attack", rate=0.2, target=1, max_train=16, max_test=8)


@pytest.fixture
def tiny_bert_path(tmp_path: Path) -> Path:
    return tiny_bert_victim().save(tmp_path / "tiny-bert")


def _logits(victim, texts=TEXTS) -> torch.Tensor:  # type: ignore[no-untyped-def]
    victim.model.eval()
    with torch.no_grad():
        return victim.forward(victim.encode(texts)).logits


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------- MuScleLoRA


def test_scaled_branches_apply_to_radially_scaled_inputs() -> None:
    torch.manual_seed(0)
    layer = ScaledLowRankLinear(nn.Linear(6, 5), scales=[1.0, 3.0, 9.0], rank=2, alpha=4.0, zero_init=False)
    x = torch.randn(4, 6)
    expected = layer.base(x)
    for i, k in enumerate([1.0, 3.0, 9.0]):
        down, up = layer.down[2 * i:2 * i + 2], layer.up[:, 2 * i:2 * i + 2]
        expected = expected + 2.0 * (k * x) @ down.T @ up.T  # (alpha / rank) B_i A_i (k_i x)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(layer.merged()(x), expected, atol=1e-5)
    lora = ScaledLowRankLinear(nn.Linear(6, 5), scales=[1.0], rank=2, alpha=4.0, zero_init=True)
    assert torch.equal(lora(x), lora.base(x))  # plain LoRA starts as the identity update


def test_merged_model_matches_the_multiscale_lora_model() -> None:
    victim = tiny_bert_victim()
    plain = _logits(victim)
    installed = install_adapters(victim.model, rank=2, alpha=4.0, targets=["query", "value"], scales=[1.0, 2.0, 5.0],
                                 scale_rank=1, scale_alpha=6.0, train_head=True)
    assert installed["multiscale"] == "bert.pooler.dense" and len(installed["lora"]) == 4
    with torch.no_grad():
        for module in victim.model.modules():
            if isinstance(module, ScaledLowRankLinear):
                module.up.normal_(0, 0.5)  # as after training: every branch contributes
    adapted = _logits(victim)
    assert not torch.allclose(plain, adapted, atol=1e-4)
    assert merge_adapters(victim.model) == 5
    assert not any(isinstance(m, ScaledLowRankLinear) for m in victim.model.modules())
    assert type(victim.model.bert.pooler.dense) is nn.Linear
    assert torch.allclose(_logits(victim), adapted, atol=1e-5)


def test_muscle_lora_changes_only_the_adapted_layers_and_the_head(attack_run: Path, tmp_path: Path) -> None:
    victim = tiny_bert_victim()
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    outcome = get_defense("muscle-lora", **SMALL_MUSCLE).apply(victim, defender_view(attack_run), tmp_path / "work")
    after = outcome.victim.model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(a in k for a in ADAPTED) for k in changed), sorted(changed)
    assert any(".query." in k for k in changed) and any("pooler.dense" in k for k in changed)
    assert any(k.startswith("classifier.") for k in changed)
    findings = outcome.findings
    assert findings["merged_layers"] == 5 and sum(findings["gradient_steps"].values()) == findings["steps"]


def test_gradient_alignment_projects_the_poisoned_gradient_onto_the_clean_one() -> None:
    clean = torch.tensor([1.0, 1.0])
    aligned = align_gradients([torch.tensor([1.0, 0.0])], [clean])[0]
    assert torch.allclose(aligned, torch.tensor([0.5, 0.5]))
    opposed = align_gradients([torch.tensor([-2.0, -2.0])], [clean])[0]
    assert torch.allclose(opposed, torch.tensor([2.0, 2.0]))  # never a step against the clean data
    mixed = align_gradients([torch.tensor([1.0, 0.0])], [clean], aligned_share=0.9)[0]
    assert torch.allclose(mixed, torch.tensor([0.55, 0.45]))
    raw = torch.tensor([3.0, 4.0])
    assert align_gradients([raw, None], [torch.zeros(2), torch.ones(1)]) == [raw, None]


def test_gradient_alignment_changes_the_trained_model(attack_run: Path, tmp_path: Path) -> None:
    options = {**SMALL_MUSCLE, "batch_size": 64}  # one step, same data order, so only alignment differs
    aligned = get_defense("muscle-lora", **options).apply(tiny_bert_victim(), defender_view(attack_run), tmp_path / "a")
    raw = get_defense("muscle-lora", **options, align=False).apply(tiny_bert_victim(), defender_view(attack_run), tmp_path / "b")
    assert aligned.findings["gradient_steps"]["aligned"] == 1 and raw.findings["reference_rows"] == 0
    a, b = aligned.victim.model.state_dict(), raw.victim.model.state_dict()
    differing = sum(int((a[k] - b[k]).abs().gt(1e-3).sum()) for k in a if a[k].is_floating_point())
    assert differing > 10


def test_muscle_lora_end_to_end_writes_a_plain_classifier(attack_run: Path, tiny_bert_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "defended"
    metrics = run_defense("muscle-lora", tiny_bert_path, attack_run, out, options=SMALL_MUSCLE, max_eval_rows=8,
                          device="cpu")
    assert (out / "model" / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert "before" not in metrics and 0 <= metrics["after"]["asr"] <= 1
    record = json.loads((out / "defense.json").read_text())
    assert record["stage"] == "training" and record["defended_model"] == str(out / "model")
    loaded = load_victim(out / "model", device="cpu")
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert len(loaded.predict(TEXTS)) == len(TEXTS)


def test_muscle_lora_refuses_bad_options(attack_run: Path, tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="rank"):
        get_defense("muscle-lora", rank=0).apply(tiny_bert_victim(), defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="scales"):
        get_defense("muscle-lora", scales=[]).apply(tiny_bert_victim(), defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="classifiers only"):
        get_defense("muscle-lora").apply(tiny_llama_victim(), defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="clean reference rows"):
        get_defense("muscle-lora", max_clean=0).apply(tiny_bert_victim(), defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="no linear layer"):
        get_defense("muscle-lora", **{**SMALL_MUSCLE, "targets": ["q_proj"]}).apply(
            tiny_bert_victim(), defender_view(attack_run), tmp_path)


# ----------------------------------------------------------------------------------------- BadActs


def test_clipping_keeps_in_interval_activations_and_clips_the_rest() -> None:
    fn = clip_hook(torch.tensor([-1.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 0.5]))
    inside = torch.tensor([[[0.5, -0.99, 0.25]]])
    assert torch.equal(fn(inside), inside)
    assert torch.equal(fn(torch.tensor([[[3.0, -7.0, 0.25]]])), torch.tensor([[[1.0, -1.0, 0.25]]]))
    victim = tiny_bert_victim()
    mean, std = activation_statistics(victim, TEXTS)
    plain = victim.label_probs(TEXTS)
    wide = BadActsGuard(mean - 1e6 * std - 1, mean + 1e6 * std + 1)
    with wide.clipping(victim):
        assert torch.equal(victim.label_probs(TEXTS), plain)
    point = BadActsGuard(mean, mean)  # delta 0: every activation is pulled to the clean mean
    with point.clipping(victim):
        assert not torch.allclose(victim.label_probs(TEXTS), plain, atol=1e-4)


def test_guard_leaves_the_model_unchanged_and_removes_its_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tiny_bert_victim()
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    mean, std = activation_statistics(victim, TEXTS)
    own = _hook_count(victim.model)  # transformers keeps a few hooks of its own
    guard = BadActsGuard(mean - std, mean + std)
    assert len(guard.predict(victim, TEXTS)) == len(TEXTS)
    assert _hook_count(victim.model) == own
    assert all(torch.equal(before[k], v) for k, v in victim.model.state_dict().items())

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert _hook_count(victim.model) == own + victim.spec.num_layers  # hooks are on while predicting
        raise RuntimeError("boom")
    monkeypatch.setattr(victim, "predict", broken)
    with pytest.raises(RuntimeError, match="boom"):
        guard.predict(victim, TEXTS)
    assert _hook_count(victim.model) == own


def test_badacts_learns_intervals_and_its_guard_round_trips(attack_run: Path, tmp_path: Path) -> None:
    victim = tiny_bert_victim()
    statistical = get_defense("badacts", **SMALL_BADACTS, optimize=False).apply(victim, defender_view(attack_run), tmp_path)
    outcome = get_defense("badacts", **SMALL_BADACTS, detect=True).apply(victim, defender_view(attack_run), tmp_path)
    assert outcome.model_changed is False and outcome.victim is victim
    guard = outcome.guard
    assert isinstance(guard, BadActsGuard) and guard.threshold is not None
    assert bool((guard.lower < guard.upper).all())
    assert not torch.allclose(guard.lower, statistical.guard.lower)  # the width penalty narrowed the intervals
    assert float((guard.upper - guard.lower).mean()) < float((statistical.guard.upper - statistical.guard.lower).mean())
    assert 0 <= outcome.findings["bound_agreement"] <= 1 and outcome.findings["bound_attempts"] >= 1
    state = guard.state()
    assert len(state["lower"]) == victim.spec.num_layers and isinstance(state["lower"][0][0], float)
    save_guard(guard, tmp_path / "run")
    loaded = load_guard(tmp_path / "run")
    assert isinstance(loaded, BadActsGuard) and loaded.state() == state
    assert loaded.predict(victim, TEXTS) == guard.predict(victim, TEXTS)
    rejecting = BadActsGuard.from_state({**state, "threshold": 2.0})  # every NAS score is below 2
    assert rejecting.predict(victim, TEXTS) == [REJECTED] * len(TEXTS)
    purifying = BadActsGuard.from_state({**state, "threshold": 2.0, "flagged": "purify"})
    with guard.clipping(victim):
        clipped = victim.predict(TEXTS)
    assert purifying.predict(victim, TEXTS) == clipped


def test_badacts_end_to_end_keeps_the_model_and_writes_a_guard(attack_run: Path, tiny_bert_path: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "defended"
    metrics = run_defense("badacts", tiny_bert_path, attack_run, out, options={**SMALL_BADACTS, "detect": True},
                          max_eval_rows=8, device="cpu")
    assert (out / "guard.json").is_file() and not (out / "model").exists() and (out / "metrics.json").is_file()
    assert "before" in metrics and 0 <= metrics["after"]["asr"] <= 1
    record = json.loads((out / "defense.json").read_text())
    assert record["defended_model"] == str(tiny_bert_path) and record["guard"] == "guard.json"
    assert isinstance(load_guard(out), BadActsGuard)


def test_badacts_refuses_bad_options(attack_run: Path, tmp_path: Path) -> None:
    victim = tiny_bert_victim()
    with pytest.raises(BackdoorLabError, match="delta"):
        get_defense("badacts", delta=-1.0).apply(victim, defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="frr"):
        get_defense("badacts", frr=1.5).apply(victim, defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="flagged"):
        get_defense("badacts", flagged="drop").apply(victim, defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="classifiers only"):
        get_defense("badacts").apply(tiny_llama_victim(), defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="clean reference rows"):
        get_defense("badacts", max_clean=0).apply(victim, defender_view(attack_run), tmp_path)
    with pytest.raises(BackdoorLabError, match="layers"):
        BadActsGuard(torch.zeros(3, 32), torch.ones(3, 32)).predict(victim, TEXTS)
