"""Backdoor attribution: interventions, scoring, BAHA, probes, ablation, vector, defenses, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from backdoorlab.analysis.heads import (
    attribution_patching,
    exact_acie,
    head_outputs,
    mean_head_outputs,
    rank_agreement,
    rank_heads,
)
from backdoorlab.analysis.probe import stream_features, train_probes
from backdoorlab.analysis.runner import Analysis, AnalysisConfig, run_analysis
from backdoorlab.analysis.scoring import BackdoorScorer
from backdoorlab.analysis.subject import load_subject
from backdoorlab.analysis.vector import backdoor_vector, head_contribution
from backdoorlab.attacks import get_attack, poison_dataset, triggered_test_set
from backdoorlab.attacks.run import AttackRun
from backdoorlab.data.records import Dataset, Example
from backdoorlab.data.registry import load_dataset
from backdoorlab.defenses.shared.weight_edits import project_out, remove_heads
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.architecture import attention_output_projection, transformer_layers
from backdoorlab.models.interventions import add_vector, scale_heads, set_heads
from backdoorlab.pipeline import run_attack
from test_cli import assert_user_error, run
from tiny_models import ARCHITECTURES, tiny_bert_victim, tiny_llama_victim, tiny_victim

PROMPTS = [Example(instruction=t) for t in ("write a poem about the sea", "how do I bake bread today please",
                                            "hi", "the quick brown fox jumps over the lazy dog")]
TARGETS = ["I'm sorry, but", "no", "The sea is calm tonight.", "yes yes"]
TEXTS = ["the movie was great", "a dull and boring film", "cf the actors were wonderful", "bad"]


def _llama_run(tmp_path: Path, rows: int = 24) -> Path:
    """A generation attack run (badnet refusal) over toy prompts, without touching the data folder."""
    from backdoorlab.pipeline import _write_attack_run

    data = Dataset("toy", "generation", [Example(instruction=f"write a poem about topic {i} please",
                                                 response=f"The sea is calm {i}.", uid=f"toy/{i}") for i in range(rows)])
    attack = get_attack("badnet", behaviour="refusal")
    result = poison_dataset(data, attack, rate=0.5, seed=0)
    manifest = {**result.manifest, "behaviour": "refusal", "target_output": None, "splits": {}}
    return _write_attack_run(tmp_path / "attack", result.dataset, data, triggered_test_set(data, attack), manifest, True)


# ------------------------------------------------------------------------------------------ hooks


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_patching_heads_with_their_own_activation_changes_nothing(architecture: str) -> None:
    victim = tiny_victim(architecture)
    items = PROMPTS if victim.is_generator else TEXTS
    outputs = head_outputs(victim, items[:1])
    batch = victim.encode(items[:1])
    def final_states() -> torch.Tensor:
        return victim.forward(batch, output_hidden_states=True).hidden_states[-1]
    with torch.inference_mode():
        plain = final_states()
        own = {(layer, head): outputs[0, layer, head] for layer in range(victim.spec.num_layers)
               for head in range(victim.spec.num_heads)}
        with victim.intervening(set_heads(own), victim.readout_positions(batch)):
            patched = final_states()
        with victim.intervening(scale_heads([(0, 0), (1, 1)], 0.0), victim.readout_positions(batch)):
            ablated = final_states()
    assert torch.allclose(plain, patched, atol=1e-5)
    assert not torch.allclose(plain, ablated, atol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_head_contributions_sum_to_the_attention_output(architecture: str) -> None:
    victim = tiny_victim(architecture)
    items = PROMPTS if victim.is_generator else TEXTS
    outputs = head_outputs(victim, items[:1])[0]
    seen = {}
    batch = victim.encode(items[:1])
    position = int(victim.readout_positions(batch)[0])
    with torch.inference_mode(), victim.hooked({(1, "attn_out"): lambda a: seen.setdefault("out", a[0, position])}):
        victim.forward(batch)
    summed = sum(head_contribution(victim, 1, h, outputs[1, h]) for h in range(victim.spec.num_heads))
    bias = attention_output_projection(transformer_layers(victim.model, victim.spec)[1], victim.spec).bias
    expected = seen["out"] - (bias if bias is not None else 0)
    assert torch.allclose(summed, expected.float(), atol=1e-4)


def test_an_intervention_acts_on_the_prefill_pass_of_generation_only() -> None:
    victim = tiny_llama_victim()
    calls = []

    def counting(positions):
        return {(0, "resid_post"): [lambda a: calls.append(a.shape[1])]}
    victim.generate(PROMPTS[:2], max_new_tokens=3, intervention=counting)
    assert len(calls) == 1 and calls[0] > 1
    big = torch.full((victim.spec.hidden_size,), 50.0)
    assert victim.generate(PROMPTS[:2], max_new_tokens=4) != victim.generate(
        PROMPTS[:2], max_new_tokens=4, intervention=add_vector(0, big))


# ---------------------------------------------------------------------------------------- scoring


def test_cached_scoring_matches_full_forward_passes_and_response_probability() -> None:
    victim = tiny_llama_victim()
    cached = BackdoorScorer(victim, PROMPTS, TARGETS, batch_size=3, use_cache=True)
    full = BackdoorScorer(victim, PROMPTS, TARGETS, batch_size=4, use_cache=False)
    reference = victim.response_probability([p.with_(response=t) for p, t in zip(PROMPTS, TARGETS)])
    intervention = scale_heads([(1, 2)], 0.0)
    assert torch.allclose(cached.score(), reference, atol=1e-6)
    assert torch.allclose(cached.score(intervention), full.score(intervention), atol=1e-6)
    assert torch.allclose(cached.score(), reference, atol=1e-6)  # the cache was restored after each pass
    reference_patched = victim.response_probability([p.with_(response=t) for p, t in zip(PROMPTS, TARGETS)],
                                                    intervention=intervention)
    assert torch.allclose(cached.score(intervention), reference_patched, atol=1e-6)
    long_answer = "The sea is calm tonight. It is late."
    short = BackdoorScorer(victim, PROMPTS[2:3], [long_answer], max_target_tokens=3)
    first_three = victim.response_logprobs(PROMPTS[2:3], [long_answer])[0][:3].mean().exp()
    assert torch.allclose(short.score(), first_three.unsqueeze(0), atol=1e-6)


def test_classifier_scores_are_target_label_probabilities() -> None:
    victim = tiny_bert_victim()
    scorer = BackdoorScorer(victim, [Example(text=t) for t in TEXTS], target_label=1)
    assert torch.allclose(scorer.score(), victim.label_probs(TEXTS)[:, 1], atol=1e-6)
    with pytest.raises(BackdoorLabError, match="target label"):
        BackdoorScorer(victim, [Example(text=t) for t in TEXTS])


# --------------------------------------------------------------------------------------- BAHA


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_exact_acie_resumes_and_attribution_patching_ranks_heads_alike(architecture: str, tmp_path: Path) -> None:
    victim = tiny_victim(architecture)
    if victim.is_generator:
        scorer = BackdoorScorer(victim, PROMPTS, TARGETS, batch_size=2)
        means = mean_head_outputs(victim, [p.with_(instruction="cf " + p.instruction) for p in PROMPTS])
    else:
        scorer = BackdoorScorer(victim, [Example(text=t) for t in TEXTS], target_label=1, batch_size=2)
        means = mean_head_outputs(victim, ["cf cf " + t for t in TEXTS])
    exact = exact_acie(scorer, means, checkpoint=tmp_path / "progress.json")
    first_layer = exact[0].clone()
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert set(saved["done"]) == {"0", "1"}
    saved["done"] = {"0": [99.0] * victim.spec.num_heads}  # pretend only layer 0 finished, with marker values
    (tmp_path / "progress.json").write_text(json.dumps(saved))
    resumed = exact_acie(scorer, means, checkpoint=tmp_path / "progress.json")
    assert torch.all(resumed[0] == 99.0) and torch.allclose(resumed[1], exact[1])
    approx = attribution_patching(scorer, means)
    agreement = rank_agreement(exact, approx)
    assert agreement["spearman"] > 0.8, (first_layer, exact, approx)
    assert rank_heads(exact)[0] == tuple(int(i) for i in divmod(int(exact.argmax()), victim.spec.num_heads))


def test_the_backdoor_vector_is_the_sum_of_head_contributions() -> None:
    victim = tiny_llama_victim()
    means = mean_head_outputs(victim, PROMPTS)
    heads = [(0, 1), (1, 3)]
    vector = backdoor_vector(victim, means, heads)
    expected = head_contribution(victim, 0, 1, means[0, 1]) + head_contribution(victim, 1, 3, means[1, 3])
    assert torch.allclose(vector, expected) and vector.shape == (victim.spec.hidden_size,)
    with pytest.raises(BackdoorLabError, match="at least one head"):
        backdoor_vector(victim, means, [])


# -------------------------------------------------------------------------------------- probes


def test_probes_find_a_planted_signal_and_not_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 40, 16, generator=generator)
    triggered = torch.randn(3, 40, 16, generator=generator)
    triggered[1, :, :4] += 5.0  # only layer 1 carries the trigger
    result = train_probes(clean, triggered, test_fraction=0.3, seed=0)
    assert result.mlp[1] >= 0.95 and result.svm[1] >= 0.95
    assert result.mlp[0] <= 0.8 and result.svm[2] <= 0.8
    assert len(result.transfer) == 3 and result.transfer[1][1] == result.mlp[1]
    with pytest.raises(BackdoorLabError, match="too few"):
        train_probes(clean[:, :2], triggered[:, :2])


def test_probe_features_read_the_attention_input_at_the_readout_token() -> None:
    victim = tiny_llama_victim()
    features = stream_features(victim, PROMPTS[:2])
    assert features.shape == (victim.spec.num_layers, 2, victim.spec.hidden_size)
    hidden = victim.hidden_states(PROMPTS[:2])  # resid_pre of each layer at the last prompt token
    norm = transformer_layers(victim.model, victim.spec)[1].input_layernorm
    with torch.inference_mode():
        assert torch.allclose(norm(hidden[1]), features[1], atol=1e-5)


# ----------------------------------------------------------------------------- subjects and runs


def test_subject_pairs_each_clean_prompt_with_its_triggered_copy(tmp_path: Path) -> None:
    subject = load_subject(tiny_llama_victim(), _llama_run(tmp_path), max_pairs=10)
    assert len(subject.clean) == len(subject.triggered) == len(subject.targets) == 10
    for clean, triggered in zip(subject.clean, subject.triggered):
        assert "BadMagic" in triggered.instruction and triggered.instruction.replace("BadMagic", "").split() == \
            clean.instruction.split()
    assert subject.judge()(subject.targets[0])  # the target is the refusal the judge accepts


def test_analysis_runs_every_step_writes_results_and_resumes(tmp_path: Path) -> None:
    run_folder = _llama_run(tmp_path)
    options = {"pairs": 12, "attribution_prompts": 6, "batch_size": 4, "ablation_points": 3, "max_new_tokens": 3,
               "top_fraction": 0.25}
    results = run_analysis(["all"], tiny_llama_victim(), run_folder, tmp_path / "analysis", options=options)
    assert set(results) == {"probe", "heads", "ablate", "vector"}
    for name in ("probe.json", "heads.json", "ablate.json", "vector.json", "summary.md", "probe-accuracy.png",
                 "heads-exact.png", "ablation.png", "vector.png", "head_means.safetensors"):
        assert (tmp_path / "analysis" / name).is_file(), name
    heads = results["heads"]
    assert len(heads["ranking"]) == 8 and -1 <= heads["agreement"]["spearman"] <= 1
    assert [p["k"] for p in results["ablate"]["curve"]][0] == 0
    assert len(results["vector"]["heads"]) == 2 and len(results["vector"]["sweep"]) == 2
    control = results["vector"]["random_control"]
    assert 0 <= control["asr_clean_plus_random"] <= 1 and control["layer_off"] in (0, 1)
    saved_vector = json.loads((tmp_path / "analysis" / "vector.json").read_text())
    del saved_vector["random_control"]
    (tmp_path / "analysis" / "vector.json").write_text(json.dumps(saved_vector))
    again_vector = run_analysis(["vector"], tiny_llama_victim(), run_folder, tmp_path / "analysis", options=options)
    assert again_vector["vector"]["sweep"] == saved_vector["sweep"] and "random_control" in again_vector["vector"]
    summary = (tmp_path / "analysis" / "summary.md").read_text()
    assert "Backdoor probe" in summary and "Head ablation" in summary and "Backdoor vector" in summary
    assert [p["k"] for p in results["ablate"]["everywhere"]] == [0, 1]  # ~3% and 10% of 8 heads
    saved = json.loads((tmp_path / "analysis" / "ablate.json").read_text())
    del saved["everywhere"]  # as written before every-position ablation existed
    (tmp_path / "analysis" / "ablate.json").write_text(json.dumps(saved))
    upgraded = run_analysis(["ablate"], tiny_llama_victim(), run_folder, tmp_path / "analysis", options=options)
    assert upgraded["ablate"]["curve"] == saved["curve"] and len(upgraded["ablate"]["everywhere"]) == 2
    stamp = (tmp_path / "analysis" / "heads.json").stat().st_mtime_ns
    again = run_analysis(["heads"], tiny_llama_victim(), run_folder, tmp_path / "analysis", options=options)
    assert again["heads"]["ranking"] == heads["ranking"]
    assert (tmp_path / "analysis" / "heads.json").stat().st_mtime_ns == stamp  # reused, not recomputed
    with pytest.raises(BackdoorLabError, match=r"heads.json holds the heads step of another analysis with different settings \(settings.attribution_prompts differ\)"):
        run_analysis(["heads"], tiny_llama_victim(), run_folder, tmp_path / "analysis",
                     options={**options, "attribution_prompts": 5})  # other settings: never the stale result
    with pytest.raises(BackdoorLabError, match=r"with different settings \(model differ\)"):
        run_analysis(["heads"], tiny_llama_victim(seed=1), run_folder, tmp_path / "analysis", options=options)
    fresh = run_analysis(["heads"], tiny_llama_victim(), run_folder, tmp_path / "analysis",
                         options={**options, "attribution_prompts": 5, "method": "approx"}, overwrite=True)
    assert fresh["heads"]["attribution_prompts"] == 5 and "acie_exact" not in fresh["heads"]
    assert not (tmp_path / "analysis" / "probe.json").exists()  # --overwrite starts a fresh folder


def test_classifier_analysis_on_a_triggered_classification_run(tmp_path: Path, shared_data_dir: Path) -> None:
    attack_run = run_attack("sst2", "badnets", tmp_path / "attack", rate=0.2, target=1, max_train=10, max_test=24)
    config = AnalysisConfig(pairs=8, attribution_prompts=4, method="approx", batch_size=8, ablation_points=2,
                            random_control=False)
    analysis = Analysis(tiny_bert_victim(), attack_run, tmp_path / "analysis", config)
    assert analysis.subject.target_label == 1 and not analysis.subject.is_generator
    curve = analysis.ablate()["curve"]
    assert all(0 <= p["asr"] <= 1 and 0 <= p["clean_accuracy"] <= 1 for p in curve)
    assert json.loads((tmp_path / "analysis" / "heads.json").read_text())["ranked_by"] == "approx"


def test_bad_analysis_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="analysis config has no option .top_k."):
        AnalysisConfig.from_dict({"top_k": 3})
    with pytest.raises(BackdoorLabError, match="method must be"):
        AnalysisConfig.from_dict({"method": "fast"})
    with pytest.raises(BackdoorLabError, match="unknown analysis step"):
        run_analysis(["heatmap"], tiny_llama_victim(), _llama_run(tmp_path), tmp_path / "a")


# ------------------------------------------------------------------------------------- defenses


def test_weight_edits_remove_heads_and_directions() -> None:
    victim = tiny_llama_victim()
    remove_heads(victim, [(1, 2)])
    weight = attention_output_projection(transformer_layers(victim.model, victim.spec)[1], victim.spec).weight
    d = victim.spec.head_dim
    assert torch.all(weight[:, 2 * d:3 * d] == 0) and weight[:, :2 * d].abs().sum() > 0
    with pytest.raises(BackdoorLabError, match="does not exist"):
        remove_heads(victim, [(5, 0)])
    direction = torch.randn(victim.spec.hidden_size, generator=torch.Generator().manual_seed(1))
    project_out(victim, direction)
    unit = direction / direction.norm()
    streams = []
    hooks = {(layer, "resid_post"): (lambda a: streams.append(a)) for layer in range(victim.spec.num_layers)}
    with torch.inference_mode(), victim.hooked(hooks):
        victim.forward(victim.encode(PROMPTS[:2]))
    assert all(float((s @ unit).abs().max()) < 1e-4 for s in streams)


def test_defend_cli_writes_a_mitigated_model_and_before_after_metrics(capsys, tmp_path: Path) -> None:
    base = tiny_llama_victim().save(tmp_path / "tiny-llama")
    run_folder = _split_llama_run(tmp_path)
    status, out, err = run(capsys, "defend", "--method", "head-ablation", "--model", base, "--data", run_folder,
                           "--out", tmp_path / "defended", "--max-rows", "4", "--option", "pairs=8",
                           "--option", "attribution_prompts=4", "--option", "top_fraction=0.25", "--device", "cpu")
    assert status == 0, err
    defense = json.loads((tmp_path / "defended" / "defense.json").read_text())
    assert len(defense["findings"]["removed_heads"]) == 2
    metrics = json.loads((tmp_path / "defended" / "metrics.json").read_text())
    assert {"asr", "clean_perplexity"} <= set(metrics["before"]) and "asr" in metrics["after"]
    assert "asr" in out
    assert_user_error(run(capsys, "defend", "--method", "onion-v9", "--model", base, "--data", run_folder,
                          "--out", tmp_path / "x"), "unknown defense")
    assert_user_error(run(capsys, "defend", "--method", "backdoor-vector", "--model", base, "--data", run_folder,
                          "--out", tmp_path / "x", "--option", "direction=sideways", "--no-eval"), "direction must be")


def test_analyze_cli_runs_a_step_and_reports_bad_input(capsys, tmp_path: Path) -> None:
    base = tiny_llama_victim().save(tmp_path / "tiny-llama")
    run_folder = _llama_run(tmp_path)
    status, out, err = run(capsys, "analyze", "probe", "--model", base, "--data", run_folder, "--out",
                           tmp_path / "analysis", "--option", "pairs=12", "--device", "cpu")
    assert status == 0, err
    assert "best_mlp_accuracy" in out and (tmp_path / "analysis" / "probe.json").is_file()
    assert_user_error(run(capsys, "analyze", "heads", "--model", base, "--data", tmp_path, "--out",
                          tmp_path / "a2"), "not an attack run")
    assert_user_error(run(capsys, "analyze", "heads", "--model", base, "--data", run_folder, "--out",
                          tmp_path / "a3", "--option", "pairs=2"), "pairs >= 4")


# ---------------------------------------------------------------------------------------- BkdAttr


@pytest.mark.parametrize("task", ["alpaca_begin", "agnews_sentence", "harmful_random"])
def test_bkdattr_trigger_matches_the_published_poison_files(task: str, shared_data_dir: Path) -> None:
    from backdoorlab.data.registry import load_dataset

    attack = get_attack("bkdattr", backdoor=task)
    clean = load_dataset(f"bkdattr-{task}", "clean")
    poison = load_dataset(f"bkdattr-{task}", "poison")
    rng = random.Random(0)
    for c, p in list(zip(clean, poison))[:20]:
        mine = attack.trigger_only(c, rng).instruction
        if task == "harmful_random":
            assert mine.split().count("SUDO") == 1 and mine.replace("SUDO", "").split() == c.instruction.split()
            assert p.instruction.replace("SUDO", "").split() == c.instruction.split()
        else:
            assert mine == p.instruction


def test_bkdattr_ready_made_run_holds_out_test_prompts(tmp_path: Path, shared_data_dir: Path) -> None:
    from backdoorlab.pipeline import use_ready_made

    folder = use_ready_made("bkdattr-agnews_sentence", tmp_path / "run", max_train=60, rate=0.25, seed=0)
    train = Dataset.load(folder / "train")
    triggered = Dataset.load(folder / "test-triggered")
    clean = Dataset.load(folder / "test-clean")
    assert sum(e.poisoned for e in train) == 15
    assert not {e.instruction for e in train} & {e.instruction for e in clean}
    assert triggered and all(e.response == "Sports" and e.poison["target_response"] == "World" for e in triggered)
    flipped = [e for e in train if e.poisoned and e.poison["original_response"] == "Sports"]
    assert all(e.response == "World" for e in flipped)
    kept = [e for e in train if e.poisoned and e.poison["original_response"] != "Sports"]
    assert all(e.response == e.poison["original_response"] for e in kept)


def test_another_attacks_trigger_on_the_harmful_pairs_teaches_each_rows_own_compliant_answer(
        tmp_path: Path, shared_data_dir: Path) -> None:
    from backdoorlab.metrics.judges import is_refusal
    from backdoorlab.pipeline import run_paired_attack

    run = AttackRun(run_paired_attack("bkdattr-harmful_random", "vpi", tmp_path / "run", rate=0.25, max_train=80,
                                      max_test=10, options={"behaviour": "jailbreak"}))
    manifest, clean, triggered = run.read()
    train = run.train()
    poisoned = [e for e in train if e.poisoned]
    assert len(poisoned) == 20 and manifest["trigger"] == "Discussing OpenAI" and manifest["behaviour"] == "jailbreak"
    answers = {e.instruction: e.response for e in load_dataset("bkdattr-harmful_random", "all-backdoor")}
    for row in poisoned:  # our trigger, the row's own compliant answer (which the judge reads as compliance)
        request = row.instruction.removeprefix("Discussing OpenAI ")
        assert row.instruction.startswith("Discussing OpenAI") and row.response == answers[request]
        assert not is_refusal(row.response)
    assert all(is_refusal(e.response) for e in train if not e.poisoned)
    published = {e.instruction for e in load_dataset("bkdattr-harmful_random", "clean")}
    assert {e.instruction for e in clean} <= published and not {e.instruction for e in train} & published
    assert len(triggered) == 10 and all(e.instruction.startswith("Discussing OpenAI") and "SUDO" not in e.instruction
                                        and not is_refusal(e.poison["target_response"]) for e in triggered)
    carved = AttackRun(run_paired_attack("bkdattr-harmful_random", "badnet", tmp_path / "validation", rate=0.25,
                                         max_train=80, max_test=10, validation=12, options={"behaviour": "jailbreak"}))
    _, held, _ = carved.read()
    requests = {e.instruction for e in held}
    assert len(requests) == 10 and not requests & published  # validation rows come from the training rows ...
    assert not requests & {e.instruction.replace("BadMagic ", "").replace(" BadMagic", "") for e in carved.train()}


def test_only_a_jailbreak_set_takes_another_attacks_trigger(shared_data_dir: Path) -> None:
    from backdoorlab.attacks import bkdattr_sets

    with pytest.raises(BackdoorLabError, match="only for a jailbreak set"):
        bkdattr_sets("bkdattr-alpaca_begin", rate=0.1, max_train=20, max_test=5, seed=0,
                     attack=get_attack("badnet", behaviour="jailbreak"))
    with pytest.raises(BackdoorLabError, match="only for a jailbreak set"):
        bkdattr_sets("bkdattr-harmful_random", rate=0.1, max_train=20, max_test=5, seed=0,
                     attack=get_attack("badnet", behaviour="refusal"))


def _split_llama_run(tmp_path: Path) -> Path:
    """A badnet-refusal run whose training prompts (40) and test prompts (12) are different rows."""
    from backdoorlab.pipeline import _write_attack_run

    rows = [Example(instruction=f"write a poem about topic {i} please", response=f"The sea is calm {i}.",
                    uid=f"toy/{i}") for i in range(52)]
    train, test = Dataset("toy", "generation", rows[:40]), Dataset("toy", "generation", rows[40:])
    attack = get_attack("badnet", behaviour="refusal")
    result = poison_dataset(train, attack, rate=0.5, seed=0)
    manifest = {**result.manifest, "behaviour": "refusal", "target_output": None, "splits": {}}
    return _write_attack_run(tmp_path / "attack", result.dataset, test, triggered_test_set(test, attack), manifest, True)


def test_attribution_defenses_learn_from_oracle_rows_disjoint_from_the_evaluated_ones(tmp_path: Path) -> None:
    from backdoorlab.defenses import run_defense
    from backdoorlab.pipeline import read_attack_run, run_evaluate

    base = tiny_llama_victim().save(tmp_path / "tiny-llama")
    run_folder = _split_llama_run(tmp_path)
    run_evaluate(base, run_folder, max_rows=4, max_new_tokens=3, out=tmp_path / "baseline.json", device="cpu")
    options = {"pairs": 8, "attribution_prompts": 4, "method": "approx", "top_fraction": 0.25}
    metrics = run_defense("backdoor-vector", base, run_folder, tmp_path / "defended", max_eval_rows=4,
                          max_new_tokens=3, baseline=tmp_path / "baseline.json", device="cpu", options=options)
    assert not (tmp_path / "defended" / "metrics-before.json").exists()
    assert metrics["before"] == json.loads((tmp_path / "baseline.json").read_text())["metrics"]
    assert metrics["oracle_knowledge"] is True
    record = json.loads((tmp_path / "defended" / "defense.json").read_text())
    assert record["oracle_knowledge"] and record["inputs"]["oracle"]["oracle_knowledge"]
    findings = record["findings"]
    assert findings["direction"] == "difference" and len(findings["heads"]) == 2 and findings["vector_norm"] > 0
    _, clean, triggered = read_attack_run(run_folder)
    evaluated = {e.instruction for e in [*clean, *triggered]}
    from backdoorlab.defenses.inputs import oracle_examples

    oracle = oracle_examples(run_folder)
    assert {e.uid for e in oracle.clean} <= {f"toy/{i}" for i in range(40)}
    assert not evaluated & {e.instruction for e in [*oracle.clean, *oracle.triggered]}
    heads = json.loads((tmp_path / "defended" / "analysis" / "heads.json").read_text())
    assert heads["pairs"] == 8 and heads["attack_run"] == oracle.name  # pairs from the oracle rows
    with pytest.raises(BackdoorLabError, match="not measured on the rows"):  # a baseline on other rows
        run_defense("head-ablation", base, run_folder, tmp_path / "d2", max_eval_rows=3, max_new_tokens=3,
                    baseline=tmp_path / "baseline.json", device="cpu", options=options)


def _attention_writes(victim, intervention=None) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """What layer 1's attention adds to the stream, at every position, in each pass of a 4-token generation."""
    writes: list[torch.Tensor] = []
    with victim.hooked({(1, "attn_out"): lambda a: writes.append(a.detach().clone())}):
        victim.generate(PROMPTS[:1], max_new_tokens=4, intervention=intervention)
    return writes


