"""One rule for every stage's output: the same command reuses it, a different one stops and says
which settings differ, ``--overwrite`` replaces it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BackdoorLabError
from .fingerprint import canonical, fingerprint_difference, same_fingerprint


def differing_fields(stored: Any, expected: Mapping[str, Any]) -> list[str]:
    """The fields in which two fingerprints differ, one level into nested settings (``victim.rate``)."""
    fields = []
    for key in fingerprint_difference(stored, expected):
        old = canonical(stored).get(key) if isinstance(stored, Mapping) else None
        new = canonical(expected).get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            fields += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            fields.append(key)
    return fields


def check_reusable(where: str | Path, stored: Any, expected: Mapping[str, Any], what: str, replace: str) -> bool:
    """``True`` when ``where`` already holds the output ``expected`` describes (``stored`` is its
    fingerprint) and can be reused; raises naming the differing fields when it holds another.

    ``what`` names the output (``an attack run``); ``replace`` says how to replace it.
    """
    if same_fingerprint(stored, expected):
        return True
    if not isinstance(stored, Mapping):
        raise BackdoorLabError(f"{where} already exists and is not {what} with a recorded fingerprint; {replace}")
    fields = ", ".join(differing_fields(stored, expected))
    raise BackdoorLabError(f"{where} holds {what} with different settings ({fields} differ); {replace}")
