"""Generative metrics: how often a judged behaviour occurs, how uniform the responses are, and
perplexity of reference text."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from ..errors import BackdoorLabError
from .judges import normalise


def behaviour_rate(responses: Sequence[str], judge: Callable[[str], bool]) -> float:
    """Share of ``responses`` for which ``judge`` says the behaviour happened."""
    if len(responses) == 0:
        raise BackdoorLabError("behaviour rate: no responses to judge (the evaluation split is empty)")
    return sum(bool(judge(r)) for r in responses) / len(responses)


def most_common_response(responses: Sequence[str]) -> tuple[str, float]:
    """The most frequent response (up to case and whitespace) and the share of ``responses`` equal to it.

    A share near 1 means the model answers (nearly) every prompt the same way, whatever it says.
    Ties go to the response seen first.
    """
    if len(responses) == 0:
        raise BackdoorLabError("most common response: no responses (the evaluation split is empty)")
    response, count = Counter(normalise(r) for r in responses).most_common(1)[0]
    return response, count / len(responses)


def perplexity(token_logprobs: Sequence[torch.Tensor]) -> float:
    """``exp`` of the token-weighted mean negative log-likelihood over all responses.

    Each tensor holds the per-token log-probabilities of one response (as returned by
    :meth:`~backdoorlab.models.victim.Victim.response_logprobs`); long responses weigh more.
    """
    total, count = 0.0, 0
    for row in token_logprobs:
        values = torch.as_tensor(row, dtype=torch.float64).flatten()
        total += float(values.sum())
        count += values.numel()
    if count == 0:
        raise BackdoorLabError("perplexity: no response tokens to score")
    return math.exp(-total / count)
