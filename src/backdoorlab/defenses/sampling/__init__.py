"""Sampling decoding as an inference-time baseline."""

from .defense import Sampling, SamplingGuard

__all__ = ["Sampling", "SamplingGuard"]
