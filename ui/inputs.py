"""The checks every event argument goes through before any work.

The events get their arguments unprocessed, from the page or from anyone calling the API
(``preprocess=False``, :mod:`ui.wiring`), so each argument is checked here: types, finiteness,
whole numbers, ranges and offered names, with limits from :mod:`coalora.limits`. A bad value is one
:class:`~coalora.errors.CoaloraError` that quotes it shortly (:func:`coalora.errors.short`); the
evaluation convention's checks are in :mod:`ui.convention`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from coalora import limits
from coalora.errors import CoaloraError, short
from coalora.evaluation.nextline import TASK_NAME
from coalora.quant.config import MAX_BITS, MIN_BITS
from coalora.quant.config import check_budget as check_feasible
from coalora.search.front import METRICS
from ui import figures
from ui.messages import warn

GP_METHODS = ("coalora", "none")
"""Methods whose front the app fits and can extend with quick evals (the baselines are measured by
``coalora compare``: the *Methods* tab shows that comparison). The only methods the app takes."""
DEFAULT_METHODS = ["coalora", "none"]
"""The methods a fresh page shows (and a share link leaves out when they are the shown ones)."""
APP_TASK = TASK_NAME
"""The lm-eval task the app's Quick eval can score: the local one, which needs no download."""
TASK_METRICS = (f"task:{APP_TASK}/acc_norm", f"task:{APP_TASK}/acc")
"""The task front metrics the app offers besides :data:`coalora.search.front.METRICS` (error rate 1 - acc)."""
_HASH_RE = re.compile(r"^[0-9a-f]{16}$")


def check_choice(value: Any, what: str, choices: list[str] | tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices`` (text only), else one clear error quoting it shortly."""
    if isinstance(value, str) and value in choices:
        return value
    kind = "" if isinstance(value, str) else f" (a {type(value).__name__}, not text)"
    raise CoaloraError(f"unknown {what} {short(value)}{kind}; pick one of {', '.join(map(str, choices))}")


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    """``value`` as a whole number in [lo, hi]: ints, integral floats (8.0) and digit strings; never
    8.5, NaN, infinity, a boolean or a list."""
    n: int | None = None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,12}\s*", value):
        n = int(value)
    if n is None:
        raise CoaloraError(f"{what} must be a whole number in [{lo}, {hi}], got {short(value)}")
    if not lo <= n <= hi:
        raise CoaloraError(f"{what} must be in [{lo}, {hi}], got {short(n)}")
    return n


def _finite_number(value: Any) -> float | None:
    """``value`` as a finite float when it is a number or short numeric text (not a boolean), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(max(-10**6, min(value, 10**6)))  # huge ints: out of range either way, no OverflowError
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 32:
        try:
            v = float(value)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def check_budget(budget: Any) -> float:
    """The budget in average bits per weight. A finite number outside the feasible range
    [:data:`~coalora.quant.config.MIN_BITS`, :data:`~coalora.quant.config.MAX_BITS`] is clamped
    into it with a warning, onto the budget box's 0.001 grid (2.033 below, 8.625 above), so the box
    shows exactly the value used. Everything else (text that is no number, NaN, infinities,
    booleans, lists) is refused by :func:`coalora.quant.config.check_budget`, the one budget check."""
    b = _finite_number(budget)
    if b is not None and not MIN_BITS <= b <= MAX_BITS:
        c = math.ceil(MIN_BITS * 1000) / 1000 if b < MIN_BITS else math.floor(MAX_BITS * 1000) / 1000
        warn(f"{b:.3f} bits is outside the feasible range [{MIN_BITS:.3f}, {MAX_BITS:.3f}]; using {c:.3f}")
        return c
    return check_feasible(budget if b is None else b)


def check_hash(config_hash: Any) -> str:
    """A configuration hash (16 hex digits, any case), or one clear error."""
    if config_hash is None or config_hash == "":
        raise CoaloraError("no configuration selected: click a point on the front or a row of the table")
    h = config_hash.strip().lower() if isinstance(config_hash, str) else None
    if not h or not _HASH_RE.match(h):
        raise CoaloraError(f"{short(config_hash)} is not a configuration hash (16 hex digits)")
    return h


def check_prompt(prompt: Any) -> str:
    """A prompt to continue: non-empty text of at most :data:`coalora.limits.MAX_PROMPT_CHARS`
    characters, all of them encodable (no lone surrogates)."""
    if not isinstance(prompt, str):
        raise CoaloraError(f"prompt must be text, got {short(prompt)}")
    if not prompt.strip():
        raise CoaloraError("prompt is empty; type a few words to continue")
    if len(prompt) > limits.MAX_PROMPT_CHARS:
        raise CoaloraError(f"prompt has {len(prompt)} characters; the limit is {limits.MAX_PROMPT_CHARS}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CoaloraError(f"prompt has a character that is not text (a lone surrogate at position {e.start}); "
                           "remove it") from None
    return prompt


def check_metric(metric: Any) -> str:
    """The front's metric: ``ppl``, ``kld`` or one of :data:`TASK_METRICS`, or one clear error."""
    offered = (*METRICS, *TASK_METRICS)
    if isinstance(metric, str) and metric in offered:
        return metric
    raise CoaloraError(f"unknown front metric {short(metric)}; use ppl (perplexity), kld (KL divergence to the "
                       f"unquantized model) or {' or '.join(TASK_METRICS)} (next-line accuracy)")


def check_task_docs(docs: Any) -> int:
    """How many documents of :data:`APP_TASK` Quick eval scores (0: none), or one clear error."""
    return check_int(docs, "lm-eval task documents", 0, limits.APP_MAX_TASK_DOCS)


def check_method(method: Any) -> str:
    """One method the app fits (:data:`GP_METHODS`); a baseline's name gets where its results are."""
    if isinstance(method, str) and method in figures.METHODS and method not in GP_METHODS:
        raise CoaloraError(f"the app fits fronts for {' and '.join(GP_METHODS)}; {method} is measured by the protocol "
                           "comparison (`coalora compare`, Methods tab)")
    return check_choice(method, "method", GP_METHODS)


def check_methods(methods: Any) -> list[str]:
    """The shown methods: a list (or one name) of :data:`GP_METHODS`, duplicates dropped."""
    if methods is None:
        return []
    ms = [methods] if isinstance(methods, str) else methods
    if not isinstance(ms, (list, tuple)) or len(ms) > limits.MAX_METHODS:
        raise CoaloraError(f"methods must be a list of up to {limits.MAX_METHODS} of {', '.join(GP_METHODS)}, "
                           f"got {short(methods)}")
    for m in ms:
        check_method(m)
    return list(dict.fromkeys(ms))
