"""Audit a model you did not train: is it backdoored, toward which label, with which trigger."""

from .run import SCAN_FILE, scan_model, verdict
from .settings import ScanSettings

__all__ = ["SCAN_FILE", "ScanSettings", "scan_model", "verdict"]
