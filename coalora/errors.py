"""User-facing errors, and how they quote what the user gave.

A :class:`CoaloraError` is a mistake the user can fix (a bad flag, a malformed file, a missing
cache). The CLI and the app print its message as one line, never a traceback; anything else is a
bug and keeps its traceback. A message that quotes a user's value quotes it through :func:`short`,
so a megabyte of input is never echoed back whole.
"""

from __future__ import annotations

import reprlib
from typing import Any

QUOTE_CHARS = 60
"""The most characters of a user's value that a message quotes (its ``repr``, cut with ``...``)."""

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS
_REPR.maxlevel = 2


class CoaloraError(Exception):
    """One clear message saying what was wrong and how to fix it."""


def short(value: Any) -> str:
    """``repr`` of a user-given value for a message: at most :data:`QUOTE_CHARS` characters, bounded
    in nesting, and ASCII-safe for control characters and lone surrogates (``repr`` escapes them)."""
    r = _REPR.repr(value)
    return r if len(r) <= QUOTE_CHARS else r[: QUOTE_CHARS - 3] + "..."
