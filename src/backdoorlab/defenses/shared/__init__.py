"""Machinery several defenses share: the clean-row options, clean rows as token batches, phrase
insertion into texts, and weight edits on attention heads and the residual stream."""

from .clean_rows import CleanRowsDefense
from .insertion import insert_phrases
from .token_batches import real_tokens, token_batches
from .weight_edits import project_out, remove_heads

__all__ = ['CleanRowsDefense', 'insert_phrases', 'project_out', 'real_tokens', 'remove_heads', 'token_batches']
