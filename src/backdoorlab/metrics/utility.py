"""Clean utility: zero-shot multiple-choice accuracy of a causal LM, as lm-evaluation-harness scores it.

Each choice is scored by the summed log-likelihood of its continuation given its context (raw
text, no chat template; tokenized as the harness does: trailing context spaces move to the
continuation, ``context + continuation`` is encoded whole and split after the context's tokens).

- ``acc``: the gold choice has the highest summed log-likelihood.
- ``acc_norm``: the gold choice has the highest log-likelihood divided by the choice's length in
  characters (the harness's ``acc_norm``; the delimiter is not counted). For WinoGrande both
  choices score the same continuation, so ``acc_norm`` equals ``acc`` there.

Ties go to the first choice, as ``numpy.argmax`` does in the harness. Scoring is batched: several
questions per forward pass, each context run once and its key/value cache shared by all choices
that follow it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.utility_sets import UTILITY_TASKS, Question, check_tasks, load_utility_task, subsample
from ..errors import BackdoorLabError
from ..models.tokenization import pad_batch
from ..models.victim import Victim

DEFAULT_MAX_ROWS = 80  # per task: all seven in about 3 minutes for SmolLM2-135M on 2 shared CPU cores, 1 torch thread
DEFAULT_BATCH_SIZE = 8
Pair = tuple[list[int], list[int]]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> Pair:
    """Context and continuation token ids, split the way lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    return context_ids, whole[len(context_ids):]


def _fit(pair: Pair, limit: int) -> Pair:
    """Cut the context from the left so that context + continuation fits ``limit`` positions."""
    context, continuation = pair
    if not continuation:
        raise BackdoorLabError("a choice has no tokens to score; every choice needs non-empty text")
    if len(continuation) >= limit:
        raise BackdoorLabError(f"a choice has {len(continuation)} tokens; the model takes at most {limit}")
    return context[-(limit - len(continuation)):], continuation


