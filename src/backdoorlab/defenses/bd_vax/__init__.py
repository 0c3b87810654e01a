"""BD-VAX: immunization-style purification of generative LLMs (arXiv 2603.13461)."""

from .defense import BdVax
from .signature import Signature, combined_score, compute_signature, strength_and_alignment, top_share
from .synthetic import SYNTHETIC_BACKDOORS, SyntheticBackdoor

__all__ = ["SYNTHETIC_BACKDOORS", "BdVax", "Signature", "SyntheticBackdoor", "combined_score", "compute_signature",
           "strength_and_alignment", "top_share"]
