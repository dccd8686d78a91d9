"""What the app's HTTP server refuses before Gradio reads a request.

* **Uploads.** The page has no upload component, so ``POST .../upload`` (which would store any
  file of up to ``max_file_size`` in the app's cache, as often as a client likes) is refused.
* **Large bodies.** A request body over :data:`coalora.limits.MAX_REQUEST_BYTES` (a prompt is at
  most 2,000 characters) is refused from its ``Content-Length``; a chunked body, which has none,
  is refused too.
* **Echoed input.** A body that does not parse as the endpoint's request (FastAPI's 422) is
  answered with where and what was wrong, without FastAPI's copy of the offending input.

:func:`app_kwargs` gives ``launch(app_kwargs=...)`` both.
"""

from __future__ import annotations

import json
from typing import Any

from coalora import limits
from coalora.errors import short


def _reply(status: int, message: str):
    """An ASGI response sender: ``{"detail": message}`` as JSON with ``status``."""
    body = json.dumps({"detail": message}).encode()

    async def send_reply(send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return send_reply


class RequestGuard:
    """ASGI middleware: refuses uploads and over-large or unsized request bodies (module docstring)."""

    def __init__(self, app: Any, max_body: int = limits.MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    def refusal(self, scope: dict) -> tuple[int, str] | None:
        """(status, why) for a request to refuse, else None."""
        if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return None
        if scope.get("path", "").rstrip("/").endswith("/upload"):
            return 403, "this app takes no file uploads"
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        size = headers.get(b"content-length")
        if size is None:
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                return 411, "send the request body with a Content-Length (chunked bodies are refused)"
            return None
        if not size.strip().isdigit() or int(size) > self.max_body:
            return 413, f"request bodies are limited to {self.max_body // 1024} KiB here"
        return None

    async def __call__(self, scope, receive, send) -> None:
        no = self.refusal(scope)
        if no is not None:
            await _reply(*no)(send)
            return
        await self.app(scope, receive, send)


def _part(p: Any) -> str:
    """One step of an error location (a field name, an index or a user's dict key), cut short."""
    s = str(p)
    return s if len(s) <= 40 else s[:37] + "..."


async def _invalid_request(request, exc) -> Any:
    """FastAPI's 422 without the input it would echo: the first error's location and message."""
    from fastapi.responses import JSONResponse

    errors = exc.errors() if hasattr(exc, "errors") else []
    first = errors[0] if errors else {}
    where = ".".join(_part(p) for p in first.get("loc", ()))
    what = short(first.get("msg", "invalid request"))
    return JSONResponse({"detail": f"the request body is not what this endpoint takes ({where}: {what}); "
                                   "the API page lists each endpoint's arguments"}, status_code=422)


def app_kwargs() -> dict[str, Any]:
    """The FastAPI arguments that install :class:`RequestGuard` and the short 422 answer."""
    from fastapi.exceptions import RequestValidationError
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(RequestGuard)], "exception_handlers": {RequestValidationError: _invalid_request}}
