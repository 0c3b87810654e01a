"""CROW: internal-consistency regularised fine-tuning of a suspect generator."""

from .defense import Crow
from .loss import CrowObjective

__all__ = ["Crow", "CrowObjective"]
