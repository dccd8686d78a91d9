"""Plain functions behind the app's events (testable without a browser).

Each takes the controls' values and returns the outputs' values; all computing is done by
:class:`coalora.explorer.Explorer` (one per model, loaded once and kept). User mistakes surface as
one ``gr.Error`` toast, never a traceback in the page: :func:`user_errors` turns
:class:`~coalora.errors.CoaloraError` into its message and logs anything unexpected server-side.

The events get their arguments unprocessed, from the page or from anyone calling the API, so every
argument goes through one of the ``check_*`` functions before any work (types, finiteness, whole
numbers, ranges, offered names; limits from :mod:`coalora.limits`), and every toast is
HTML-escaped (:func:`toast`): Gradio renders toasts as HTML.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import gradio as gr

from coalora import limits
from coalora.errors import CoaloraError, short
from ui import compare, downloads, exports, figures, predictions

log = logging.getLogger("coalora.ui")

GP_METHODS = ("coalora", "none")
"""Methods whose front the app fits and can extend with quick evals (the baselines are measured by
``coalora compare``: the *Methods* tab shows that comparison). The only methods the app takes."""
METHOD_CHOICES = [(label, key) for key, (label, _) in figures.METHODS.items() if key in GP_METHODS]
"""The method filter: (label, key)."""
METRIC_CHOICES = [("Perplexity", "ppl"), ("KL divergence to the unquantized model", "kld")]
"""The front's y axis: (label, :data:`coalora.search.front.METRICS` key)."""
DEFAULT_METHODS = ["coalora", "none"]
SEQLENS = limits.APP_SEQLENS
MAX_WINDOWS = limits.APP_MAX_WINDOWS
BUDGET_RANGE = (2.0, 8.625)
"""The budget slider; values below the cheapest configuration (2.032 bits) are clamped to it."""
EXPORT_DIR = Path(gr.utils.get_upload_folder()) / "coalora-exports"
"""The only directory the app serves downloads from besides Gradio's own cache (app.py points it
inside this process's scratch directory, :mod:`ui.scratch`)."""
PUBLIC_URL = "http://127.0.0.1:7860/"
"""The page's address in share links (:func:`public_url`; app.py sets it at start, never a request header)."""
_HASH_RE = re.compile(r"^[0-9a-f]{16}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")


# ---- messages


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


def user_errors(fn):
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

    return wrapper


# ---- models


class Models:
    """The models the app offers: registry entries only (never a path from the browser), and of the
    test models only the one the operator started the app with (:attr:`default`)."""

    def __init__(self, default: str | None = None) -> None:
        self._explorers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.store = None
        """A shared :class:`coalora.store.Store` (None: each explorer opens the default one)."""
        self.default = default
        """The app's model (build_app sets it): offered even when it is a test model."""

    def allowed(self) -> list[str]:
        """The names the page lists and the API takes: every non-test registry model, plus :attr:`default`."""
        from coalora.models import REGISTRY

        return [name for name, spec in REGISTRY.items() if spec.source != "tiny" or name == self.default]

    def choices(self, default: str | None = None) -> list[tuple[str, str]]:
        """Dropdown entries: :meth:`allowed` (with ``default`` offered too), marked by adapter; hub
        models only where they can load (:func:`hub_unavailable`): the page cannot fetch one."""
        from coalora.explorer import default_adapter
        from coalora.models import REGISTRY

        out = []
        for name, spec in REGISTRY.items():
            if spec.source == "tiny" and name not in (default, self.default):
                continue
            if spec.source == "hub" and name not in (default, self.default) and hub_unavailable(spec):
                continue
            tag = "trained CoA-LoRA" if default_adapter(name) else "quantization only"
            hub = ", needs the hub" if spec.source == "hub" else ""
            out.append((f"{name} ({tag}{hub})", name))
        return out

    def check(self, name: Any) -> str:
        """``name`` if the app offers it, else one clear error (nothing is loaded)."""
        return check_choice(name, "model", self.allowed())

    def get(self, name: Any):
        """The loaded explorer of ``name`` (loads it on first use)."""
        from coalora.explorer import Explorer

        name = self.check(name)
        with self._lock:  # one load per model even when several sessions ask at once
            if name not in self._explorers:
                if self.store is None:
                    from coalora.store import Store

                    self.store = Store()
                self._explorers[name] = Explorer(name, store=self.store)
            return self._explorers[name]


MODELS = Models()


