"""Drop the adapter: the reference defense for a suspect distributed as base + LoRA adapter."""

from .defense import DropAdapter

__all__ = ["DropAdapter"]
