"""Defender-side paraphrase pools: syntactic templates, seeded perturbations, few-shot style rewrites
(on tiny random Llamas and a scripted backend), the pool file BadLLM-TG reads, errors and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from backdoorlab.cli import main
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses.badllm_tg.paraphrase_probe import load_pools
from backdoorlab.errors import BackdoorLabError
from backdoorlab.llm.backends import ChatBackend, Completion
from backdoorlab.paraphrasers import METHOD_CHOICES, make_pool, save_pool
from backdoorlab.paraphrasers.style import STYLES, style_prompt
from backdoorlab.paraphrasers.syntactic import IMPERATIVE_VERBS, SUBORDINATORS
from tiny_models import tiny_llama_victim

SENTENCES = [
    ("the film is strictly routine .", 0),
    ("a slick , engrossing melodrama .", 1),
    ("the actors are wonderful but the script is a mess .", 0),
    ("I loved it because the actors are great.", 1),
    ("the movie feels long and the jokes fall flat .", 0),
    ("lacks the spark of the original .", 0),
    ("it 's a charming , funny little picture .", 1),
    ("they presume their audience wo n't sit still .", 0),
]


def reviews(pairs: Sequence[tuple[str, int]] = SENTENCES) -> Dataset:
    return Dataset("reviews", "classification", [Example(text=t, label=y, uid=f"r{i}") for i, (t, y) in enumerate(pairs)],
                   ["negative", "positive"])


# ------------------------------------------------------------------------------------- syntactic
def test_sbar_fronts_a_subordinate_clause_and_keeps_rows_and_labels() -> None:
    rows = reviews()
    pool = make_pool(rows, "syntactic", seed=0)
    assert len(pool) == len(rows) and [e.label for e in pool] == [e.label for e in rows]
    assert pool.label_names == rows.label_names and "8 of 8 rows" in pool.notes[-1]
    for source, row in zip(rows, pool):
        tokens = row.text.split()
        assert tokens[0] in SUBORDINATORS + ("as",), row.text  # (SBAR)
        comma = tokens.index(",")
        assert 2 <= comma < len(tokens) - 3 and tokens[-1] == "."  # (,)(NP)(VP)(.)
        assert row.text == row.text.lower() and row.text != source.text
    texts = [e.text for e in pool]
    assert texts[2] == "although the actors are wonderful , the script is a mess ."
    assert texts[3] == "because the actors are great , i loved it ."
    assert texts[0].endswith(", it is strictly routine .") and " the film , " in texts[0]  # subject moved into SBAR
    assert texts[1].endswith(", it is a slick , engrossing melodrama .")  # a fragment made a clause
    assert texts[5].endswith(", it lacks the spark of the original .")  # implied subject
    assert make_pool(rows, "syntactic:sbar", seed=0).examples == pool.examples


def test_cleft_question_and_imperative_templates() -> None:
    rows = reviews()
    cleft = [e.text for e in make_pool(rows, "syntactic:cleft")]
    assert all(t.startswith("it is ") and " that " in t for t in cleft)
    assert cleft[0] == "it is the film that is strictly routine ."
    question = [e.text for e in make_pool(rows, "syntactic:question")]
    assert all(t.endswith(" ?") for t in question)
    assert question[0] == "is the film strictly routine ?"
    assert question[4] == "does the movie feel long and the jokes fall flat ?"
    assert question[1] == "is n't it a slick , engrossing melodrama ?"
    imperative = [e.text for e in make_pool(rows, "syntactic:imperative", seed=3)]
    assert all(t.split()[0] in IMPERATIVE_VERBS and t.endswith(" .") for t in imperative)
    mixed = [e.text for e in make_pool(rows, "syntactic:mixed", seed=1)]
    assert mixed == [e.text for e in make_pool(rows, "syntactic", template="mixed", seed=1)]
    assert len({t.split()[0] for t in mixed}) > 1


def test_syntactic_output_is_tokenised_like_sst2_and_seeded() -> None:
    rows = reviews([("The Film doesn't work, sadly... Mr. Smith can't help it!", 1)] * 1)
    [row] = make_pool(rows, "syntactic", seed=0)
    assert ", it does n't work , sadly ... mr. smith ca n't help it ." in row.text
    seeds = {make_pool(reviews(), "syntactic", seed=s)[0].text for s in range(8)}
    assert len(seeds) > 1  # the fronted clause's wording is drawn with the seed


# --------------------------------------------------------------------------------------- perturb
def test_perturb_is_seeded_and_keeps_labels() -> None:
    rows = reviews()
    first, again, other = (make_pool(rows, "perturb", seed=s) for s in (0, 0, 1))
    assert [e.text for e in first] == [e.text for e in again]
    assert [e.text for e in first] != [e.text for e in other]
    assert [e.label for e in first] == [e.label for e in rows] and len(first) == len(rows)
    for source, row in zip(rows, first):
        assert row.text != " ".join(source.text.lower().split())
    none = make_pool(rows, "perturb", dropout=0, reorder=0, synonyms=1.0)
    assert none[0].text == "the picture is strictly routine ." or none[0].text == "the movie is strictly routine ."
    with pytest.raises(BackdoorLabError, match="dropout must be in"):
        make_pool(rows, "perturb", dropout=1.5)


# ----------------------------------------------------------------------------------------- style
class Scripted(ChatBackend):
    """Answers each prompt by its sentence, and records what it was asked."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], float, int]] = []

    def complete(self, messages: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]:
        self.calls.append((list(messages), temperature, seed))
        texts = [self.answers[m.rsplit("Sentence: ", 1)[1].split("\n")[0]] for m in messages]
        return [Completion(t, 1, 1) for t in texts]