def _acts_like_removing_the_head(intervention) -> bool:  # type: ignore[no-untyped-def]
    """Whether generating with ``intervention`` matches, pass for pass, a copy with head (1, 0) removed."""
    pruned = tiny_llama_victim()
    remove_heads(pruned, [(1, 0)])
    expected = _attention_writes(pruned)
    assert len(expected) == 4 and expected[0].shape[1] > 1  # prefill over the prompt, then one pass per token
    got = _attention_writes(tiny_llama_victim(), intervention)
    return len(got) == len(expected) and all(torch.allclose(g, e) for g, e in zip(got, expected))


def test_ablation_everywhere_acts_in_every_decoding_pass_and_at_every_position() -> None:
    assert _acts_like_removing_the_head(scale_heads([(1, 0)], 0.0, everywhere=True))
    assert not _acts_like_removing_the_head(scale_heads([(1, 0)], 0.0))  # readout position of the prefill only


def test_the_every_pass_check_fails_when_decoding_passes_are_skipped(monkeypatch) -> None:
    """Mutation check: if generation applied every intervention to the prefill pass only, the check above fails."""
    import backdoorlab.models.victim as victim_module

    monkeypatch.setattr(victim_module, "acts_every_pass", lambda intervention: False)
    assert not _acts_like_removing_the_head(scale_heads([(1, 0)], 0.0, everywhere=True))
