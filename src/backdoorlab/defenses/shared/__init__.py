"""Machinery several defenses share: the clean-row options of classification defenses and weight
edits on attention heads and the residual stream."""

from .classifier import ClassifierDefense
from .weight_edits import project_out, remove_heads

__all__ = ['ClassifierDefense', 'project_out', 'remove_heads']
