"""Model resolution, safe loading, the Victim interface and activation hooks."""

from .architecture import ArchitectureSpec, describe
from .hooks import HOOK_POINTS, ActivationCache, hooks, recording
from .loading import load_victim
from .registry import ModelInfo, list_models, resolve_model
from .victim import Victim

__all__ = ["HOOK_POINTS", "ActivationCache", "ArchitectureSpec", "ModelInfo", "Victim", "describe",
           "hooks", "list_models", "load_victim", "recording", "resolve_model"]
