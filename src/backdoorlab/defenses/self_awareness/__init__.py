"""Backdoor self-awareness (arXiv 2510.05169): RL that makes a suspect name its trigger, and two defenses."""

from .defense import SelfAwarenessGuard, SelfAwarenessUnlearning

__all__ = ["SelfAwarenessGuard", "SelfAwarenessUnlearning"]
