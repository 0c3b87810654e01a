"""Clean-utility multiple-choice scoring: harness definitions, partial scoring, batching, sampling, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoorlab.data import utility_sets
from backdoorlab.data.utility_sets import UTILITY_TASKS, Question, load_utility_task, subsample, to_question
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import utility
from backdoorlab.metrics.utility import choice_accuracy, choice_loglikelihoods, encode_pair, evaluate_utility
from backdoorlab.settings import settings
from tiny_models import tiny_bert_victim, tiny_llama_victim

ROWS = {
    "arc_easy": [
        {"query": "Question: Which is a liquid?", "choices": ["rock", "water", "sand", "glass"], "gold": 1},
        {"query": "Question: What do plants need?", "choices": ["light", "plastic", "noise", "metal"], "gold": 0},
        {"query": "Question: Which is hot?", "choices": ["ice", "snow", "fire", "frost"], "gold": 2},
    ],
    "boolq": [
        {"query": "Passage: The sea is calm tonight.\nQuestion: is the sea calm?", "choices": ["no", "yes"], "gold": 1},
        {"query": "Passage: Bread needs yeast.\nQuestion: does bread need salt water?", "choices": ["no", "yes"], "gold": 0},
    ],
    "winogrande": [
        {"context_options": ["The fox jumped over the dog because the fox", "The fox jumped over the dog because the dog"],
         "continuation": "was quick.", "gold": 0},
    ],
}


def write_tasks(folder: Path, rows: dict[str, list[dict]] = ROWS) -> Path:
    """A data folder holding ``utility/<task>.jsonl`` for each task in ``rows``."""
    (folder / "utility").mkdir(parents=True, exist_ok=True)
    for name, items in rows.items():
        (folder / "utility" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


def plain_loglikelihood(victim, context: str, continuation: str) -> float:  # type: ignore[no-untyped-def]
    """Reference: one unpadded forward pass over context + continuation, continuation tokens summed."""
    context_ids, continuation_ids = encode_pair(victim.tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(victim.model(input_ids=ids).logits[0, :-1].float(), -1)
    picked = logprobs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    return float(picked[len(context_ids) - 1:].sum())


def mixed_questions() -> list[Question]:
    """Questions of every layout and of different lengths (so batches need padding)."""
    return [to_question(name, row, "test") for name, rows in ROWS.items() for row in rows] + [
        Question(("A much longer context about bread, flour, water and salt:",) * 3,
                 (" mix", " bake it slowly for an hour", " x"), 1, (3, 25, 1)),
    ]


# ------------------------------------------------------------------ definitions
def test_acc_is_argmax_of_summed_loglikelihood_and_acc_norm_divides_by_choice_characters() -> None:
    short_vs_long = Question(("q", "q"), (" a", " abcdefghij"), gold=1, lengths=(1, 10))
    # acc: -2 > -5 picks choice 0 (wrong); acc_norm: -2/1 = -2 < -5/10 = -0.5 picks choice 1 (right).
    assert choice_accuracy([short_vs_long], [[-2.0, -5.0]])["acc"] == 0.0
    assert choice_accuracy([short_vs_long], [[-2.0, -5.0]])["acc_norm"] == 1.0
    # -1/1 = -1 < -5/10 still prefers the long choice; -0.1/1 > -0.5 prefers the short one.
    result = choice_accuracy([short_vs_long] * 2, [[-1.0, -5.0], [-0.1, -5.0]])
    assert (result["acc"], result["acc_norm"], result["n"], result["chance"]) == (0.0, 0.5, 2, 0.5)
    tie = Question(("q",) * 3, (" b", " b", " b"), gold=0, lengths=(1, 1, 1))
    assert choice_accuracy([tie], [[-1.0, -1.0, -1.0]])["acc"] == 1.0  # ties go to the first choice


def test_file_rows_become_harness_prompts_and_lengths_exclude_the_delimiter(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    arc = to_question("arc_easy", ROWS["arc_easy"][0], "test")
    assert arc.contexts == ("Question: Which is a liquid?\nAnswer:",) * 4
    assert arc.continuations == (" rock", " water", " sand", " glass") and arc.lengths == (4, 5, 4, 5)
    boolq = to_question("boolq", ROWS["boolq"][0], "test")
    assert boolq.contexts[0] == "The sea is calm tonight.\nQuestion: is the sea calm?\nAnswer:"
    piqa = to_question("piqa", {"query": "Question: open a jar\n", "choices": ["twist", "drop"], "gold": 0}, "t")
    assert piqa.contexts[0] == "Question: open a jar\nAnswer:" and piqa.continuations == (" twist", " drop")
    swag = to_question("hellaswag", {"query": "A man sits. he", "choices": [" eats.", " runs off."], "gold": 1}, "t")
    assert swag.continuations == (" eats.", " runs off.") and swag.lengths == (5, 9)

    # Through evaluate_utility: BoolQ "no" (2 characters) vs "yes" (3): scores -3 vs -4 give
    # acc -> "no" (wrong for gold 1) and acc_norm -> -1.5 < -1.33 -> "yes" (right).
    write_tasks(tmp_path, {"boolq": [ROWS["boolq"][0]]})
    monkeypatch.setattr(utility, "choice_loglikelihoods", lambda victim, questions, batch_size, bar: [[-3.0, -4.0]])
    result = evaluate_utility(object(), tasks=["boolq"], data_dir=tmp_path)  # type: ignore[arg-type]
    assert (result["tasks"]["boolq"]["acc"], result["tasks"]["boolq"]["acc_norm"]) == (0.0, 1.0)


def test_encode_pair_moves_trailing_context_spaces_into_the_continuation() -> None:
    tokenizer = tiny_llama_victim().tokenizer
    assert encode_pair(tokenizer, "The sea is ", "calm") == encode_pair(tokenizer, "The sea is", " calm")
    context, continuation = encode_pair(tokenizer, "The sea is", " calm")
    assert context == tokenizer("The sea is")["input_ids"]
    assert context + continuation == tokenizer("The sea is calm")["input_ids"]


# ------------------------------------------------------------------ scoring
def test_winogrande_partial_scoring_scores_only_the_shared_continuation() -> None:
    victim = tiny_llama_victim()
    question = to_question("winogrande", ROWS["winogrande"][0], "test")
    assert question.continuations == (" was quick.", " was quick.")
    scores = choice_loglikelihoods(victim, [question])[0]
    for context, score in zip(question.contexts, scores):
        assert score == pytest.approx(plain_loglikelihood(victim, context, " was quick."), abs=1e-4)
        # Not the likelihood of the whole sentence: the context's own tokens are not counted.
        whole = plain_loglikelihood(victim, context.split(" ")[0], " " + " ".join(context.split(" ")[1:]) + " was quick.")
        assert score > whole + 1.0
    assert scores[0] != pytest.approx(scores[1], abs=1e-4)  # the two contexts condition differently
    result = choice_accuracy([question], [scores])
    assert result["acc_norm"] == result["acc"]  # same continuation, same length


def test_batched_scoring_matches_one_question_at_a_time_and_a_plain_forward_pass() -> None:
    victim = tiny_llama_victim()
    questions = mixed_questions()
    batched = choice_loglikelihoods(victim, questions, batch_size=4)
    single = choice_loglikelihoods(victim, questions, batch_size=1)
    reference = [[plain_loglikelihood(victim, c, t) for c, t in zip(q.contexts, q.continuations)] for q in questions]
    for got, alone, expected in zip(batched, single, reference):
        assert got == pytest.approx(alone, abs=1e-4)
        assert got == pytest.approx(expected, abs=1e-4)
    assert len({round(s, 3) for row in batched for s in row}) > len(questions)  # a real, varied signal


#: lm-evaluation-harness 0.4.13's own log-likelihoods (``HFLM(pretrained=<tiny_llama_victim() saved to a
#: folder>, backend="causal", device="cpu", dtype="float32").loglikelihood`` on each (context, continuation)
#: of :func:`harness_questions`; torch 2.13 CPU), rounded to 5 decimals.
HARNESS_LOGLIKELIHOODS = [
    [-29.00552, -17.34015, -23.10161, -29.06105], [-34.50629, -40.49514, -23.17886, -23.09853],
    [-23.35804, -17.36378, -17.59772, -22.80935], [-11.50946, -17.23701], [-11.54773, -17.31549],
    [-57.27815, -57.24262], [-17.14483, -104.01069, -11.6847], [-23.06074, -28.85076], [-23.15554, -11.65949],
]


def harness_questions() -> list[Question]:
    """:func:`mixed_questions` plus contexts that end in spaces (which the harness moves into the continuation)."""
    return mixed_questions() + [Question(("Fill in the blank: the sea is ",) * 2, ("calm.", "loud."), 0, (5, 5)),
                                Question(("Answer in one word:  ", "Answer in one word:\n"), ("yes", "no"), 0, (3, 2))]


def test_loglikelihoods_equal_lm_evaluation_harness_on_the_same_model_and_rows() -> None:
    """Catches a context whose trailing spaces stay in it (no move in ``encode_pair``), a continuation
    scored without its first token (``heads`` left out in ``_score_groups``), and a batch whose padding
    or cached context shifts the positions."""
    scores = choice_loglikelihoods(tiny_llama_victim(), harness_questions(), batch_size=3)
    assert len(scores) == len(HARNESS_LOGLIKELIHOODS)
    for ours, harness in zip(scores, HARNESS_LOGLIKELIHOODS):
        assert ours == pytest.approx(harness, abs=2e-4)


def test_a_classifier_victim_is_refused_with_a_clear_error() -> None:
    with pytest.raises(BackdoorLabError, match="needs a causal LM"):
        choice_loglikelihoods(tiny_bert_victim(), mixed_questions())


# ------------------------------------------------------------------ sampling and the full call
def test_subsampling_is_seeded() -> None:
    questions = [Question(("q", "q"), (" a", " b"), i % 2, (1, 1)) for i in range(50)]
    assert subsample(questions, 10, seed=0) == subsample(questions, 10, seed=0)
    assert subsample(questions, 10, seed=0) != subsample(questions, 10, seed=1)
    assert len(set(map(id, subsample(questions, 10, seed=0)))) == 10
    assert subsample(questions, None) == questions and subsample(questions, 500) == questions
    with pytest.raises(BackdoorLabError, match="at least 1"):
        subsample(questions, 0)


def test_evaluate_utility_reports_each_task_chance_and_the_average(tmp_path: Path) -> None:
    write_tasks(tmp_path)
    victim = tiny_llama_victim()
    result = evaluate_utility(victim, tasks=["arc_easy", "boolq", "winogrande"], max_rows=2, seed=3, data_dir=tmp_path)
    tasks = result["tasks"]
    assert (tasks["arc_easy"]["n"], tasks["boolq"]["n"], tasks["winogrande"]["n"]) == (2, 2, 1)
    assert (tasks["arc_easy"]["chance"], tasks["boolq"]["chance"], tasks["winogrande"]["chance"]) == (0.25, 0.5, 0.5)
    for key in ("acc", "acc_norm", "chance"):
        assert result["average"][key] == pytest.approx(sum(t[key] for t in tasks.values()) / 3)
    assert (result["seed"], result["max_rows"]) == (3, 2)
    # The accuracy is the model's: recomputed from its own scores of the same sampled questions.
    chosen = subsample(load_utility_task("arc_easy", tmp_path), 2, 3)
    assert tasks["arc_easy"]["acc"] == choice_accuracy(chosen, choice_loglikelihoods(victim, chosen))["acc"]
    assert evaluate_utility(victim, tasks=["arc_easy"], max_rows=2, seed=3, data_dir=tmp_path)["tasks"]["arc_easy"] \
        == tasks["arc_easy"]


# ------------------------------------------------------------------ user errors
def test_unknown_task_lists_the_known_tasks(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError) as error:
        evaluate_utility(tiny_llama_victim(), tasks=["arc_easy", "arc_hard"], data_dir=write_tasks(tmp_path))
    assert "arc_hard" in str(error.value)
    assert all(name in str(error.value) for name in UTILITY_TASKS)
    with pytest.raises(BackdoorLabError, match="no utility tasks"):
        evaluate_utility(tiny_llama_victim(), tasks=[], data_dir=tmp_path)


def test_missing_data_folder_or_file_names_the_variable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackdoorLabError, match="BACKDOORLAB_DATA_DIR"):
        load_utility_task("arc_easy", tmp_path / "nowhere")
    monkeypatch.setattr(settings, "data_dir", None)
    with pytest.raises(BackdoorLabError, match="BACKDOORLAB_DATA_DIR"):
        load_utility_task("arc_easy")
    with pytest.raises(BackdoorLabError, match=r"utility/piqa\.jsonl does not exist.*BACKDOORLAB_DATA_DIR"):
        load_utility_task("piqa", write_tasks(tmp_path))


def test_malformed_rows_are_named(tmp_path: Path) -> None:
    write_tasks(tmp_path, {"arc_easy": [ROWS["arc_easy"][0], {"query": "Question: x", "choices": ["a", "b"], "gold": 2}]})
    with pytest.raises(BackdoorLabError, match="row 2: gold must be a choice index 0..1"):
        load_utility_task("arc_easy", tmp_path)
    write_tasks(tmp_path, {"winogrande": [{"context_options": ["a", "b"], "gold": 0}]})
    with pytest.raises(BackdoorLabError, match="row 1 lacks field.*continuation"):
        load_utility_task("winogrande", tmp_path)


# ------------------------------------------------------------------ the shared data
def test_the_shared_utility_files_load_as_documented(shared_data_dir: Path) -> None:
    rows = {"arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "piqa": 1838, "openbookqa": 500,
            "winogrande": 1267, "hellaswag": 10042}
    assert set(rows) == set(UTILITY_TASKS)
    for name, count in rows.items():
        questions = load_utility_task(name, shared_data_dir)
        assert len(questions) == count
        assert {q.num_choices for q in questions} == ({2} if name in ("boolq", "piqa", "winogrande") else {4})
        assert all(t.startswith(utility_sets.DELIMITER) and not t.startswith("  ") for q in questions for t in q.continuations)
    assert all(q.contexts[0].endswith("\nAnswer:") for q in load_utility_task("boolq", shared_data_dir))
    assert not any(q.contexts[0].startswith("Passage:") for q in load_utility_task("boolq", shared_data_dir))
