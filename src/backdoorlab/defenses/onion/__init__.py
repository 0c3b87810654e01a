"""ONION: remove the words an LM finds most out of place (inference-time guard)."""

from .defense import Onion, OnionGuard, remove_suspicious, suspicion_scores
from .lm_perplexity import PerplexityScorer

__all__ = ['Onion', 'OnionGuard', 'PerplexityScorer', 'remove_suspicious', 'suspicion_scores']
