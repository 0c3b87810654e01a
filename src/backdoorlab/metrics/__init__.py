"""Metrics: pure functions over predictions, generations, log-probabilities and detection scores."""

from .classification import attack_success_rate, clean_accuracy
from .detection import auroc, f1_at_threshold, threshold_metrics
from .generative import behaviour_rate, perplexity
from .judges import NEGSENTIMENT_PREFIX, REFUSAL_PHRASES, Judge, get_judge, judge_names

__all__ = [
    "NEGSENTIMENT_PREFIX", "REFUSAL_PHRASES", "Judge", "attack_success_rate", "auroc", "behaviour_rate",
    "clean_accuracy", "f1_at_threshold", "get_judge", "judge_names", "perplexity", "threshold_metrics",
]