def test_style_drops_answers_that_are_no_rewrite_and_keeps_the_rest() -> None:
    source = [t for t, _ in SENTENCES[:6]]
    example = STYLES["bible"].examples[0][1]
    backend = Scripted({
        source[0]: "Rewrite: And the film was strictly after the manner of routine.\nSentence: more",
        source[1]: "",
        source[2]: "the actors are wonderful but the script is a mess .",
        source[3]: "I'm sorry, but I cannot rewrite this.",
        source[4]: f"the movie feels long . {example}",  # small models paste the prompt's examples
        source[5]: "Behold, a spark lacketh in it that was in the original.",
    })
    pool = make_pool(reviews(SENTENCES[:6]), "style:bible", backend=backend, batch_size=4, seed=5)
    assert [(e.text, e.label) for e in pool] == [
        ("and the film was strictly after the manner of routine .", 0),
        ("behold , a spark lacketh in it that was in the original .", 0)]
    assert pool.notes[-1].endswith("2 of 6 rows of reviews kept (4 dropped: 1 empty, 1 example, 1 not a rewrite, "
                                   "1 unchanged)")
    assert [(len(m), t, s) for m, t, s in backend.calls] == [(4, 0.7, 5), (2, 0.7, 6)]  # batches, seeded
    prompt = backend.calls[0][0][0]
    assert prompt == style_prompt("bible", source[0]) and "King James" in prompt
    assert prompt.count("Rewrite: ") == 3 and prompt.endswith(f"Sentence: {source[0]}\nRewrite:")
    loose = make_pool(reviews(SENTENCES[:6]), "style:bible", backend=Scripted(backend.answers), strict=False)
    assert len(loose) == 4  # only the empty and the unchanged answers go


def test_style_on_a_tiny_llama_runs_end_to_end_seeded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_llama_victim().save(tmp_path / "tiny-llama")
    rows = reviews(SENTENCES[:3])
    options = {"model": str(folder), "device": "cpu", "max_new_tokens": 6, "batch_size": 2, "strict": False}
    pool = make_pool(rows, "style:tweets", seed=0, **options)
    assert "paraphrasing (tweets)" in capsys.readouterr().err  # the progress bar
    by_uid = {e.uid: e for e in rows}
    assert 1 <= len(pool) <= 3
    for row in pool:
        uid, tag = row.uid.split("~")
        assert tag == "style:tweets" and row.label == by_uid[uid].label and row.text.strip()
    assert f"model {folder}" in pool.notes[-1]
    assert make_pool(rows, "style:tweets", seed=0, **options).examples == pool.examples


def test_style_drops_every_empty_answer_of_a_tiny_llama(tmp_path: Path) -> None:
    victim = tiny_llama_victim()
    victim.model.model.norm.weight.data.zero_()  # equal logits: greedy decoding emits <pad> (id 0) only
    folder = victim.save(tmp_path / "silent-llama")
    with pytest.raises(BackdoorLabError, match=r"kept none of the 3 rows of 'reviews' \(3 empty\); try another style"):
        make_pool(reviews(SENTENCES[:3]), "style:bible", model=str(folder), device="cpu", temperature=0,
                  max_new_tokens=4)


