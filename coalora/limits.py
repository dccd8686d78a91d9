"""The limits on one request, in one place: the app's page controls, its API checks, the explorer
and the README all read these, so the page and the API never disagree.

The CLI and the Python API evaluate on up to :data:`MAX_WINDOWS` windows; the app, which anyone
may call when it is public, on up to :data:`APP_MAX_WINDOWS` (a quick eval stays seconds long).
"""

from __future__ import annotations

MAX_WINDOWS = 4096
"""The most evaluation windows one CLI or Python API evaluation may ask for (1M tokens at seqlen 256)."""
APP_MAX_WINDOWS = 32
"""The most evaluation windows the app's page and API take."""
APP_SEQLENS: tuple[int, ...] = (128, 256, 512)
"""Tokens per window the app's page and API offer."""
APP_MAX_TASK_DOCS = 400
"""The most lm-eval documents one app Quick eval scores: every item of the local task
``shakespeare_nextline`` (:mod:`coalora.evaluation.nextline`)."""
MAX_PROMPT_CHARS = 2000
"""The longest prompt ``sample`` continues (page and API)."""
MAX_NEW_TOKENS = 64
"""The most new tokens ``sample`` generates (page and API)."""
MAX_REQUEST_BYTES = 64 * 2**10
"""The largest HTTP request body the app reads (a 2,000-character prompt is at most ~12 KiB as JSON)."""
MAX_METHODS = 8
"""The longest method list the app takes (it offers two; duplicates are dropped)."""
EXPORT_CAP_BYTES = 2 * 2**30
"""The most disk the app's exports and Gradio's cache may use together (least recently used evicted)."""
EXPORT_KEEP_S = 3600
"""Exports (and Gradio's cached files) older than this are deleted."""
CACHE_SWEEP_S = 600
"""How often Gradio sweeps its cache for files older than :data:`EXPORT_KEEP_S`."""