def hub_unavailable(spec) -> str:
    """Why a hub model cannot load in this process ("" when it can): offline (``HF_HUB_OFFLINE``)
    and not in the local hub cache."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True", "YES", "yes"):
        return ""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec.hub_id or spec.name, "config.json")
    except Exception:  # a malformed cache: treat as absent
        hit = None
    return "" if isinstance(hit, str) else "the hub is offline here and the model is not in the local cache"


# ---- inputs: every argument of every event and endpoint goes through one of these


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


def check_budget(budget: Any) -> float:
    """The budget, clamped into the feasible range with a warning (NaN, text, lists: an error): to
    2.033 below it (the cheapest configuration is 2.0322), to 8.625 above it."""
    from coalora.quant.config import MAX_BITS, MIN_BITS

    b = None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        b = float(budget)
    elif isinstance(budget, str) and len(budget) <= 32:
        try:
            b = float(budget)
        except ValueError:
            b = None
    if b is None:
        raise CoaloraError(f"budget must be a number of bits per weight, got {short(budget)}")
    if not math.isfinite(b):
        raise CoaloraError(f"budget must be a finite number of bits, got {short(budget)}")
    if b < MIN_BITS or b > MAX_BITS:
        # onto the budget box's 0.001 grid, inside the range: the box shows exactly the value used
        c = math.ceil(MIN_BITS * 1000) / 1000 if b < MIN_BITS else math.floor(MAX_BITS * 1000) / 1000
        warn(f"{b:.3f} bits is outside the feasible range [{MIN_BITS:.3f}, {MAX_BITS:.3f}]; using {c:.3f}")
        return c
    return b


def check_hash(config_hash: Any) -> str:
    """A configuration hash (16 hex digits, any case), or one clear error."""
    if config_hash is None or config_hash == "":
        raise CoaloraError("no configuration selected: click a point on the front or a row of the table")
    h = config_hash.strip().lower() if isinstance(config_hash, str) else None
    if not h:
        raise CoaloraError(f"{short(config_hash)} is not a configuration hash (16 hex digits)")
    if not _HASH_RE.match(h):
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


EVAL_SETS: dict[str, str] = {"shakespeare": "shakespeare"}
"""Eval set name -> corpus source: the offline held-out plays, plus the local corpora the operator
allows at start (``app.py --eval-set NAME=PATH``); the browser can only pick a name."""


@dataclass(frozen=True)
class Convention:
    """Where and how perplexity and KL are measured: one front per convention (and metric)."""

    eval_set: str
    corpus: str
    seqlen: int
    windows: int

    @property
    def label(self) -> str:
        from coalora.evaluation.spec import DEFAULT_SPEC

        return f"{self.windows} x {self.seqlen} tokens of {self.eval_set}, {DEFAULT_SPEC}"


def add_eval_set(spec: str) -> str:
    """Allow ``NAME=PATH`` (a text file or a directory of them) as an eval set; returns the name."""
    from coalora import data

    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise CoaloraError(f"--eval-set takes NAME=PATH, got {short(spec)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
        raise CoaloraError(f"--eval-set {short(name)}: a name is 1-40 letters, digits, '_', '.' or '-'")
    if not Path(path).expanduser().exists():
        raise CoaloraError(f"--eval-set {name}: {path} does not exist")
    data.load_corpus(str(Path(path).expanduser()), "eval")  # fails now, not in a user's session
    EVAL_SETS[name] = str(Path(path).expanduser())
    return name


def check_eval(eval_set: Any, seqlen: Any, windows: Any) -> Convention:
    """The evaluation convention: an offered eval set, an offered window length and a whole number
    of windows up to :data:`coalora.limits.APP_MAX_WINDOWS` (the CLI takes more)."""
    name = check_choice(eval_set, "eval set", list(EVAL_SETS))
    try:
        s = check_int(seqlen, "tokens per window", min(SEQLENS), max(SEQLENS))
    except CoaloraError:
        s = None
    if s not in SEQLENS:
        raise CoaloraError(f"tokens per window must be one of {', '.join(map(str, SEQLENS))}, got {short(seqlen)}")
    w = check_int(windows, "windows", 1, MAX_WINDOWS)
    return Convention(name, EVAL_SETS[name], s, w)


def check_metric(metric: Any) -> str:
    """The front's metric (``ppl`` or ``kld``), or one clear error."""
    from coalora.search.front import check_metric as check

    if not isinstance(metric, str):
        raise CoaloraError(f"unknown front metric {short(metric)}; use ppl (perplexity) or kld (KL divergence to "
                           "the unquantized model)")
    return check(metric)


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


def check_method(method: Any) -> str:
    """One method the app fits (:data:`GP_METHODS`); a baseline's name gets where its results are."""
    if isinstance(method, str) and method in figures.METHODS and method not in GP_METHODS:
        raise CoaloraError(f"the app fits fronts for {' and '.join(GP_METHODS)}; {method} is measured by the protocol "
                           "comparison (`coalora compare`, Methods tab)")
    return check_choice(method, "method", GP_METHODS)


def primary_method(ex, methods: list[str]) -> str:
    """The method whose front carries the selection: CoA-LoRA when shown and trained, else no adapter."""
    return "coalora" if "coalora" in methods and "coalora" in ex.methods else "none"


# ---- the front