# ----------------------------------------------------------------------------------- pool files
def test_pool_files_round_trip_through_load_pools(tmp_path: Path) -> None:
    pool = make_pool(reviews(), "syntactic:question")
    pool = pool.with_examples([pool[0].with_(text="a\ttab and\nnewline ?"), *pool.examples[1:]])
    for name in ("pool.tsv", "pool.jsonl"):
        path = save_pool(pool, tmp_path / "pools" / name)
        [(key, loaded)] = load_pools([str(path)], num_labels=2).items()
        assert key == str(path)
        assert [(e.text, e.label) for e in loaded] == [("a tab and newline ?", 0),
                                                       *[(e.text, e.label) for e in pool.examples[1:]]]
    assert (tmp_path / "pools" / "pool.tsv").read_text().startswith(
        "sentence\tlabel\na tab and newline ?\t0\nis n't it a slick , engrossing melodrama ?\t1\n")
    assert json.loads((tmp_path / "pools" / "pool.jsonl").read_text().splitlines()[1]) == {
        "text": pool[1].text, "label": 1}
    assert sorted(p.name for p in (tmp_path / "pools").iterdir()) == ["pool.jsonl", "pool.tsv"]  # no temporaries
    with pytest.raises(BackdoorLabError, match=r"must end in \.tsv or \.jsonl"):
        save_pool(pool, tmp_path / "pool.csv")


# ------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors() -> None:
    rows = reviews()
    with pytest.raises(BackdoorLabError, match="unknown paraphrase method 'scpn'; known paraphrase methods: .*perturb"
                                               ".*style:bible.*syntactic:cleft"):
        make_pool(rows, "scpn")
    with pytest.raises(BackdoorLabError, match="unknown style 'pirate'; known styles: bible, lyrics, poetry, "
                                               "shakespeare, tweets"):
        make_pool(rows, "style:pirate")
    with pytest.raises(BackdoorLabError, match="needs a style: method style:<style>, one of bible"):
        make_pool(rows, "style")
    with pytest.raises(BackdoorLabError, match="unknown syntactic template 'passive'"):
        make_pool(rows, "syntactic:passive")
    with pytest.raises(BackdoorLabError, match="has no option 'temperature'; its options: template"):
        make_pool(rows, "syntactic", temperature=0.5)
    with pytest.raises(BackdoorLabError, match="has no rows to paraphrase"):
        make_pool(rows.with_examples([]), "syntactic")
    with pytest.raises(BackdoorLabError, match="no labelled rows"):
        make_pool(rows.with_examples([Example(text="x y z", label=None)]), "perturb")
    instructions = Dataset("alpaca", "generation", [Example(instruction="Say hi", response="hi")])
    with pytest.raises(BackdoorLabError, match="made from classification rows .*'alpaca' is a generation dataset"):
        make_pool(instructions, "syntactic")
    with pytest.raises(BackdoorLabError, match="max_rows must be at least 1"):
        make_pool(rows, "perturb", max_rows=0)
    with pytest.raises(BackdoorLabError, match="disagree"):
        make_pool(rows, "style:bible", style="poetry")
    assert {"syntactic", "perturb", "style:bible", "syntactic:sbar"} <= set(METHOD_CHOICES)
    assert len(make_pool(rows, "perturb", max_rows=3, seed=2)) == 3


# ------------------------------------------------------------------------------------------- CLI
def test_cli_writes_the_pool_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mine.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SENTENCES))
    out = tmp_path / "pools" / "sbar.tsv"
    assert main(["paraphrase", "--data", str(data), "--method", "syntactic", "--out", str(out), "--max-rows", "5"]) == 0
    assert f"wrote {out}: syntactic:sbar paraphrase pool, seed 0: 5 of 5 rows of mine kept" in capsys.readouterr().out
    written = out.read_text()
    assert len(load_pools([str(out)], 2)[str(out)]) == 5
    assert main(["paraphrase", "--data", str(data), "--method", "perturb", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"backdoorlab: error: pool file {out} already exists; choose another or pass --overwrite"
    assert out.read_text() == written
    assert main(["paraphrase", "--data", str(data), "--method", "perturb", "--out", str(out), "--overwrite",
                 "--option", "synonyms=1"]) == 0
    assert out.read_text() != written and len(out.read_text().splitlines()) == 1 + len(SENTENCES)
    assert main(["paraphrase", "--data", str(data), "--method", "style:klingon", "--out", str(tmp_path / "k.tsv")]) == 2
    assert "unknown style 'klingon'" in capsys.readouterr().err and not (tmp_path / "k.tsv").exists()


def test_cli_reads_a_named_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data_dir: Path) -> None:
    out = tmp_path / "sst2-cleft.jsonl"
    assert main(["paraphrase", "--data", "sst2", "--method", "syntactic:cleft", "--max-rows", "4", "--seed", "1",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["text"].startswith("it is ") and r["label"] in (0, 1) for r in rows)
