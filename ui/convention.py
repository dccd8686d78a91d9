"""The evaluation convention: where and how perplexity and KL are measured (one front per convention).

A convention is an eval set (a name the operator allowed; the browser never sends a path), a
window length and a number of windows, within the app's limits (:mod:`coalora.limits`; the CLI
takes more windows). Numbers are comparable only within one convention and eval spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coalora import limits
from coalora.errors import CoaloraError, short
from ui.inputs import check_choice, check_int

SEQLENS = limits.APP_SEQLENS
"""The window lengths the page offers and the API takes."""
MAX_WINDOWS = limits.APP_MAX_WINDOWS
"""The most windows one app evaluation takes."""
EVAL_SETS: dict[str, str] = {"shakespeare": "shakespeare"}
"""Eval set name -> corpus source: the offline held-out plays, plus the local corpora the operator
allows at start (``app.py --eval-set NAME=PATH``, :func:`add_eval_set`); the browser can only pick a name."""


@dataclass(frozen=True)
class Convention:
    """Where and how perplexity and KL are measured: one front per convention (and metric)."""

    eval_set: str
    corpus: str
    seqlen: int
    windows: int

    @property
    def label(self) -> str:
        """The convention in words, with the eval spec (shown under the front and in the selection)."""
        from coalora.evaluation.spec import DEFAULT_SPEC

        return f"{self.windows} x {self.seqlen} tokens of {self.eval_set}, {DEFAULT_SPEC}"


def add_eval_set(spec: str) -> str:
    """Allow ``NAME=PATH`` (a text file or a directory of them) as an eval set; returns the name.
    The corpus is loaded now, so a bad one fails at start, not in a user's session."""
    from coalora import data

    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise CoaloraError(f"--eval-set takes NAME=PATH, got {short(spec)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
        raise CoaloraError(f"--eval-set {short(name)}: a name is 1-40 letters, digits, '_', '.' or '-'")
    if not Path(path).expanduser().exists():
        raise CoaloraError(f"--eval-set {name}: {path} does not exist")
    data.load_corpus(str(Path(path).expanduser()), "eval")
    EVAL_SETS[name] = str(Path(path).expanduser())
    return name


def check_eval(eval_set: Any, seqlen: Any, windows: Any) -> Convention:
    """The evaluation convention: an offered eval set, an offered window length and a whole number
    of windows up to :data:`coalora.limits.APP_MAX_WINDOWS`."""
    name = check_choice(eval_set, "eval set", list(EVAL_SETS))
    try:
        s = check_int(seqlen, "tokens per window", min(SEQLENS), max(SEQLENS))
    except CoaloraError:
        s = None
    if s not in SEQLENS:
        raise CoaloraError(f"tokens per window must be one of {', '.join(map(str, SEQLENS))}, got {short(seqlen)}")
    w = check_int(windows, "windows", 1, MAX_WINDOWS)
    return Convention(name, EVAL_SETS[name], s, w)
