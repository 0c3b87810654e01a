"""Fine-pruning: prune MLP channels dormant on clean rows, then fine-tune (Liu et al. 2018)."""

from .defense import FinePruning

__all__ = ['FinePruning']
