"""User-facing errors.

A :class:`CoaloraError` is a mistake the user can fix (a bad flag, a malformed file, a missing
cache). The CLI and the app print its message as one line, never a traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class CoaloraError(Exception):
    """One clear message saying what was wrong and how to fix it."""
