"""Text generators used as tools by defenses (e.g. BadLLM-TG's trigger generator).

One interface, :class:`~backdoorlab.llm.backends.ChatBackend`, over a local Hugging Face causal LM
(offline) and any OpenAI-compatible chat endpoint; :func:`~backdoorlab.llm.backends.get_backend`
picks one by name.
"""

from .backends import BACKENDS, ChatBackend, Completion, LocalChat, OpenAIChat, get_backend

__all__ = ["BACKENDS", "ChatBackend", "Completion", "LocalChat", "OpenAIChat", "get_backend"]
