"""Clean fine-tuning of the suspect model."""

from .defense import CleanFineTune

__all__ = ['CleanFineTune']
