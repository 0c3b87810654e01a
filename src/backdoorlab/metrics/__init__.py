"""Metrics: pure functions over predictions, generations, log-probabilities and detection scores."""

from .classification import (
    attack_success_rate,
    balanced_accuracy,
    clean_accuracy,
    label_shares,
    macro_f1,
    majority_class_rate,
)
from .detection import auroc, f1_at_threshold, threshold_metrics
from .generative import behaviour_rate, most_common_response, perplexity
from .judges import NEGSENTIMENT_PREFIX, REFUSAL_PHRASES, Judge, get_judge, judge_names

__all__ = [
    "NEGSENTIMENT_PREFIX", "REFUSAL_PHRASES", "Judge", "attack_success_rate", "auroc", "balanced_accuracy",
    "behaviour_rate", "clean_accuracy", "f1_at_threshold", "get_judge", "judge_names", "label_shares", "macro_f1",
    "majority_class_rate", "most_common_response", "perplexity", "threshold_metrics",
]