class _FrontCache:
    """The last fronts per query, so a selection redraws the figure without refitting."""

    def __init__(self, ttl: float = 120.0) -> None:
        self.ttl = ttl
        self._d: dict[tuple, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> dict | None:
        with self._lock:
            hit = self._d.get(key)
            return hit[1] if hit and time.monotonic() - hit[0] < self.ttl else None

    def put(self, key: tuple, fronts: dict) -> None:
        with self._lock:
            if len(self._d) > 64:
                self._d.clear()
            self._d[key] = (time.monotonic(), fronts)

    def drop(self, model: str) -> None:
        with self._lock:
            for k in [k for k in self._d if k[0] == model]:
                del self._d[k]


FRONTS = _FrontCache()


def fronts(model: str, budget: float, methods: list[str], cv: Convention, fresh: bool = False,
           metric: str = "ppl") -> dict:
    """method -> FrontResult for the shown GP methods on ``metric`` (cached for selections)."""
    key = (model, round(budget, 4), tuple(methods), cv, metric)
    hit = None if fresh else FRONTS.get(key)
    if hit is not None:
        return hit
    ex = MODELS.get(model)
    out = {m: ex.front(m, budget, cv.seqlen, cv.windows, cv.corpus, metric) for m in GP_METHODS
           if m in methods and m in ex.methods}
    FRONTS.put(key, out)
    return out


def _front_md(fr: dict, budget: float, metric: str = "ppl") -> str:
    if not fr:
        return "No GP front for the selected methods (tick CoA-LoRA or no adapter)."
    name, f = figures.metric_name(metric), figures.metric_format(metric)
    lines = []
    for m, r in fr.items():
        label = figures.method_label(m)
        if r.refit.startswith("none"):
            what = "" if metric == "ppl" else " with a KL"
            lines.append(f"**{label}**: {len(r.measured)} measured{what}; no GP yet "
                         f"({r.refit.removeprefix('none: ')}). Select configurations and run Quick eval to build one.")
            continue
        lines.append(f"**{label}**: {len(r.measured)} measured, predicted front of {len(r.front)} points over "
                     f"{r.n_candidates:,} candidates; {hypervolume_text(r)}; fit {r.refit}, {r.seconds:.2f} s.")
        if r.best is not None:
            b = r.best
            meas = f", measured {b.ppl:{f}}" if b.ppl is not None else ""
            lines.append(f"  Best within {budget:.2f} bits: `{b.config_hash}` at {b.avg_bits:.3f} bits, predicted "
                         f"{name} {b.pred_ppl:{f}} [{b.pred_lo:{f}}, {b.pred_hi:{f}}]{meas}.")
        elif r.front:
            cheapest = min(p.avg_bits for p in r.front)
            lines.append(f"  No candidate fits within {budget:.2f} bits: the cheapest on this front has "
                         f"{cheapest:.3f} bits. Raise the budget to at least that.")
    return "\n\n".join(lines)


TABLE_HEADERS = ["config", "method", "avg bits", "predicted", "-2 sigma", "+2 sigma", "measured", "source"]
"""The front table's columns; "predicted" and "measured" are of the shown metric (ppl or KL)."""


def _table(fr: dict) -> list[list]:
    rows = []
    for m, r in fr.items():
        d = 3 if r.metric == "ppl" else 5
        for p in r.front:
            rows.append([p.config_hash, m, round(p.avg_bits, 4), _r(p.pred_ppl, d), _r(p.pred_lo, d), _r(p.pred_hi, d),
                         _r(p.ppl, d), p.source])
    rows.sort(key=lambda r: (r[1], r[2]))
    return rows


def _r(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _best(fr: dict, methods: list[str], ex) -> Any:
    r = fr.get(primary_method(ex, methods))
    return None if r is None else r.best


def hypervolume_text(r) -> str:
    """A front's hypervolumes in the one definition used everywhere (:func:`coalora.search.pareto.normalised_hv`)."""
    from coalora.search.pareto import HV_DEFINITION, normalised_hv

    ref = r.hv_reference
    hv = r.hypervolume
    pred = normalised_hv(hv["predicted"], ref["bits"], r.metric) if "predicted" in hv else None
    return (f"hypervolume measured {normalised_hv(hv['measured'], ref['bits'], r.metric):.4f}"
            + (f", predicted {pred:.4f}" if pred is not None else "") + f" ({HV_DEFINITION[r.metric]})")


_SIZES: dict[str, figures.Sizes] = {}


def sizes(model: str) -> figures.Sizes:
    """The model's size in MB against average bits (:class:`ui.figures.Sizes`), computed once."""
    if model not in _SIZES:
        ex = MODELS.get(model)
        q = sum(t.numel for t in ex.targets)
        total = sum(p.numel() for p in ex.model.parameters())
        _SIZES[model] = figures.Sizes(per_bit=q / 8 / 1e6, offset=(total - q) * 2 / 1e6)
    return _SIZES[model]


def _figure(model: str, fr: dict, budget: float, methods: list[str], cv: Convention,
            selected: tuple[str, float, float] | None = None, metric: str = "ppl",
            pinned: tuple[str, float, float] | None = None):
    ex = MODELS.get(model)
    priors = {m: predictions.priors(ex, m, cv, metric) for m in fr}
    return figures.front_figure(fr, budget, _best(fr, methods, ex), selected, cv.label, metric, sizes=sizes(model),
                                pinned=pinned, priors=priors, best_method=primary_method(ex, methods))


@user_errors
def refresh_budget(model: str, eval_set: str, budget: Any, methods: list[str], seqlen: int, windows: int,
                   metric: str = "ppl", selected: str = "", request: gr.Request = None):
    """The budget box's event: outputs (budget, front figure, table rows, front summary). ``budget``
    None is a keystroke superseded by a later one (the page's debounce, :func:`ui.bridge.debounce_js`):
    nothing changes. A budget outside the feasible range is clamped with a warning and the box is set
    to the clamped value, so box, line and summary agree."""
    if budget is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    b = check_budget(budget)
    shown = gr.skip()
    try:
        typed = float(budget)
    except (TypeError, ValueError):
        typed = b
    if typed != b:
        shown = b
    return (shown, *refresh_front(model, eval_set, b, methods, seqlen, windows, metric, selected, request))


@user_errors
def refresh_front(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                  metric: str = "ppl", selected: str = "", request: gr.Request = None):
    """Outputs: (front figure, table rows, front summary markdown); the selection and the
    session's pinned configuration ringed."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(selected) if selected else ""
    fr = fronts(model, b, ms, cv, metric=mt)
    sel = _selected_point(model, h, ms, cv, mt) if h else None
    pin = compare.PINS.get(compare.session_of(request))
    pinned = _selected_point(model, pin, ms, cv, mt) if pin else None
    return _figure(model, fr, b, ms, cv, sel, mt, pinned), _table(fr), _front_md(fr, b, mt)


def _selected_point(model: str, h: str, methods: list[str], cv: Convention, metric: str = "ppl"):
    ex = MODELS.get(model)
    try:
        cfg = ex.config(h)
    except CoaloraError:
        return None
    ev, p = _measured(ex, cfg, primary_method(ex, methods), cv, metric)
    return _marker(cfg, _value(ev, metric), None if p is None else p.pred_ppl)


def _measured(ex, cfg, method: str, cv: Convention, metric: str = "ppl") -> tuple[Any, Any]:
    """(the stored Evaluation or None, the ``metric`` GP's FrontPoint prediction or None) of ``cfg``."""
    ev = ex.cached(cfg, method, cv.seqlen, cv.windows, cv.corpus)
    p = ex.front_service().predict(ex.query(method, cv.seqlen, cv.windows, cv.corpus, metric), cfg)
    return ev, p


def _value(ev, metric: str) -> float | None:
    """An evaluation's value of ``metric`` (None: not stored, or no KL measured)."""
    if ev is None:
        return None
    return ev.ppl if metric == "ppl" else ev.kld


def _marker(cfg, measured: float | None, predicted: float | None) -> tuple[str, float, float] | None:
    """The selection ring (hash, bits, value on the shown axis): at the measured value, else the predicted one."""
    y = measured if measured is not None else predicted
    return None if y is None else (cfg.hash, cfg.avg_bits, y)


# ---- selection


def public_url(configured: str | None, host: str, port: int) -> str:
    """The page's public address for share links: ``configured`` (``--public-url`` /
    ``$COALORA_PUBLIC_URL``), else a Hugging Face Space's own ``https://$SPACE_HOST/``, else the host
    and port the app serves on (this machine's name for a wildcard bind). Never a request header,
    which a client can set to anything."""
    import os
    import socket

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


def describe_selection(model: str, cfg, methods: list[str], cv: Convention, metric: str = "ppl") -> dict:
    """Everything the selection panel shows about ``cfg``, as plain values (also the ``select`` API's JSON).

    The perplexity GP's prediction is always there; the KL GP's only while the KL front is shown
    (``metric="kld"``), so a selection on the perplexity front fits one GP, not two.
    """
    ex = MODELS.get(model)
    m = primary_method(ex, methods)
    ms = None
    if ex.coa is not None and m == "coalora":
        _, ms = ex.generate(cfg)
    ev, p = _measured(ex, cfg, m, cv)
    pp = _kept(ex, cfg, m, cv, "ppl", ev, p)
    kk = _kept(ex, cfg, m, cv, "kld", ev, _measured(ex, cfg, m, cv, "kld")[1]) if metric == "kld" else None
    return {
        "model": model, "config_hash": cfg.hash, "avg_bits": cfg.avg_bits, "method": m,
        "size_mb": sizes(model).mb(cfg.avg_bits),
        "adapter_ms": ms if m == "coalora" else None, "adapter_id": ex.adapter_id or None,
        "predicted_ppl": None if pp is None else pp[0], "predicted_band": None if pp is None else [pp[1], pp[2]],
        "predicted_how": None if pp is None else pp[3],
        "measured_ppl": _value(ev, "ppl"), "measured_kld": _value(ev, "kld"),
        "predicted_kld": None if kk is None else kk[0],
        "predicted_kld_band": None if kk is None else [kk[1], kk[2]],
        "metric": metric, "convention": cv.label, "eval_spec": ex.eval_spec,
        "matrices": len(cfg.targets),
    }


def _kept(ex, cfg, method: str, cv: Convention, metric: str, ev, p) -> figures.Prior | None:
    """The prediction shown for ``cfg``: for a measured one the one made without its measurement
    (:mod:`ui.predictions`), for an unmeasured one the GP's; None without a GP."""
    if ev is not None and _value(ev, metric) is not None:
        kept = predictions.prior_of(ex, cfg, method, cv, metric)
        if kept is not None:
            return kept
        return None
    return None if p is None else (p.pred_ppl, p.pred_lo, p.pred_hi, "GP posterior")


def _selection_md(d: dict) -> tuple[str, str]:
    if d["adapter_ms"] is not None:
        t = (f"Adapter for `{d['config_hash']}` generated in **{d['adapter_ms']:.1f} ms** "
             f"({d['matrices']} LoRA pairs, theta run once over all layers).")
    elif d["adapter_id"]:
        t = f"`{d['config_hash']}` without an adapter (method: no adapter; tick CoA-LoRA to generate its adapter)."
    else:
        t = f"`{d['config_hash']}`: {d['model']} has no trained CoA-LoRA adapter here (quantization only)."
    how = f", {d['predicted_how']}" if d.get("predicted_how") else ""
    pred = "no GP yet" if d["predicted_ppl"] is None else \
        f"{d['predicted_ppl']:.2f} (+-2 sigma: {d['predicted_band'][0]:.2f} .. {d['predicted_band'][1]:.2f}{how})"
    meas = "not measured yet (Quick eval)" if d["measured_ppl"] is None else f"**{d['measured_ppl']:.3f}**"
    if d["measured_kld"] is not None:
        meas += f", KL to the unquantized model **{d['measured_kld']:.4f}** nats/token"
    elif d["measured_ppl"] is not None:
        meas += " (no KL measured)"
    kl = ""
    if d.get("predicted_kld") is not None:
        lo, hi = d["predicted_kld_band"]
        kl = f"\n- predicted KL: {d['predicted_kld']:.4f} nats/token (+-2 sigma: {lo:.4f} .. {hi:.4f})"
    s = (f"**Configuration** `{d['config_hash']}` of {d['model']}, **{d['avg_bits']:.3f}** average bits, "
         f"{d['size_mb']:.1f} MB\n\n"
         f"- method: {figures.method_label(d['method'])}\n- predicted ppl: {pred}{kl}\n- measured ppl: {meas} "
         f"({d['convention']})")
    return s, t


@user_errors
def select(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
           metric: str = "ppl", request: gr.Request = None):
    """Outputs: (selected hash, summary md, adapter-time md, heatmap, details JSON, front figure, share
    link, per-layer table rows, comparison md, comparison figure). The comparison is against the
    session's pinned configuration (:mod:`ui.compare`), when there is one."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = MODELS.get(model)
    cfg = ex.config(h)
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, adapter = _selection_md(d)
    marker = _marker(cfg, d[f"measured_{mt}"], d[f"predicted_{mt}"])
    pin = compare.PINS.get(compare.session_of(request))
    pinned = _selected_point(model, pin, ms, cv, mt) if pin else None
    fig = _figure(model, fronts(model, b, ms, cv, metric=mt), b, ms, cv, marker, mt, pinned)
    cmp_md, cmp_fig = comparison_of(model, pin, cfg, ms, cv)
    return (cfg.hash, summary, adapter, figures.heatmap_figure(cfg), d, fig,
            share_link(model, b, cfg.hash, cv.eval_set, ms, cv.seqlen, cv.windows, pin),
            downloads.as_rows(downloads.layer_table(ex, cfg)), cmp_md, cmp_fig)


NO_PIN = "Pin a selection (*Pin for comparison*), then select another configuration to compare the two."


def comparison_of(model: str, pin: str, cfg, methods: list[str], cv: Convention) -> tuple[str, Any]:
    """(comparison md, bits-per-layer difference figure) of the pinned ``pin`` (A) and ``cfg`` (B)."""
    if not pin:
        return NO_PIN, None
    ex = MODELS.get(model)
    try:
        a_cfg = ex.config(pin)
    except CoaloraError:
        return f"The pinned configuration {md_code(pin)} is not one of {model}'s; pin another.", None
    a = describe_selection(model, a_cfg, methods, cv, "kld")
    b = a if a_cfg.hash == cfg.hash else describe_selection(model, cfg, methods, cv, "kld")
    note = "" if a_cfg.hash != cfg.hash else "\n\nA and B are the same configuration: select another one."
    return compare.compare_md(a, b) + note, compare.diff_figure(a_cfg, cfg)


@user_errors
def select_best(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                metric: str = "ppl", request: gr.Request = None):
    """Select the best predicted configuration within the budget on the shown metric (same outputs
    as :func:`select`)."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    ex = MODELS.get(model)
    best = _best(fronts(model, b, ms, cv, metric=mt), ms, ex)
    if best is None:  # no GP yet (a new model): the allocator's configuration for the budget
        why = "tick CoA-LoRA or no adapter for a predicted front" if not ms else "no predicted front yet"
        info(f"{why}; selecting the allocator's configuration at {b:.2f} bits")
        return select(ex.allocate(b).hash, model, eval_set, b, ms, seqlen, windows, mt, request)
    return select(best.config_hash, model, eval_set, b, ms, seqlen, windows, mt, request)


@user_errors
def select_row(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
               metric: str = "ppl", evt: gr.SelectData = None, request: gr.Request = None):
    """A click on a table row selects its configuration (the path without JavaScript)."""
    row = evt.row_value if evt is not None else None
    if not isinstance(row, (list, tuple)) or not row:
        raise CoaloraError("click a row of the table to select its configuration")
    return select(row[0], model, eval_set, budget, methods, seqlen, windows, metric, request)


# ---- heavy work: evaluation, sampling, export


@user_errors
def quick_eval(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
               windows: int, metric: str = "ppl", request: gr.Request = None,
               progress=gr.Progress()):  # noqa: B008 (Gradio injects it by this default)
    """Outputs: (result md, front figure, table, front md, summary md, details JSON, residual figure).

    The GP's prediction is recorded before measuring (:mod:`ui.predictions`), so the residual
    (predicted vs measured) of every Quick eval since the page was opened is plotted."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = MODELS.get(model)
    cfg = ex.config(h)
    m = primary_method(ex, ms)
    progress(0, desc="GP prediction before measuring")
    kept = predictions.record(ex, cfg, m, cv)  # before the measurement enters the GP

    def step(fraction: float) -> None:  # after each window
        progress(fraction, desc=f"perplexity and KL over {cv.windows} windows")

    progress(0, desc=f"perplexity and KL over {cv.windows} windows")
    ev, cached = ex.evaluate(cfg, m, cv.seqlen, cv.windows, progress=step, corpus=cv.corpus)
    if not cached:
        FRONTS.drop(model)
    fr = fronts(model, b, ms, cv, fresh=not cached, metric=mt)
    how = "cached result (no recomputation)" if cached else f"measured in {ev.seconds:.1f} s and stored"
    kl = f", KL to the unquantized model **{ev.kld:.4f}** nats/token" if ev.kld is not None else ""
    result = (f"**{figures.method_label(m)}** `{h}` ({cfg.avg_bits:.3f} bits): perplexity **{ev.ppl:.3f}**{kl} "
              f"on {ev.windows} x {ev.seqlen} tokens of {md_code(ev.eval_set)} ({ev.eval_spec}), {how}.")
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, _ = _selection_md(d)
    fig = _figure(model, fr, b, ms, cv, _marker(cfg, _value(ev, mt), d[f"predicted_{mt}"]), mt)
    prior = kept.get(mt) or predictions.prior_of(ex, cfg, m, cv, mt)
    session = getattr(request, "session_hash", None) or "api"
    rows = predictions.RESIDUALS.get(session)
    if prior is not None and _value(ev, mt) is not None:
        rows = predictions.RESIDUALS.add(session, {"hash": h, "bits": cfg.avg_bits, "method": m, "metric": mt,
                                                   "predicted": list(prior[:3]), "how": prior[3],
                                                   "measured": _value(ev, mt)})
    return result, fig, _table(fr), _front_md(fr, b, mt), summary, d, figures.residual_figure(rows, mt)


@user_errors
def sample(config_hash: str, model: str, methods: list[str], prompt: str, max_new_tokens: int):
    """Outputs: (continuation under the configuration, continuation of the unquantized model, timing md)."""
    h, ms = check_hash(config_hash), check_methods(methods)
    text = check_prompt(prompt)
    n = check_int(max_new_tokens, "max new tokens", 1, limits.MAX_NEW_TOKENS)
    ex = MODELS.get(model)
    cfg = ex.config(h)
    m = primary_method(ex, ms)
    r = ex.sample(cfg, text, n, m)
    t = (f"{figures.method_label(m)} at {cfg.avg_bits:.3f} bits: {r['quantized_s']:.2f} s; unquantized: "
         f"{r['dense_s']:.2f} s (greedy, {n} new tokens).")
    return text + r["quantized"], text + r["dense"], t


def _cache_dirs() -> list[Path]:
    """What export disk use counts: the export directory and Gradio's cache (where served files go)."""
    return [EXPORT_DIR, Path(gr.utils.get_upload_folder())]


def _expected_bytes(ex, cfg) -> int:
    """Disk an export of ``cfg`` needs while it is built: the bundle directory and its zip, each
    holding the packed weights and the adapter (fp32 A and B per matrix) with a few KiB of headers
    and metadata per matrix."""
    packed = sum(t.numel for t in cfg.targets) * cfg.avg_bits / 8
    rank = ex.coa.adapter_config.rank if ex.coa is not None else 0
    lora = sum(rank * (t.shape[0] + t.shape[1]) * 4 for t in cfg.targets)
    return int(2 * (packed + lora + 4096 * len(cfg.targets))) + 64 * 2**10


def _write_bundle(ex, cfg, stem: str, cv: Convention, inputs: dict) -> Any:
    """The writer of one export entry: the bundle zip and its configuration JSON into a directory."""

    def write(d: Path) -> list[Path]:
        bundle = ex.export(cfg, d / stem, make_zip=True, seqlen=cv.seqlen, windows=cv.windows, corpus=cv.corpus,
                           inputs=inputs)
        return [Path(bundle), cfg.save(d / f"{stem}.config.json")]

    return write


def _bundle_prediction(ex, cfg, cv: Convention, inputs: dict) -> dict | None:
    """The bundle's ``predicted``: for a measured configuration the prediction made without its
    measurement (:mod:`ui.predictions`), not the GP's value at it (which is the measurement)."""
    method = "coalora" if ex.coa is not None else "none"
    pred = inputs.get("predicted")
    if inputs.get("measured") is None:
        return None if pred is None else {**pred, "made": "GP posterior (not measured)"}
    kept = predictions.prior_of(ex, cfg, method, cv, "ppl")
    if kept is None:
        return None
    return {"ppl": kept[0], "lo": kept[1], "hi": kept[2], "band": "+-2 sigma of log ppl", "made": kept[3]}


@user_errors
def export(config_hash: str, model: str, eval_set: str, seqlen: int, windows: int):
    """Outputs: ([bundle zip, config JSON] for download, note md).

    The same bundle content (configuration, adapter, recorded results) is written once and reused;
    the export directory and Gradio's cache stay under :data:`coalora.limits.EXPORT_CAP_BYTES`
    together, least recently used entries deleted first (:mod:`ui.exports`).
    """
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = MODELS.get(model)
    cfg = ex.config(h)
    stem = f"coalora-{ex.model_name.replace('/', '--')}-{cfg.hash}"
    names = (f"{stem}.zip", f"{stem}.config.json")
    inputs = ex.export_inputs(cfg, measure=False, seqlen=cv.seqlen, windows=cv.windows, corpus=cv.corpus)
    inputs["predicted"] = _bundle_prediction(ex, cfg, cv, inputs)
    key = ex.export_key(cfg, inputs)
    exports.expire(EXPORT_DIR, limits.EXPORT_KEEP_S)
    t0 = time.perf_counter()
    entry = exports.find(EXPORT_DIR, key, names)
    how = "already exported: the same file again"
    if entry is None:
        need = _expected_bytes(ex, cfg)
        exports.check_fits(need, limits.EXPORT_CAP_BYTES)
        exports.evict(_cache_dirs(), limits.EXPORT_CAP_BYTES, reserve=need)
        entry = exports.put(EXPORT_DIR, key, _write_bundle(ex, cfg, stem, cv, inputs))
        how = f"written in {time.perf_counter() - t0:.1f} s"
    copy = 0 if EXPORT_DIR.resolve().is_relative_to(Path(gr.utils.get_upload_folder()).resolve()) else entry.size()
    exports.evict(_cache_dirs(), limits.EXPORT_CAP_BYTES, reserve=copy, keep=[entry.path])
    bundle, cfg_path = entry.files
    size = bundle.stat().st_size / 2**20
    note = (f"Bundle {md_code(bundle.name)} ({size:.1f} MiB: PEFT adapter, packed weights, coalora_config.json), "
            f"{how}. Load it with `coalora load DIR` or `coalora.export.bundle.load_bundle`.")
    return [str(bundle), str(cfg_path)], note


# ---- page load, history, comparison


@user_errors
def on_load(default_model: str, request: gr.Request = None):
    """Restore a shared link's state: outputs (model, eval set, budget, selected hash). Each bad
    query parameter gets one (escaped) warning and its default; none is ever an error."""
    qp = dict(request.query_params) if request is not None else {}
    model = default_model
    if "model" in qp:
        try:
            model = MODELS.check(qp["model"])
        except CoaloraError as e:
            warn(f"{e}; showing {default_model}")
    eval_set = "shakespeare"
    if "eval_set" in qp:
        try:
            eval_set = check_choice(qp["eval_set"], "eval set", list(EVAL_SETS))
        except CoaloraError as e:
            warn(f"{e}; showing shakespeare")
    budget = 4.0
    if "budget" in qp:
        try:
            budget = check_budget(qp["budget"])
        except CoaloraError as e:
            warn(f"{e}; using 4.0")
    h, pin = _link_hash(qp, "config"), _link_hash(qp, "pin")
    compare.PINS.set(compare.session_of(request), pin)
    methods, seqlen, windows = _link_view(qp)
    return model, eval_set, budget, h, methods, seqlen, windows


def _link_hash(qp: dict, name: str) -> str:
    """A share link's configuration hash parameter ``name`` ("" when absent or bad, with a warning)."""
    if not qp.get(name):
        return ""
    try:
        return check_hash(qp[name])
    except CoaloraError as e:
        warn(f"{name}: {e}")
        return ""


def _link_view(qp: dict) -> tuple[list[str], int, int]:
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


SELECT_OUTPUTS = 10
"""How many outputs :func:`select` has (the page's selection panel)."""


@user_errors
def restore_selection(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
                      windows: int, metric: str = "ppl", request: gr.Request = None):
    """After a shared link's front is drawn: select its configuration (nothing when there is none)."""
    if not config_hash:
        return tuple(gr.skip() for _ in range(SELECT_OUTPUTS))
    return select(config_hash, model, eval_set, budget, methods, seqlen, windows, metric, request)


@user_errors
def model_summary(model: str) -> str:
    ex = MODELS.get(model)
    n = sum(p.numel() for p in ex.model.parameters())
    q = sum(t.numel for t in ex.targets)
    blocks = max(t.block for t in ex.targets) + 1
    adapter = (f"trained CoA-LoRA adapter `{ex.adapter_id}` ({ex.adapter_path.name})" if ex.coa is not None
               else "no trained CoA-LoRA adapter (quantization-only front)")
    return (f"**{model}**: {n / 1e6:.1f} M parameters, {len(ex.targets)} quantizable matrices "
            f"({q / 1e6:.1f} M parameters) in {blocks} blocks; {adapter}; eval set {md_code(ex.eval_set)}.")


@user_errors
def hv_history(model: str):
    """The Search history tab: the front searches' (``coalora search``) measured-front hypervolume
    per round, in the app's one normalised definition (the training search's probe-loss volumes
    live in another space and are not shown)."""
    from coalora.search.front import HV_BITS_REF
    from coalora.search.pareto import HV_DEFINITION, normalised_hv

    ex = MODELS.get(model)
    rounds = [r for r in ex.store.search_rounds(model=model) if str(r["run"]).startswith("front-search:")]
    return figures.hv_history_figure(rounds, HV_DEFINITION["ppl"], lambda a: normalised_hv(a, HV_BITS_REF, "ppl"))


NO_COMPARISON = ("The protocol comparison (equal compute, several seeds, perplexity and KL with 95% intervals) "
                 "has not been run yet. Run it with `coalora compare --out data/results/protocol`.")


def _protocol_report():
    """``coalora.train.protocol_report``, or None where this checkout does not have it."""
    try:
        from coalora.train import protocol_report
    except ImportError:
        return None
    return protocol_report


def comparison() -> tuple[str, Any]:
    """The Methods tab: (the protocol comparison's summary markdown, its front image path or None)."""
    report = _protocol_report()
    if report is None:
        return NO_COMPARISON, None
    try:
        res = report.load(directory=None)
    except (CoaloraError, OSError, ValueError, KeyError) as e:
        log.exception("reading the protocol comparison failed")
        return f"The protocol comparison's results could not be read ({type(e).__name__}: {e}).", None
    if res is None:
        return NO_COMPARISON, None
    png = res.get("front_png")
    return res["markdown"], (str(png) if png is not None and Path(png).is_file() else None)


# ---- start-up and the JSON API


def warm(model: str) -> None:
    """Load ``model``, fit its default fronts and index its candidates before the first page."""
    ex = MODELS.get(model)
    ex.candidate_index()
    fronts(model, 4.0, DEFAULT_METHODS, check_eval("shakespeare", 256, 8))  # the first page's metric: ppl


@user_errors
def api_front(model: str, budget: float = 4.0, method: str = "coalora", seqlen: int = 256, windows: int = 8,
              eval_set: str = "shakespeare", metric: str = "ppl") -> dict:
    """The front as JSON (``coalora front --json``'s content): measured points, predicted front with its
    +-2 sigma band, hypervolumes, the best configuration within ``budget`` and EHVI proposals;
    ``metric``: ``ppl`` or ``kld`` (KL divergence to the unquantized model)."""
    b, mt, m = check_budget(budget), check_metric(metric), check_method(method)
    cv = check_eval(eval_set, seqlen, windows)
    return MODELS.get(model).front(m, b, cv.seqlen, cv.windows, cv.corpus, mt).to_json()
