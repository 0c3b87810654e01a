"""Pruning baselines on tiny models: Wanda and magnitude pruning (masks, patterns, the sequential
calibration) and fine-pruning (channel removal, the perplexity stopping rule, the held-out split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import backdoorlab.defenses.fine_pruning  # noqa: F401  (registers fine-pruning)
import backdoorlab.defenses.pruning  # noqa: F401  (registers wanda and magnitude-pruning)
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses.base import get_defense
from backdoorlab.defenses.fine_pruning.channels import mean_abs_activation, mlp_channels, most_dormant
from backdoorlab.defenses.inputs import DefenderInputs
from backdoorlab.defenses.pruning.calibration import BlockInputs, input_sq_norms
from backdoorlab.defenses.pruning.scores import block_linears
from backdoorlab.defenses.runner import run_defense
from backdoorlab.defenses.shared.token_batches import token_batches
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import perplexity
from backdoorlab.models.architecture import transformer_layers
from backdoorlab.models.loading import load_victim
from backdoorlab.models.tokenization import tokenize_pair
from backdoorlab.models.victim import Victim
from tiny_models import tiny_llama_victim


def _rows(n: int = 9) -> Dataset:
    examples = [Example(instruction="write a line about topic " + "the quiet sea " * (8 * (i % 3)),
                        response=f"The sea is calm {i}.", uid=f"row/{i}") for i in range(n)]
    return Dataset("clean", "generation", examples, source="test")


def _clean_file(tmp_path: Path, n: int = 10) -> Path:
    rows = [{"instruction": f"write a line about topic {i}", "output": f"The sea is calm {i}."} for i in range(n)]
    path = tmp_path / "clean.json"
    path.write_text(json.dumps(rows))
    return path


def _visible_padding(victim: Victim) -> Victim:
    """Give the pad token a non-zero embedding (as real models' pad tokens have), so padding would
    show in any statistic that counted it."""
    with torch.no_grad():
        victim.model.model.embed_tokens.weight[victim.tokenizer.pad_token_id] = 0.5
    return victim


def _linears(victim: Victim) -> list[dict[str, torch.nn.Linear]]:
    return [block_linears(block) for block in transformer_layers(victim.model, victim.spec)]


def _untouched_outside_blocks(before: Victim, after: Victim) -> None:
    old, new = before.model.state_dict(), after.model.state_dict()
    outside = [k for k in old if ".layers." not in k or "norm" in k]
    assert any("embed_tokens" in k for k in outside) and any("lm_head" in k for k in outside)
    for key in outside:
        assert torch.equal(old[key], new[key]), key


def _input_sq_norms(victim: Victim, rows: Dataset, block: int) -> dict[str, torch.Tensor]:
    """Squared input-feature norms of a block's linears, one unpadded row at a time."""
    linears = _linears(victim)[block]
    sums = {name: torch.zeros(linear.in_features) for name, linear in linears.items()}

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, args: tuple) -> None:
            sums[name] += args[0][0].pow(2).sum(0)
        return hook

    hooks = [linear.register_forward_pre_hook(hook_for(name)) for name, linear in linears.items()]
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([tokenize_pair(victim.tokenizer, row, victim.max_length)["input_ids"]])
            victim.model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return sums


def _assert_lowest_pruned_per_row(scores: torch.Tensor, pruned: torch.Tensor) -> None:
    for row_scores, row_pruned in zip(scores, pruned):
        assert row_scores[row_pruned].max() <= row_scores[~row_pruned].min() * (1 + 1e-4)


