"""Defender-side paraphrasers: paraphrase pools for BadLLM-TG's style and syntax hypotheses.

BadLLM-TG (``paraphrase_pools``) probes a suspect with the defender's own rows rewritten under a
hypothesis about a paraphrase trigger (StyleBkd's styles, SynBkd's syntactic templates). These
paraphrasers make such pools without the attacker's tools:

- ``syntactic[:template]``: rule-based syntactic rewrites, no model (:mod:`.syntactic`);
- ``style:<style>``: few-shot prompting of a chat model, by default the packaged
  ``smollm2-135m-instruct`` (:mod:`.style`);
- ``perturb``: back-translation-like word dropout, reordering and synonym swaps (:mod:`.perturb`).

``make_pool(rows, method, seed=..., max_rows=..., **options)`` returns the pool as a
:class:`~backdoorlab.data.records.Dataset`; ``save_pool(pool, path)`` writes it (``.tsv`` or
``.jsonl``) for ``--option paraphrase_pools=...``. On the command line: ``backdoorlab paraphrase``.
"""

from .pool import METHOD_CHOICES, METHODS, make_pool, parse_method, save_pool
from .style import STYLES
from .syntactic import TEMPLATE_CHOICES

__all__ = ["METHODS", "METHOD_CHOICES", "STYLES", "TEMPLATE_CHOICES", "make_pool", "parse_method", "save_pool"]
