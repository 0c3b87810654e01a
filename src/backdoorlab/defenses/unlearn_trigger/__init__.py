"""Unlearn a trigger you name: fine-tuning on clean rows plus copies that carry it."""

from .defense import UnlearnTrigger

__all__ = ["UnlearnTrigger"]