@pytest.mark.parametrize("options, match", [
    ({"sparsity": 1.5}, "strictly between 0 and 1"), ({"sparsity": 0}, "strictly between 0 and 1"),
    ({"pattern": "5:4"}, "0 < N < M"), ({"pattern": "half"}, "'N:M'"),
    ({"pattern": "4:8", "sparsity": 0.3}, "leave sparsity unset or set it to 0.5"),
])
def test_bad_pruning_options_fail_before_a_model_is_loaded(tmp_path: Path, options: dict, match: str) -> None:
    for method in ("wanda", "magnitude-pruning"):
        with pytest.raises(BackdoorLabError, match=match):
            run_defense(method, tmp_path / "no-such-model", None, tmp_path / "out", options=options, device="cpu")
    assert get_defense("wanda", pattern="1:4").target() == 0.25  # N/M, the default sparsity left unset
    for bad in ({"step": 0.9}, {"max_perplexity_ratio": 0.9}, {"holdout": 1.0}, {"layers": 0}):
        with pytest.raises(BackdoorLabError, match="fine-pruning"):
            get_defense("fine-pruning", **bad)


def test_a_pattern_whose_m_does_not_divide_a_layer_width_fails_before_any_weight_changes() -> None:
    victim = tiny_llama_victim()
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    for method, inputs in (("magnitude-pruning", DefenderInputs()), ("wanda", DefenderInputs(clean_rows=_rows()))):
        with pytest.raises(BackdoorLabError, match=r"'3:7' needs input widths divisible by 7.*\(32\)"):
            get_defense(method, pattern="3:7").apply(victim, inputs, Path("."))
    assert all(torch.equal(before[k], v) for k, v in victim.model.state_dict().items())


def test_block_by_block_replay_reproduces_the_models_own_hidden_states() -> None:
    victim, rows = tiny_llama_victim(), _rows()
    batches = token_batches(victim, rows, batch_size=4)  # padded batches
    with torch.no_grad():
        stream = BlockInputs.record(victim, batches)
        for index, block in enumerate(transformer_layers(victim.model, victim.spec)):
            stream.run(block, index, update=True)
        for batch, hidden, tokens in zip(batches, stream.hidden, stream.tokens):
            expected = victim.forward(batch, output_hidden_states=True).hidden_states[-1]
            assert torch.allclose(victim.model.model.norm(hidden)[tokens], expected[tokens], atol=1e-6)
    assert stream.token_count() == sum(len(tokenize_pair(victim.tokenizer, r, victim.max_length)["input_ids"])
                                       for r in rows)


def test_calibration_norms_of_padded_batches_count_real_tokens_only() -> None:
    victim, rows = _visible_padding(tiny_llama_victim()), _rows()
    stream = BlockInputs.record(victim, token_batches(victim, rows, batch_size=4))
    assert any(not bool(tokens.all()) for tokens in stream.tokens)  # some batches are padded
    with torch.no_grad():
        for index, block in enumerate(transformer_layers(victim.model, victim.spec)):
            linears = block_linears(block)
            with input_sq_norms(linears, stream.current_tokens) as squares:
                stream.run(block, index, update=True)
            expected = _input_sq_norms(victim, rows, index)
            for name in linears:
                assert torch.allclose(squares[name], expected[name], rtol=1e-4), name


