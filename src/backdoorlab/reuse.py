"""One rule for every stage's output: the same command reuses it, a different one stops and says
which settings differ, ``--overwrite`` replaces it.

Two shapes of output follow it: a result file that holds its own fingerprint (an evaluation, an
analysis step: :func:`read_reusable`) and a folder that a stage fills over time (a training run, a
defense run, a zoo victim: :func:`claim_folder`, which marks the folder with the fingerprint in
:data:`FOLDER_FINGERPRINT` before any work, so an interrupted run resumes into it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BackdoorLabError
from .fileio import read_json, write_json_atomic
from .fingerprint import FINGERPRINT_KEY, canonical, fingerprint_difference, same_fingerprint

#: The file that says which work a stage's output folder holds.
FOLDER_FINGERPRINT = ".fingerprint.json"
#: How to replace an output, for the command-line stages.
REPLACE = "pass --overwrite to replace it, or choose another output folder"


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


def read_reusable(path: str | Path, expected: Mapping[str, Any], what: str, replace: str = REPLACE) -> dict[str, Any] | None:
    """The result stored at ``path`` (a JSON object whose ``fingerprint`` is ``expected``), ``None``
    when there is none, and an error naming the differing settings when it holds another result."""
    path = Path(path)
    if not path.is_file():
        return None
    stored = read_json(path)
    check_reusable(path, stored.get(FINGERPRINT_KEY) if isinstance(stored, dict) else None, expected, what, replace)
    return stored  # type: ignore[return-value]


def claim_folder(folder: str | Path, expected: Mapping[str, Any], what: str, replace: str = REPLACE) -> None:
    """Claim ``folder`` for the work ``expected`` describes, or stop if it holds other work.

    A missing or empty folder is claimed (its :data:`FOLDER_FINGERPRINT` written); one claimed for
    the same work is resumed; one claimed for other work, or holding files of no recorded work,
    raises naming the differing settings, since continuing would mix or discard earlier results.
    """
    folder = Path(folder)
    marker = folder / FOLDER_FINGERPRINT
    if marker.is_file():
        check_reusable(folder, read_json(marker), expected, what, replace)
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise BackdoorLabError(f"{folder} already holds files that are not from {what}; {replace}")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, dict(expected))


def claimed_fingerprint(folder: str | Path) -> dict[str, Any] | None:
    """The fingerprint ``folder`` was claimed with (:func:`claim_folder`), if any."""
    return read_json(Path(folder) / FOLDER_FINGERPRINT)
