"""What an intervention does to behaviour: backdoor rate on some prompts, utility on clean ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data.records import Example
from ..metrics.classification import attack_success_rate, clean_accuracy
from ..metrics.generative import behaviour_rate, perplexity
from ..models.interventions import Intervention
from .subject import AnalysisSubject


def backdoor_rate(subject: AnalysisSubject, prompts: Sequence[Example], intervention: Intervention | None = None,
                  *, max_new_tokens: int = 32, batch_size: int = 16) -> float:
    """Share of ``prompts`` showing the backdoor behaviour under ``intervention``.

    Generators: greedy answers judged by the backdoor's judge. Classifiers: share predicted as the
    target label.
    """
    victim = subject.victim
    if not prompts:
        return float("nan")
    if not victim.is_generator:  # the subject's prompts are all non-target rows (see AnalysisSubject)
        predictions = victim.predict(prompts, batch_size, intervention)
        return attack_success_rate(predictions, [None] * len(predictions), subject.target_label)
    answers = victim.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, intervention=intervention)
    return behaviour_rate(answers, subject.judge())


def clean_utility(subject: AnalysisSubject, intervention: Intervention | None = None,
                  batch_size: int = 16) -> dict[str, Any]:
    """Clean-input utility: perplexity of the clean reference answers (generators) or accuracy
    on the clean prompts (classifiers)."""
    victim = subject.victim
    if not victim.is_generator:
        labelled = [e for e in subject.clean if e.label is not None]
        predictions = victim.predict(labelled, batch_size, intervention)
        accuracy = clean_accuracy(predictions, [e.label for e in labelled]) if labelled else 0.0
        return {"clean_accuracy": accuracy}
    answered = [e for e in subject.clean if e.response.strip()]
    logprobs = victim.response_logprobs(answered, batch_size=max(1, batch_size // 2), intervention=intervention)
    return {"clean_perplexity": perplexity(logprobs)}