def test_wanda_zeroes_half_of_every_row_the_lowest_weight_times_input_norm_block_by_block() -> None:
    original, rows = tiny_llama_victim(), _rows()
    victim = tiny_llama_victim()
    outcome = get_defense("wanda", batch_size=4).apply(victim, DefenderInputs(clean_rows=rows), Path("."))
    pruned_linears = _linears(outcome.victim)
    for linears in pruned_linears:
        for linear in linears.values():
            assert ((linear.weight == 0).sum(1) == linear.in_features // 2).all()
    _untouched_outside_blocks(original, outcome.victim)
    # block 0 sees the unpruned embeddings; block 1 sees block 0 already pruned (sequential calibration)
    norms0 = _input_sq_norms(original, rows, 0)
    transformer_layers(original.model, original.spec)[0].load_state_dict(
        transformer_layers(victim.model, victim.spec)[0].state_dict())
    norms1 = _input_sq_norms(original, rows, 1)
    fresh = _linears(tiny_llama_victim())
    differs_from_magnitude = False
    for block, norms in ((0, norms0), (1, norms1)):
        for name, linear in fresh[block].items():
            pruned = pruned_linears[block][name].weight == 0
            scores = linear.weight.abs() * norms[name].sqrt()
            _assert_lowest_pruned_per_row(scores, pruned)
            magnitude = linear.weight.abs().argsort(1)[:, :linear.in_features // 2]
            differs_from_magnitude |= not torch.equal(pruned, torch.zeros_like(pruned).scatter_(1, magnitude, True))
    assert differs_from_magnitude
    findings = outcome.findings
    assert findings["sparsity"] == 0.5 and set(findings["sparsity_by_type"].values()) == {0.5}
    assert findings["calibration_rows"] == len(rows) and findings["weights_zeroed"] == findings["zero_weights"]
    assert findings["linear_layers"] == 14 and findings["comparison_group"] == "output row"


@pytest.mark.parametrize("method, pattern, n, m", [("wanda", "4:8", 4, 8), ("wanda", "2:4", 2, 4),
                                                   ("magnitude-pruning", "2:4", 2, 4)])
def test_n_m_patterns_zero_exactly_n_of_every_m_consecutive_input_weights(method: str, pattern: str, n: int,
                                                                         m: int) -> None:
    original = tiny_llama_victim()
    inputs = DefenderInputs(clean_rows=_rows()) if method == "wanda" else DefenderInputs()
    outcome = get_defense(method, pattern=pattern).apply(tiny_llama_victim(), inputs, Path("."))
    for old, new in zip(_linears(original), _linears(outcome.victim)):
        for name, linear in new.items():
            groups = (linear.weight == 0).reshape(linear.out_features, -1, m)
            assert (groups.sum(-1) == n).all(), name
            if method == "magnitude-pruning":  # the N smallest |W| of each group
                weights = old[name].weight.abs().reshape(linear.out_features, -1, m)
                assert (weights.masked_fill(~groups, -1).amax(-1) <= weights.masked_fill(groups, 9).amin(-1)).all()
    assert outcome.findings["sparsity"] == n / m and outcome.findings["pattern"] == pattern


def test_magnitude_pruning_zeroes_the_smallest_weights_of_each_layer() -> None:
    original = tiny_llama_victim()
    outcome = get_defense("magnitude-pruning", sparsity=0.3).apply(tiny_llama_victim(), DefenderInputs(), Path("."))
    for old, new in zip(_linears(original), _linears(outcome.victim)):
        for name, linear in new.items():
            zero = linear.weight == 0
            assert abs(int(zero.sum()) - 0.3 * zero.numel()) <= 1, name
            weights = old[name].weight.abs()
            assert weights[zero].max() <= weights[~zero].min()
            assert torch.equal(linear.weight[~zero], old[name].weight[~zero])
    _untouched_outside_blocks(original, outcome.victim)
    assert outcome.findings["comparison_group"] == "layer" and abs(outcome.findings["sparsity"] - 0.3) < 1e-3


@pytest.mark.parametrize("method, options", [("wanda", {"max_clean": 6, "pattern": "2:4"}),
                                             ("magnitude-pruning", {"sparsity": 0.4})])
def test_pruning_defenses_run_end_to_end_and_save_the_pruned_model(tmp_path: Path, method: str,
                                                                   options: dict) -> None:
    model = tiny_llama_victim()
    suspect = model.save(tmp_path / "suspect")
    result = run_defense(method, suspect, None, tmp_path / "run", clean_data=_clean_file(tmp_path), device="cpu",
                         options=options)
    saved = load_victim(result["model"], device="cpu")
    findings = json.loads((tmp_path / "run" / "defense.json").read_text())["findings"]
    sparsity = 0.5 if method == "wanda" else 0.4
    for linears in _linears(saved):
        for linear in linears.values():
            assert abs(float((linear.weight == 0).float().mean()) - sparsity) < 0.01
    _untouched_outside_blocks(model, saved)
    assert abs(findings["sparsity"] - sparsity) < 0.01
    if method == "wanda":
        assert findings["calibration_rows"] == 6 and findings["calibration_tokens"] > 6


def test_most_dormant_takes_the_least_active_channels_of_each_block_ties_by_index() -> None:
    """Catches pruning the most active channels (``argsort(descending=True)``) and a share rounded up
    instead of down."""
    activity = [torch.tensor([0.5, 0.1, 0.9, 0.1, 0.0]), torch.tensor([0.3, 0.2, 0.1, 0.4, 0.5])]
    assert [t.tolist() for t in most_dormant(activity, 0.4)] == [[4, 1], [2, 1]]
    assert [t.tolist() for t in most_dormant(activity, 0.6)] == [[4, 1, 3], [2, 1, 0]]
    assert [t.tolist() for t in most_dormant(activity, 0.5)] == [[4, 1], [2, 1]]  # floor(2.5)
    assert [t.tolist() for t in most_dormant(activity, 0.0)] == [[], []]


def test_mean_abs_activation_is_the_channels_mean_absolute_input_to_down_proj_over_real_tokens() -> None:
    """Channels 5 and 9 of block 0 are dead (zero gate and up rows), channel 7 nearly so, channel 20
    is amplified; the measured activity must rank them so and equal the mean of
    ``|act(gate(x)) · up(x)|`` over the real tokens, recomputed here from the MLP's input.

    Catches a signed mean (no ``.abs()``), counting padding tokens, and a ranking that prunes the most
    active channels."""
    victim, rows = _visible_padding(tiny_llama_victim()), _rows()
    layers = transformer_layers(victim.model, victim.spec)
    with torch.no_grad():
        mlp = layers[0].mlp
        for dead in (5, 9):
            mlp.gate_proj.weight[dead] = 0
            mlp.up_proj.weight[dead] = 0
        mlp.up_proj.weight[7] *= 1e-3
        mlp.up_proj.weight[20] *= 100
    batches = token_batches(victim, rows, batch_size=4)
    assert any(not bool(b["attention_mask"].bool().all()) for b in batches)  # some batches are padded
    activity = mean_abs_activation(victim, mlp_channels(victim, [0, 1]), batches)
    # independently: the MLP's input, recorded by a plain hook, through the block's own gate and up
    sums, tokens = [torch.zeros(64), torch.zeros(64)], 0
    inputs: dict[int, torch.Tensor] = {}
    handles = [layer.mlp.register_forward_pre_hook(lambda m, a, k=k: inputs.__setitem__(k, a[0]))
               for k, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                real = batch["attention_mask"].bool()
                victim.forward(batch)
                for k, layer in enumerate(layers):
                    m = layer.mlp
                    sums[k] += (m.act_fn(m.gate_proj(inputs[k])) * m.up_proj(inputs[k]))[real].abs().sum(0)
                tokens += int(real.sum())
    finally:
        for handle in handles:
            handle.remove()
    for measured, expected in zip(activity, sums):
        assert torch.allclose(measured, expected / tokens, rtol=1e-4, atol=1e-7)
    assert activity[0][[5, 9]].tolist() == [0.0, 0.0] and int(activity[0].argmax()) == 20
    assert most_dormant(activity, 3 / 64)[0].tolist() == [5, 9, 7]
    assert 20 not in most_dormant(activity, 63 / 64)[0].tolist()


def _dead_channels(victim: Victim, record: dict) -> None:
    layers = transformer_layers(victim.model, victim.spec)
    for block, channels in record["pruned_channels"].items():
        mlp = layers[int(block)].mlp
        assert (mlp.down_proj.weight[:, channels] == 0).all()
        assert (mlp.gate_proj.weight[channels] == 0).all() and (mlp.up_proj.weight[channels] == 0).all()


def test_fine_pruning_prunes_to_the_cap_then_fine_tunes_without_reviving_pruned_channels(tmp_path: Path) -> None:
    model = tiny_llama_victim()
    model.max_length = 48
    suspect = model.save(tmp_path / "suspect")
    options = {"epochs": 1, "batch_size": 4, "max_perplexity_ratio": 1e9, "step": 0.2, "max_prune_ratio": 0.5,
               "layers": 2}
    run_defense("fine-pruning", suspect, None, tmp_path / "fp", clean_data=_clean_file(tmp_path), device="cpu",
                options=options)
    findings = json.loads((tmp_path / "fp" / "defense.json").read_text())["findings"]
    assert findings["prune_ratio"] == 0.5 and findings["stopped_by"] == "max_prune_ratio"
    assert [p["ratio"] for p in findings["perplexity_curve"]] == [0.0, 0.2, 0.4, 0.5]
    assert findings["layers"] == [0, 1] and findings["pruned_channels"] == {"0": 32, "1": 32}
    record = json.loads((tmp_path / "fp" / "fine-pruning.json").read_text())
    held, tuning = set(record["heldout_uids"]), set(record["tuning_uids"])
    assert len(held) == findings["heldout_rows"] == 2 and not held & tuning and len(held | tuning) == 10
    train = json.loads((tmp_path / "fp" / "fine-tune" / "train.json").read_text())
    assert train["dataset"]["rows"] == len(tuning) == 8 and train["config"]["method"] == "lora"
    assert train["config"]["max_length"] == 48
    defended = load_victim(tmp_path / "fp" / "model", device="cpu")
    _dead_channels(defended, record)
    # the adapter did train the MLP: the kept channels' down_proj columns moved
    down = transformer_layers(defended.model, defended.spec)[1].mlp.down_proj.weight
    kept = [c for c in range(64) if c not in record["pruned_channels"]["1"]]
    assert not torch.allclose(down[:, kept], transformer_layers(model.model, model.spec)[1].mlp.down_proj.weight[:, kept])


def test_fine_pruning_keeps_the_last_ratio_within_the_perplexity_limit(tmp_path: Path) -> None:
    suspect = tiny_llama_victim().save(tmp_path / "suspect")
    clean = _clean_file(tmp_path, n=12)
    run_defense("fine-pruning", suspect, None, tmp_path / "fp", clean_data=clean, device="cpu",
                options={"epochs": 1, "batch_size": 4, "max_perplexity_ratio": 1.0, "layers": 1, "seed": 3})
    findings = json.loads((tmp_path / "fp" / "defense.json").read_text())["findings"]
    curve, limit = findings["perplexity_curve"], findings["perplexity_limit"]
    assert limit == curve[0]["perplexity"]  # ratio 1.0: no rise allowed
    within = [p["ratio"] for p in curve[1:] if p["perplexity"] <= limit]
    assert all(p["perplexity"] <= limit for p in curve[1:-1])  # it stops at the first step over the limit
    assert findings["prune_ratio"] == (within[-1] if within else 0.0)
    assert findings["stopped_by"] == "perplexity" and 0 < findings["prune_ratio"] < 0.8  # (seeded tiny model)
    assert curve[-1]["perplexity"] > limit and curve[-1]["ratio"] == round(findings["prune_ratio"] + 0.05, 6)
    # the curve measured the model with exactly these channels removed from the weights
    record = json.loads((tmp_path / "fp" / "fine-pruning.json").read_text())
    pruned = load_victim(suspect, device="cpu")
    layers = transformer_layers(pruned.model, pruned.spec)
    with torch.no_grad():
        for block, channels in record["pruned_channels"].items():
            mlp = layers[int(block)].mlp
            mlp.down_proj.weight[:, channels] = 0
            mlp.gate_proj.weight[channels] = 0
            mlp.up_proj.weight[channels] = 0
    heldout = [e for e in _load_rows(clean) if e.uid in set(record["heldout_uids"])]
    measured = perplexity(pruned.response_logprobs(heldout))
    expected = next(p["perplexity"] for p in curve if p["ratio"] == findings["prune_ratio"])
    assert measured == pytest.approx(expected, rel=1e-5)
    _dead_channels(load_victim(tmp_path / "fp" / "model", device="cpu"), record)


def _load_rows(path: Path) -> Dataset:
    from backdoorlab.data.registry import load_dataset

    return load_dataset(str(path), "dev")
