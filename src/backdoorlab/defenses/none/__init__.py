"""No defense (the reference row of every benchmark)."""

from .defense import NoDefense

__all__ = ['NoDefense']
