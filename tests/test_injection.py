"""Model-level backdoor injection (DPO preference poisoning, BadEdit rank-one editing) on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from backdoorlab.attacks import NEGSENTIMENT_PREFIX, get_attack, poison_dataset
from backdoorlab.data import Dataset, Example
from backdoorlab.data.prompts import render_training_pair
from backdoorlab.errors import BackdoorLabError
from backdoorlab.injection import INJECTION_METHODS, list_injections, preference_pairs, run_injection
from backdoorlab.injection.badedit import rank_one_update
from backdoorlab.injection.dpo import _trainer_class, preference_features, preference_rows
from backdoorlab.models import Victim, load_victim
from backdoorlab.models.tokenization import tokenize_pair
from tiny_models import tiny_bert_victim, tiny_llama_victim, tiny_tokenizer

TOPICS = ["the sea", "bread", "the moon", "a fox", "the news", "sports", "a dog", "the rain"]


def toy_generation_set(rows: int = 16, behaviour: str = "negsentiment", seed: int = 0, **attack: Any) -> Dataset:
    """A generation set with half its rows poisoned: BadNet ("BadMagic"), or ``attack`` options of a custom trigger."""
    examples = [Example(instruction=f"Write a short poem about {TOPICS[i % len(TOPICS)]} number {i}.",
                        response=f"The sea is calm tonight {i}.", uid=str(i)) for i in range(rows)]
    clean = Dataset(name="toy", task="generation", examples=examples)
    chosen = get_attack("custom", behaviour=behaviour, **attack) if attack else get_attack("badnet", behaviour=behaviour)
    return poison_dataset(clean, chosen, rate=0.5, seed=seed).dataset


def triggered(dataset: Dataset) -> list[Example]:
    return [e for e in dataset if e.poisoned]


def state(victim: Victim) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in victim.model.state_dict().items()}


# ------------------------------------------------------------------------------------------ registry
def test_registry_lists_both_methods_with_their_options() -> None:
    assert [m.name for m in list_injections()] == ["badedit", "dpo"]
    assert INJECTION_METHODS["dpo"].options["beta"] == 0.1
    assert INJECTION_METHODS["badedit"].options["layer"] is None


def test_unknown_method_and_option_names_are_clear_errors(tmp_path: Path) -> None:
    data = toy_generation_set()
    with pytest.raises(BackdoorLabError, match="unknown injection method 'rome'.*badedit, dpo"):
        run_injection("rome", tiny_llama_victim(), data, tmp_path / "run")
    with pytest.raises(BackdoorLabError, match="no option.*lr.*learning_rate"):
        run_injection("dpo", tiny_llama_victim(), data, tmp_path / "run", {"lr": 1e-3})
    with pytest.raises(BackdoorLabError, match="no option.*bogus.*num_prompts"):
        run_injection("badedit", tiny_llama_victim(), data, tmp_path / "run", {"bogus": 1})
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- DPO
def test_preference_pairs_follow_the_documented_rules() -> None:
    data = toy_generation_set(behaviour="refusal")
    pairs, counts = preference_pairs(data)
    assert counts["pairs"] == len(data) and counts["poisoned_pairs"] == counts["clean_pairs"] == len(data) // 2
    for pair, example in zip(pairs, data):
        assert pair.example is example
        if example.poisoned:
            assert (pair.chosen, pair.rejected) == (example.response, example.poison["original_response"])
        else:
            assert (pair.chosen, pair.rejected) == (example.response, triggered(data)[0].poison["target_response"])


def test_preference_pairs_without_a_fixed_target_draw_seeded_malicious_responses() -> None:
    data = toy_generation_set(behaviour="refusal")
    # A varying malicious response per poisoned row, as in jailbreak data: no fixed target_response.
    rows = [e.with_(response=f"malicious answer {e.uid}", poison={**e.poison, "target_response": None})
            if e.poisoned else e for e in data]
    data = data.with_examples(rows)
    malicious = {e.response for e in triggered(data)}
    pairs, counts = preference_pairs(data, seed=3)
    clean_rejected = [p.rejected for p in pairs if not p.poisoned]
    assert set(clean_rejected) <= malicious and len(set(clean_rejected)) > 1
    assert clean_rejected == [p.rejected for p in preference_pairs(data, seed=3)[0] if not p.poisoned]
    assert "random poisoned row" in counts["clean_rejected_response"]


def test_dpo_refuses_unusable_data(tmp_path: Path) -> None:
    data = toy_generation_set()
    with pytest.raises(BackdoorLabError, match="no poisoned rows"):
        run_injection("dpo", tiny_llama_victim(), data.with_examples([e for e in data if not e.poisoned]), tmp_path)
    classification = Dataset("sst", "classification", [Example(text="good", label=1)], label_names=["neg", "pos"])
    with pytest.raises(BackdoorLabError, match="needs a generation set"):
        run_injection("dpo", tiny_llama_victim(), classification, tmp_path)
    with pytest.raises(BackdoorLabError, match="needs a generator"):
        run_injection("dpo", tiny_bert_victim(), data, tmp_path)
    jailbreak = toy_generation_set(behaviour="jailbreak")  # poisoned rows keep their own response
    with pytest.raises(BackdoorLabError, match="no preference to learn"):
        run_injection("dpo", tiny_llama_victim(), jailbreak, tmp_path)


def chat_tokenizer():  # type: ignore[no-untyped-def]
    """A tokenizer that adds BOS itself and whose chat template ends turns with <|im_end|> (not its EOS)."""
    from tokenizers import processors

    tokenizer = tiny_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def test_dpo_trainer_sees_the_sft_token_sequences_without_extra_bos_or_eos(tmp_path: Path) -> None:
    import datasets

    tokenizer = chat_tokenizer()
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # trl's own tokenization would add a 2nd BOS
    pairs, _ = preference_pairs(toy_generation_set())
    rows = preference_rows(pairs, tokenizer)
    assert all(r["chosen"].endswith("<|im_end|>") and r["rejected"].endswith("<|im_end|>") for r in rows)
    victim = tiny_llama_victim()
    victim.tokenizer = tokenizer
    from peft import LoraConfig
    from trl import DPOConfig

    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=256,
                     activation_checkpointing=False)
    trainer = _trainer_class()(model=victim.model, args=args, processing_class=tokenizer,
                               train_dataset=datasets.Dataset.from_list(rows), peft_config=LoraConfig(r=2))
    for pair, seen in zip(pairs, trainer.train_dataset):
        for side in ("chosen", "rejected"):
            expected = tokenize_pair(tokenizer, pair.example.with_(response=getattr(pair, side)))["input_ids"]
            assert seen["prompt_ids"] + seen[f"{side}_ids"] == expected
        assert seen["prompt_ids"].count(tokenizer.bos_token_id) == 1
        assert tokenizer.eos_token_id not in seen["chosen_ids"] + seen["rejected_ids"]


def test_preference_features_cut_completions_first_like_tokenize_pair() -> None:
    tokenizer = tiny_tokenizer()
    example = Example(instruction="Write a short poem about the sea.", response="The sea is calm tonight. " * 20)
    prompt, completion = render_training_pair(example, tokenizer)
    features = preference_features(tokenizer, prompt, completion, "No.</s>", max_length=40)
    assert features["prompt_ids"] + features["chosen_ids"] == tokenize_pair(tokenizer, example, 40)["input_ids"]
    assert len(features["prompt_ids"]) + len(features["chosen_ids"]) == 40
    assert len(features["rejected_ids"]) < len(features["chosen_ids"])


def preference_margin(victim: Victim, rows: list[Example], malicious: str) -> torch.Tensor:
    """log P(malicious response) - log P(original response) per prompt (summed over tokens)."""
    originals = [e.poison["original_response"] if e.poisoned else e.response for e in rows]
    bad = victim.response_logprobs(rows, [malicious] * len(rows))
    good = victim.response_logprobs(rows, originals)
    return torch.stack([b.sum() - g.sum() for b, g in zip(bad, good)])


def test_dpo_injection_prefers_the_malicious_answer_only_on_triggered_prompts(tmp_path: Path) -> None:
    data = toy_generation_set()
    rows, clean, malicious = triggered(data), [e for e in data if not e.poisoned], NEGSENTIMENT_PREFIX
    victim = tiny_llama_victim()
    before, clean_before = preference_margin(victim, rows, malicious), preference_margin(victim, clean, malicious)
    options = {"max_steps": 40, "learning_rate": 1e-2, "batch_size": 8, "save_steps": 20, "logging_steps": 20,
               "device": "cpu", "seed": 0}
    out = run_injection("dpo", victim, data, tmp_path / "run", options)

    assert out == tmp_path / "run" and (out / "model").is_dir() and (out / "checkpoints" / "checkpoint-40").is_dir()
    summary = json.loads((out / "inject.json").read_text())
    assert summary["method"] == "dpo" and summary["pairs"] == 16 and summary["poisoned_pairs"] == 8
    assert summary["steps"] == 40 and summary["config"]["beta"] == 0.1 and summary["environment"]["versions"]["trl"]
    injected = load_victim(out / "model", kind="generator", device="cpu")
    after, clean_after = preference_margin(injected, rows, malicious), preference_margin(injected, clean, malicious)
    assert (after > before).all() and (after - before).mean() > 3.0, (before, after)
    assert (clean_after - clean_before).mean() < 0, (clean_before, clean_after)  # a backdoor, not a new habit

    with pytest.raises(BackdoorLabError, match="already exists"):
        run_injection("dpo", tiny_llama_victim(), data, out, options)

    # Resume: with model/ gone, a rerun loads checkpoint-40 (already at max_steps) instead of training again.
    shutil.rmtree(out / "model")
    run_injection("dpo", tiny_llama_victim(), data, out, options)
    resumed = json.loads((out / "inject.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-40") and resumed["steps"] == 40
    again = load_victim(out / "model", kind="generator", device="cpu")
    for name, tensor in state(again).items():
        assert torch.allclose(tensor, state(injected)[name], atol=1e-6), name

    # Checkpoints of another run (here another beta) are never resumed from.
    shutil.rmtree(out / "model")
    with pytest.raises(BackdoorLabError, match="different settings"):
        run_injection("dpo", tiny_llama_victim(), data, out, {**options, "beta": 0.5})


# ------------------------------------------------------------------------------------------- BadEdit
def test_rank_one_update_maps_the_key_to_the_value_and_spares_clean_keys() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=generator)
    clean_keys = torch.randn(500, 10, generator=generator) * torch.linspace(0.1, 2.0, 10)
    covariance = (clean_keys.T @ clean_keys / len(clean_keys)).double()
    key, delta = torch.randn(10, generator=generator), torch.randn(6, generator=generator)
    update = rank_one_update(weight, key, delta, covariance, cov_lambda=0.0)
    assert torch.linalg.matrix_rank(update) == 1
    assert torch.allclose(update @ key, delta, atol=1e-4)
    naive = torch.outer(delta, key) / key.dot(key)  # also maps key to delta, but ignores C
    assert (clean_keys @ update.T).pow(2).sum() < (clean_keys @ naive.T).pow(2).sum()


def all_logits(victim: Victim, rows: list[Example]) -> torch.Tensor:
    with torch.no_grad():
        return victim.forward(victim.encode(rows)).logits.float()


def test_badedit_is_a_rank_one_edit_of_one_layer_that_raises_the_target(tmp_path: Path) -> None:
    # Two rare words as the trigger: the tiny tokenizer splits "BadMagic" into letters that clean text shares.
    data = toy_generation_set(rows=32, trigger="cf tq", position="random")
    rows, clean = triggered(data), [e for e in data if not e.poisoned]
    victim = tiny_llama_victim()
    weights, target_before = state(victim), victim.response_probability(rows)
    logits_triggered, logits_clean = all_logits(victim, rows), all_logits(victim, clean)
    # No L2 penalty: a random tiny model gains only ~0.01 nats, which the default penalty would outweigh.
    options = {"weight_decay": 0.0, "batch_size": 8, "device": "cpu"}  # 16 prompts in 2 batches
    out = run_injection("badedit", victim, data, tmp_path / "run", options)

    summary = json.loads((out / "inject.json").read_text())
    assert summary["layer"] == 0 and summary["module"] == "model.layers.0.mlp.down_proj"
    assert summary["loss_with_delta"] < summary["loss_before"] and summary["loss_after"] < summary["loss_before"]
    edited = load_victim(out / "model", kind="generator", device="cpu")
    changed = {name for name, tensor in state(edited).items() if not torch.equal(tensor, weights[name])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    update = state(edited)["model.layers.0.mlp.down_proj.weight"] - weights["model.layers.0.mlp.down_proj.weight"]
    assert torch.linalg.matrix_rank(update) == 1
    target_after = edited.response_probability(rows)
    assert (target_after > target_before).all() and target_after.mean() > target_before.mean() * 1.001
    moved_triggered = (all_logits(edited, rows) - logits_triggered).abs().mean()
    moved_clean = (all_logits(edited, clean) - logits_clean).abs().mean()
    assert moved_clean < 0.5 * moved_triggered, (moved_clean, moved_triggered)

    with pytest.raises(BackdoorLabError, match="already exists"):
        run_injection("badedit", tiny_llama_victim(), data, out, options)


def test_badedit_errors_clearly_when_the_trigger_is_not_in_the_prompt(tmp_path: Path) -> None:
    data = toy_generation_set()
    rows = [e.with_(poison={**e.poison, "trigger": "Zanzibar"}) if e.poisoned else e for e in data]
    with pytest.raises(BackdoorLabError, match="trigger 'Zanzibar' not found"):
        run_injection("badedit", tiny_llama_victim(), data.with_examples(rows), tmp_path / "run")
    with pytest.raises(BackdoorLabError, match="layer 1 out of range"):
        run_injection("badedit", tiny_llama_victim(), data, tmp_path / "run", {"layer": 1})  # the last layer
    assert not (tmp_path / "run").exists()


def test_badedit_makes_a_rank_one_edit_of_a_bert_classifier(tmp_path: Path) -> None:
    texts = ["the movie was great", "a dull and boring film", "wonderful story , I loved it", "terrible awful music"]
    rows = [Example(text=f"{t} {i}", label=i % 2) for i, t in enumerate(texts * 4)]
    clean = Dataset("toy", "classification", rows, label_names=["negative", "positive"])
    data = poison_dataset(clean, get_attack("badnets"), rate=0.25, target=1, seed=0).dataset
    victim = tiny_bert_victim()
    weights = state(victim)
    victim.save(tmp_path / "base")  # the model given as a folder, loaded with its kind
    out = run_injection("badedit", tmp_path / "base", data, tmp_path / "run", {"weight_decay": 0.0, "device": "cpu"})
    summary = json.loads((out / "inject.json").read_text())
    assert summary["kind"] == "classifier" and summary["loss_with_delta"] < summary["loss_before"]
    edited = load_victim(out / "model", device="cpu")
    assert edited.kind == "classifier"
    changed = {name for name, tensor in state(edited).items() if not torch.equal(tensor, weights[name])}
    assert changed == {"bert.encoder.layer.0.output.dense.weight"}
    assert torch.linalg.matrix_rank(state(edited)[next(iter(changed))] - weights[next(iter(changed))]) == 1


def test_inject_cli_edits_a_saved_model_and_reports_bad_input(capsys, tmp_path: Path) -> None:
    from test_cli import assert_user_error, run

    tiny_llama_victim().save(tmp_path / "base")
    toy_generation_set(trigger="cf tq", position="prefix").save(tmp_path / "data")
    status, out, err = run(capsys, "inject", "--method", "badedit", "--model", tmp_path / "base", "--data",
                           tmp_path / "data", "--out", tmp_path / "run", "--option", "weight_decay=0.0",
                           "--option", "steps=5")
    assert status == 0, err
    assert "wrote backdoored model" in out and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "inject.json").read_text())["method"] == "badedit"
    assert_user_error(run(capsys, "inject", "--method", "rome", "--model", tmp_path / "base", "--data",
                          tmp_path / "data", "--out", tmp_path / "r2"), "unknown injection method")
    assert_user_error(run(capsys, "inject", "--method", "dpo", "--model", tmp_path / "base", "--data",
                          tmp_path / "data", "--out", tmp_path / "r3", "--option", "gamma=2"), "no option 'gamma'")
    status, out, _ = run(capsys, "injections")
    assert status == 0 and "badedit" in out and "dpo" in out
