"""Share links: the page's address with its view in the query, and restoring that view on page load.

A link carries the model, budget and selected configuration, and, where they differ from a fresh
page's defaults, the eval set, methods, window length and count and the pinned comparison. The
address is :data:`PUBLIC_URL`, set once at start from the operator's configuration
(:func:`public_url`), never from a request header, which a client can set to anything. Opening a
link (:func:`on_load`) checks every query parameter like any other argument; a bad one gets a
warning and its default, never an error.
"""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlencode, urlsplit, urlunsplit

import gradio as gr

from coalora import limits
from coalora.errors import CoaloraError, short
from ui import compare, convention, state
from ui.convention import check_eval
from ui.inputs import DEFAULT_METHODS, check_budget, check_choice, check_hash, check_methods
from ui.messages import user_errors, warn

PUBLIC_URL = "http://127.0.0.1:7860/"
"""The page's address in share links (:func:`set_public_url` at start)."""
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")


def public_url(configured: str | None, host: str, port: int) -> str:
    """The page's public address for share links: ``configured`` (``--public-url`` /
    ``$COALORA_PUBLIC_URL``), else a Hugging Face Space's own ``https://$SPACE_HOST/``, else the host
    and port the app serves on (this machine's name for a wildcard bind)."""
    if configured:
        u = urlsplit(configured.strip())
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment or not _HOST_RE.match(u.netloc):
            raise CoaloraError(f"--public-url must be an http(s) address like https://example.org/coalora/, "
                               f"got {short(configured)}")
        return urlunsplit((u.scheme, u.netloc, u.path.rstrip("/") + "/", "", ""))
    space = os.environ.get("SPACE_HOST", "").strip()
    if space:
        if not _HOST_RE.match(space):
            raise CoaloraError(f"$SPACE_HOST is not a host name: {short(space)}")
        return f"https://{space}/"
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname() or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{int(port)}/"


def set_public_url(url: str) -> None:
    """Use ``url`` (from :func:`public_url`) in every share link from now on."""
    global PUBLIC_URL
    PUBLIC_URL = url


def share_link(model: str, budget: float, config_hash: str, eval_set: str = "shakespeare",
               methods: list[str] | None = None, seqlen: int = 256, windows: int = 8, pin: str = "") -> str:
    """:data:`PUBLIC_URL` with ``?model=&budget=&config=`` and, where they differ from the page's
    defaults, ``eval_set``, ``methods`` (comma-separated; empty for none), ``seqlen``, ``windows``,
    and the pinned comparison ``pin``: opening it restores the view exactly (:func:`on_load`)."""
    q = {"model": model, "budget": f"{budget:.2f}"}
    if eval_set != "shakespeare":
        q["eval_set"] = eval_set
    if methods is not None and list(methods) != DEFAULT_METHODS:
        q["methods"] = ",".join(methods)
    if seqlen != 256:
        q["seqlen"] = str(seqlen)
    if windows != 8:
        q["windows"] = str(windows)
    if config_hash:
        q["config"] = config_hash
    if pin:
        q["pin"] = pin
    return f"{PUBLIC_URL}?{urlencode(q)}"


def link_hash(qp: dict, name: str) -> str:
    """A share link's configuration hash parameter ``name`` ("" when absent or bad, with a warning)."""
    if not qp.get(name):
        return ""
    try:
        return check_hash(qp[name])
    except CoaloraError as e:
        warn(f"{name}: {e}")
        return ""


def link_view(qp: dict) -> tuple[list[str], int, int]:
    """A share link's methods, window length and count (each bad one: a warning and its default)."""
    methods, seqlen, windows = list(DEFAULT_METHODS), 256, 8
    if "methods" in qp:
        try:
            methods = check_methods([m for m in str(qp["methods"]).split(",") if m][:limits.MAX_METHODS + 1])
        except CoaloraError as e:
            warn(f"{e}; showing {', '.join(DEFAULT_METHODS)}")
    if "seqlen" in qp or "windows" in qp:
        try:
            cv = check_eval("shakespeare", qp.get("seqlen", 256), qp.get("windows", 8))
            seqlen, windows = cv.seqlen, cv.windows
        except CoaloraError as e:
            warn(f"{e}; using 8 x 256 tokens")
    return methods, seqlen, windows


@user_errors
def on_load(default_model: str, request: gr.Request = None) -> tuple[str, str, float, str, list[str], int, int]:
    """Restore a shared link's state: outputs (model, eval set, budget, selected hash, methods, window
    length, windows); the link's pin becomes the session's pinned comparison."""
    qp = dict(request.query_params) if request is not None else {}
    model = default_model
    if "model" in qp:
        try:
            model = state.MODELS.check(qp["model"])
        except CoaloraError as e:
            warn(f"{e}; showing {default_model}")
    eval_set = "shakespeare"
    if "eval_set" in qp:
        try:
            eval_set = check_choice(qp["eval_set"], "eval set", list(convention.EVAL_SETS))
        except CoaloraError as e:
            warn(f"{e}; showing shakespeare")
    budget = 4.0
    if "budget" in qp:
        try:
            budget = check_budget(qp["budget"])
        except CoaloraError as e:
            warn(f"{e}; using 4.0")
    h, pin = link_hash(qp, "config"), link_hash(qp, "pin")
    compare.PINS.set(compare.session_of(request), pin)
    methods, seqlen, windows = link_view(qp)
    return model, eval_set, budget, h, methods, seqlen, windows
