"""Process-wide settings read from the environment, overridable in code.

- ``BACKDOORLAB_DATA_DIR``: local folder with the benchmark data (``classification/``,
  ``generative/``); the first place named datasets are looked up.
- ``BACKDOORLAB_CACHE_DIR``: where converted models are cached (default ``~/.cache/backdoorlab``).
- ``HF_HUB_OFFLINE`` / ``BACKDOORLAB_OFFLINE``: when set, the Hugging Face hub is never contacted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Settings:
    """Locations and network policy; one instance, :data:`settings`, is shared by the package."""

    data_dir: Path | None = field(default_factory=lambda: _env_path("BACKDOORLAB_DATA_DIR"))
    cache_dir: Path = field(
        default_factory=lambda: _env_path("BACKDOORLAB_CACHE_DIR")
        or Path.home() / ".cache" / "backdoorlab"
    )
    offline: bool = field(
        default_factory=lambda: _truthy(os.environ.get("BACKDOORLAB_OFFLINE"))
        or _truthy(os.environ.get("HF_HUB_OFFLINE"))
    )


settings = Settings()
