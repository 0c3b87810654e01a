"""Machinery several defenses share: the clean-row options, clean rows as token batches, phrase
insertion into texts, weight edits on attention heads and the residual stream, and BadLLM-TG's
n-gram evidence and label screening (:mod:`.evidence`, :mod:`.label_screening`), which ``scan``
uses too; kept here so that neither one's results depend on the other's code."""

from .clean_rows import CleanRowsDefense
from .insertion import insert_phrases
from .token_batches import real_tokens, token_batches
from .weight_edits import project_out, remove_heads

__all__ = ['CleanRowsDefense', 'insert_phrases', 'project_out', 'real_tokens', 'remove_heads', 'token_batches']