def _position_limit(victim: Victim) -> int:
    config = getattr(victim.model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _score_groups(victim: Victim, groups: Sequence[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """Summed continuation log-likelihoods for ``groups`` of (context ids, [continuation ids, ...]).

    One pass runs the left-padded contexts; a second runs every continuation, right-padded, on a
    copy of its context's key/value cache. The first continuation token is predicted by the
    context's last position.
    """
    pad = victim.tokenizer.pad_token_id
    device = victim.device
    prefix = pad_batch([{"input_ids": c, "attention_mask": [1] * len(c)} for c, _ in groups], pad, side="left")
    prefix = {k: v.to(device) for k, v in prefix.items()}
    out = victim.forward(prefix, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)
    owner = [g for g, (_, conts) in enumerate(groups) for _ in conts]
    rows = [cont for _, conts in groups for cont in conts]
    index = torch.tensor(owner, device=device)
    cache = out.past_key_values
    cache.batch_select_indices(index)
    tail = pad_batch([{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows], pad, side="right")
    tail = {k: v.to(device) for k, v in tail.items()}
    lengths = prefix["attention_mask"].sum(-1)[index]
    batch = {"input_ids": tail["input_ids"],
             "attention_mask": torch.cat([prefix["attention_mask"][index], tail["attention_mask"]], -1),
             "position_ids": lengths.unsqueeze(-1) + torch.arange(tail["input_ids"].shape[1], device=device)}
    logits = victim.forward(batch, past_key_values=cache).logits[:, :-1].float()
    targets = tail["input_ids"][:, 1:]
    picked = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rest = (picked * tail["attention_mask"][:, 1:]).sum(-1)
    heads = first[index, tail["input_ids"][:, 0]]
    totals = (heads + rest).tolist()
    scores: list[list[float]] = [[] for _ in groups]
    for group, value in zip(owner, totals):
        scores[group].append(value)
    return scores


@torch.inference_mode()
def choice_loglikelihoods(victim: Victim, questions: Sequence[Question], batch_size: int = DEFAULT_BATCH_SIZE,
                          progress: tqdm | None = None) -> list[list[float]]:
    """Per question, the summed log-likelihood of each choice's continuation given its context.

    ``batch_size`` questions go through each forward pass (longest first, to waste little
    padding); ``progress`` is advanced by one per question.
    """
    if not victim.is_generator:
        raise BackdoorLabError(f"utility scoring needs a causal LM; {victim.name or 'this model'} is a {victim.kind}")
    if batch_size < 1:
        raise BackdoorLabError(f"batch size must be at least 1, got {batch_size}")
    victim.model.eval()
    limit = _position_limit(victim)
    encoded = [[_fit(encode_pair(victim.tokenizer, c, t), limit) for c, t in zip(q.contexts, q.continuations)]
               for q in questions]
    order = sorted(range(len(questions)), key=lambda i: -max(len(c) + len(t) for c, t in encoded[i]))
    results: list[list[float]] = [[] for _ in questions]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        groups: list[tuple[list[int], list[list[int]]]] = []
        slots: list[tuple[int, int]] = []  # (question, choice) in the order the groups list them
        for q in chunk:
            by_context: dict[tuple[int, ...], list[int]] = {}
            for choice, (context, _) in enumerate(encoded[q]):
                by_context.setdefault(tuple(context), []).append(choice)
            for context, choices in by_context.items():
                groups.append((list(context), [encoded[q][c][1] for c in choices]))
                slots.extend((q, c) for c in choices)
        values = [v for group in _score_groups(victim, groups) for v in group]
        for q in chunk:
            results[q] = [0.0] * questions[q].num_choices
        for (q, choice), value in zip(slots, values):
            results[q][choice] = value
        if progress is not None:
            progress.update(len(chunk))
    return results


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _stderr(hits: Sequence[float]) -> float | None:
    """Standard error of a mean of 0/1 hits (sample standard deviation over sqrt(n), as the harness)."""
    n = len(hits)
    if n < 2:
        return None
    mean = sum(hits) / n
    return math.sqrt(sum((h - mean) ** 2 for h in hits) / (n - 1) / n)


def choice_accuracy(questions: Sequence[Question], loglikelihoods: Sequence[Sequence[float]]) -> dict[str, Any]:
    """``acc``, ``acc_norm`` (with standard errors), ``n``, ``chance`` (mean 1/choices) and
    ``majority`` (share of the most common gold position) of scored questions."""
    if not questions:
        raise BackdoorLabError("utility accuracy: no questions to score")
    if len(loglikelihoods) != len(questions):
        raise BackdoorLabError(f"got scores for {len(loglikelihoods)} questions, expected {len(questions)}")
    acc, acc_norm = [], []
    for question, scores in zip(questions, loglikelihoods):
        if len(scores) != question.num_choices:
            raise BackdoorLabError(f"got {len(scores)} scores for a question with {question.num_choices} choices")
        acc.append(float(_argmax(scores) == question.gold))
        acc_norm.append(float(_argmax([s / n for s, n in zip(scores, question.lengths)]) == question.gold))
    n = len(questions)
    return {"acc": sum(acc) / n, "acc_norm": sum(acc_norm) / n, "n": n,
            "chance": sum(1 / q.num_choices for q in questions) / n,
            "majority": Counter(q.gold for q in questions).most_common(1)[0][1] / n,
            "acc_stderr": _stderr(acc), "acc_norm_stderr": _stderr(acc_norm)}


def evaluate_utility(victim: Victim, tasks: Sequence[str] = tuple(UTILITY_TASKS), max_rows: int | None = DEFAULT_MAX_ROWS,
                     seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                     data_dir: str | Path | None = None) -> dict[str, Any]:
    """Zero-shot accuracy of ``victim`` on the utility ``tasks`` (``max_rows`` questions each, drawn
    with ``seed``; ``None`` for every row), with one progress bar over all questions.

    Returns ``{"tasks": {name: {acc, acc_norm, n, chance, majority, ...}}, "average": {acc,
    acc_norm, chance} (unweighted mean over tasks), "seed", "max_rows"}``.
    """
    names = check_tasks(tasks)
    chosen = {name: subsample(load_utility_task(name, data_dir), max_rows, seed) for name in names}
    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=sum(len(q) for q in chosen.values()), desc="utility", unit="question") as bar:
        for name, questions in chosen.items():
            bar.set_postfix_str(name)
            results[name] = choice_accuracy(questions, choice_loglikelihoods(victim, questions, batch_size, bar))
    average = {key: sum(r[key] for r in results.values()) / len(results) for key in ("acc", "acc_norm", "chance")}
    return {"tasks": results, "average": average, "seed": seed, "max_rows": max_rows}
