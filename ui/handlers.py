"""Two names under the import path ``ui.handlers``, which ``tests/test_safety.py`` uses:
:func:`ui.share.public_url` and :data:`ui.state.EXPORT_DIR` (read live from :mod:`ui.state`).

The page's events live in the modules of their panels: :mod:`ui.front_view`, :mod:`ui.selection`,
:mod:`ui.quick_eval`, :mod:`ui.sample`, :mod:`ui.bundle`, :mod:`ui.share`, :mod:`ui.panels` and
:mod:`ui.reports`; :mod:`ui.wiring` connects them to the page.
"""

from __future__ import annotations

from typing import Any

from ui import state
from ui.share import public_url

__all__ = ["public_url"]  # and EXPORT_DIR, through __getattr__


def __getattr__(name: str) -> Any:
    """``EXPORT_DIR`` as :mod:`ui.state` holds it now (a test may have swapped it)."""
    if name == "EXPORT_DIR":
        return state.EXPORT_DIR
    raise AttributeError(f"module 'ui.handlers' has no attribute {name!r}")
