"""Weight pruning of the transformer blocks: ``wanda`` and ``magnitude-pruning``."""

from .defense import MagnitudePruning, WandaPruning

__all__ = ['MagnitudePruning', 'WandaPruning']
