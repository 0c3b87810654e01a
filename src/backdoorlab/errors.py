"""User-facing error type.

Every problem caused by the user's input (unknown names, malformed files, impossible settings)
raises :class:`BackdoorLabError` with a message that says what was wrong and what to do. The CLI
prints such messages on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class BackdoorLabError(Exception):
    """An error in the user's input or environment, with an actionable message."""


class MethodFoundNothing(BackdoorLabError):
    """A method ran as asked and found no answer (no target label, no usable trigger).

    A benchmark counts it as the method's failure on that model; any other error is the run's own
    and leaves the cell to be run again.
    """


def unknown_name(kind: str, name: str, known: Iterable[str]) -> BackdoorLabError:
    """Build the error for an unknown registry name, listing the names that exist."""
    listed = ", ".join(sorted(known)) or "(none registered)"
    return BackdoorLabError(f"unknown {kind} {name!r}; known {kind}s: {listed}")
