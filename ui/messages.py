"""How events speak to the user: escaped toasts, Markdown code spans and the one error wrapper.

Gradio renders toasts as HTML, so every toast goes through :func:`toast` (``&``, ``<``, ``>``
escaped): a quoted value can never become a link or a tag. :func:`user_errors` wraps every event,
so a user's mistake (:class:`~coalora.errors.CoaloraError`) is one toast with its message and
anything unexpected is logged server-side and shown as a short generic error, never a traceback in
the page.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from coalora.errors import CoaloraError

log = logging.getLogger("coalora.ui")

F = TypeVar("F", bound=Callable[..., Any])


def toast(message: str) -> str:
    """``message`` safe for a Gradio toast, which renders HTML: ``&``, ``<`` and ``>`` escaped, so a
    quoted value can never become a link or a tag."""
    return html.escape(message, quote=False)


def md_code(value: Any) -> str:
    """``value`` as a Markdown code span (shown literally: no link, no tag, no emphasis)."""
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def warn(message: str) -> None:
    """A warning toast (escaped: :func:`toast`)."""
    gr.Warning(toast(message))


def info(message: str) -> None:
    """An info toast (escaped: :func:`toast`)."""
    gr.Info(toast(message))


def user_errors(fn: F) -> F:
    """Show a CoaloraError as its (escaped) message; log anything else and show a short generic error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CoaloraError as e:
            raise gr.Error(toast(str(e)), print_exception=False) from None
        except Exception as e:  # a bug, not a user mistake: the details go to the server log only
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"internal error in {fn.__name__} ({type(e).__name__}); the server log has the details",
                           print_exception=False) from None

    return wrapper  # type: ignore[return-value]
