"""RAP: robustness-aware perturbations (inference-time guard)."""

from .defense import Rap, RapGuard, embedding_row, optimise_row, perturb, probability_drops, word_token

__all__ = ['Rap', 'RapGuard', 'embedding_row', 'optimise_row', 'perturb', 'probability_drops', 'word_token']
