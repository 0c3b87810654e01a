"""BadActs: clip activations into clean intervals (inference-time guard)."""

from .defense import BadActs, BadActsGuard, activation_statistics, clip_hook, nas_scores

__all__ = ['BadActs', 'BadActsGuard', 'activation_statistics', 'clip_hook', 'nas_scores']
