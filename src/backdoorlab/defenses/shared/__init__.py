"""Machinery several defenses share: the clean-row options of classification defenses and weight
edits on attention heads and the residual stream."""

from .clean_rows import CleanRowsDefense
from .weight_edits import project_out, remove_heads

__all__ = ['CleanRowsDefense', 'project_out', 'remove_heads']
