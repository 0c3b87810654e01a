"""CleanGen: decoding-time backdoor mitigation with a clean reference model."""

from .decoding import CleanGenCounts, cleangen_generate
from .defense import CleanGen, CleanGenGuard

__all__ = ["CleanGen", "CleanGenCounts", "CleanGenGuard", "cleangen_generate"]
