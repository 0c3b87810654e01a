"""What every run records about where it ran: versions, device, time."""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Any

PACKAGES = ("backdoorlab", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers", "safetensors")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Package versions, Python, platform, accelerator and a UTC timestamp."""
    import torch

    return {
        "versions": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
