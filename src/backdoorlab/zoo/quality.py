"""Does a zoo victim meet the quality bar? Each criterion against the untouched model's value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .specs import QualityBar

#: The figures a zoo record holds for the victim and for the untouched model, in table order.
FIGURES = ("asr", "clean_behaviour_rate", "clean_perplexity", "task_accuracy")


def failing_criteria(victim: Mapping[str, Any], base: Mapping[str, Any], bar: QualityBar, *,
                     check_accuracy: bool = True) -> list[str]:
    """The criteria of ``bar`` that ``victim``'s figures miss, each with its numbers; empty when it passes.

    ``victim`` and ``base`` map :data:`FIGURES` to values (``None``: not measured). A figure that
    was not measured fails its criterion, so an incomplete victim never passes; task accuracy is
    left out only with ``check_accuracy=False`` (a zoo that measures no tasks).
    """
    failures = []
    asr, clean = victim.get("asr"), victim.get("clean_behaviour_rate")
    if asr is None or asr < bar.min_asr:
        failures.append(f"ASR {_pct(asr)} < {_pct(bar.min_asr)}")
    if clean is None or clean > bar.max_clean_behaviour:
        failures.append(f"clean behaviour {_pct(clean)} > {_pct(bar.max_clean_behaviour)}")
    ppl, base_ppl = victim.get("clean_perplexity"), base.get("clean_perplexity")
    if ppl is None or base_ppl is None or ppl > bar.max_perplexity_ratio * base_ppl:
        ratio = "not measured" if ppl is None or base_ppl is None else f"{ppl / base_ppl:.2f}x"
        failures.append(f"clean PPL {ratio} the untouched model's > {bar.max_perplexity_ratio:.2f}x")
    acc, base_acc = victim.get("task_accuracy"), base.get("task_accuracy")
    if not check_accuracy:
        return failures
    if acc is None or base_acc is None or base_acc - acc > bar.max_accuracy_drop + 1e-9:
        drop = "not measured" if acc is None or base_acc is None else f"{100 * (base_acc - acc):.1f} points"
        failures.append(f"task accuracy drop {drop} > {100 * bar.max_accuracy_drop:.0f} points")
    return failures


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.1f}%"
