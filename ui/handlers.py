"""Plain functions behind the app's events (testable without a browser).

Each takes the controls' values and returns the outputs' values; all computing is done by
:class:`coalora.explorer.Explorer` (one per model, loaded once and kept). User mistakes surface as
one ``gr.Error`` toast, never a traceback in the page: :func:`user_errors` turns
:class:`~coalora.errors.CoaloraError` into its message and logs anything unexpected server-side.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import gradio as gr

from coalora.errors import CoaloraError
from ui import figures

log = logging.getLogger("coalora.ui")

GP_METHODS = ("coalora", "none")
"""Methods whose front the app fits and can extend with quick evals (the baselines are measured by
``coalora compare``: the *Methods* tab shows that comparison)."""
METHOD_CHOICES = [(label, key) for key, (label, _) in figures.METHODS.items() if key in GP_METHODS]
"""The method filter: (label, key)."""
METRIC_CHOICES = [("Perplexity", "ppl"), ("KL divergence to the unquantized model", "kld")]
"""The front's y axis: (label, :data:`coalora.front.METRICS` key)."""
DEFAULT_METHODS = ["coalora", "none"]
SEQLENS = (128, 256, 512)
MAX_WINDOWS = 32
BUDGET_RANGE = (2.0, 8.6)
"""The budget slider; values below the cheapest configuration (2.032 bits) are clamped to it."""
EXPORT_DIR = Path(tempfile.gettempdir()) / "coalora-exports"
"""The only directory the app serves downloads from (one fresh subdirectory per export)."""
EXPORT_KEEP_S = 3600.0
_HASH_RE = re.compile(r"^[0-9a-f]{16}$")


def user_errors(fn):
    """Show a CoaloraError as its message; log anything else and show a short generic error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CoaloraError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug, not a user mistake: the details go to the server log only
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"internal error in {fn.__name__} ({type(e).__name__}); the server log has the details",
                           print_exception=False) from None

    return wrapper


# ---- models


class Models:
    """The models the app may load: registry entries only (never a path from the browser)."""

    def __init__(self) -> None:
        self._explorers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.store = None
        """A shared :class:`coalora.store.Store` (None: each explorer opens the default one)."""

    @staticmethod
    def allowed() -> list[str]:
        from coalora.models import REGISTRY

        return list(REGISTRY)

    def choices(self, default: str) -> list[tuple[str, str]]:
        """Dropdown entries: every non-test registry model (plus ``default``), marked by adapter."""
        from coalora.explorer import default_adapter
        from coalora.models import REGISTRY

        out = []
        for name, spec in REGISTRY.items():
            if spec.source == "tiny" and name != default:
                continue
            tag = "trained CoA-LoRA" if default_adapter(name) else "quantization only"
            hub = ", needs the hub" if spec.source == "hub" else ""
            out.append((f"{name} ({tag}{hub})", name))
        return out

    def get(self, name: str):
        """The loaded explorer of ``name`` (loads it on first use)."""
        from coalora.explorer import Explorer

        if name not in self.allowed():
            raise CoaloraError(f"unknown model {name!r}; pick one of {', '.join(self.allowed())}")
        with self._lock:  # one load per model even when several sessions ask at once
            if name not in self._explorers:
                if self.store is None:
                    from coalora.store import Store

                    self.store = Store()
                self._explorers[name] = Explorer(name, store=self.store)
            return self._explorers[name]


MODELS = Models()


# ---- inputs


def check_budget(budget: Any) -> float:
    """The slider's budget, clamped into the feasible range with a warning (NaN and text: an error)."""
    from coalora.config import MAX_BITS, MIN_BITS

    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise CoaloraError(f"budget must be a number of bits per weight, got {budget!r}") from None
    if not math.isfinite(b):
        raise CoaloraError(f"budget must be a finite number of bits, got {budget!r}")
    if b < MIN_BITS or b > MAX_BITS:
        c = min(max(b, MIN_BITS), MAX_BITS)
        gr.Warning(f"{b:.3f} bits is outside the feasible range [{MIN_BITS:.3f}, {MAX_BITS:.3f}]; using {c:.3f}")
        return c
    return b


def check_hash(config_hash: Any) -> str:
    h = str(config_hash or "").strip().lower()
    if not h:
        raise CoaloraError("no configuration selected: click a point on the front or a row of the table")
    if not _HASH_RE.match(h):
        raise CoaloraError(f"{str(config_hash)[:40]!r} is not a configuration hash (16 hex digits)")
    return h


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
        from coalora.evalspec import DEFAULT_SPEC

        return f"{self.windows} x {self.seqlen} tokens of {self.eval_set}, {DEFAULT_SPEC}"


def add_eval_set(spec: str) -> str:
    """Allow ``NAME=PATH`` (a text file or a directory of them) as an eval set; returns the name."""
    from coalora import data

    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise CoaloraError(f"--eval-set takes NAME=PATH, got {spec!r}")
    if not Path(path).expanduser().exists():
        raise CoaloraError(f"--eval-set {name}: {path} does not exist")
    data.load_corpus(str(Path(path).expanduser()), "eval")  # fails now, not in a user's session
    EVAL_SETS[name] = str(Path(path).expanduser())
    return name


def check_eval(eval_set: Any, seqlen: Any, windows: Any) -> Convention:
    if eval_set not in EVAL_SETS:
        raise CoaloraError(f"unknown eval set {str(eval_set)[:40]!r}; pick one of {', '.join(EVAL_SETS)}")
    try:
        s, w = int(seqlen), int(windows)
    except (TypeError, ValueError):
        raise CoaloraError(f"seqlen and windows must be integers, got {seqlen!r} and {windows!r}") from None
    if s not in SEQLENS:
        raise CoaloraError(f"tokens per window must be one of {', '.join(map(str, SEQLENS))}, got {s}")
    if not (1 <= w <= MAX_WINDOWS):
        raise CoaloraError(f"windows must be in [1, {MAX_WINDOWS}] here (the CLI takes more), got {w}")
    return Convention(eval_set, EVAL_SETS[eval_set], s, w)


def check_metric(metric: Any) -> str:
    """The front's metric (``ppl`` or ``kld``), or one clear error."""
    from coalora.front import check_metric as check

    return check(metric if isinstance(metric, str) else str(metric)[:40])


def check_methods(methods: Any) -> list[str]:
    ms = [methods] if isinstance(methods, str) else list(methods or [])
    bad = [m for m in ms if m not in figures.METHODS]
    if bad:
        raise CoaloraError(f"unknown method {bad[0]!r}; use {', '.join(figures.METHODS)}")
    return ms


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
        hv = r.hypervolume
        lines.append(f"**{label}**: {len(r.measured)} measured, predicted front of {len(r.front)} points over "
                     f"{r.n_candidates:,} candidates; hypervolume measured {hv['measured']:.4f}, predicted "
                     f"{hv.get('predicted', float('nan')):.4f} (area in bits x log {metric} up to "
                     f"{r.hv_reference['bits']} bits, {name} {r.hv_reference[metric]:g}); fit {r.refit}, "
                     f"{r.seconds:.2f} s.")
        if r.best is not None:
            b = r.best
            meas = f", measured {b.ppl:{f}}" if b.ppl is not None else ""
            lines.append(f"  Best within {budget:.2f} bits: `{b.config_hash}` at {b.avg_bits:.3f} bits, predicted "
                         f"{name} {b.pred_ppl:{f}} [{b.pred_lo:{f}}, {b.pred_hi:{f}}]{meas}.")
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


def _figure(model: str, fr: dict, budget: float, methods: list[str], cv: Convention,
            selected: tuple[str, float, float] | None = None, metric: str = "ppl"):
    ex = MODELS.get(model)
    return figures.front_figure(fr, budget, _best(fr, methods, ex), selected, cv.label, metric)


@user_errors
def refresh_front(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                  metric: str = "ppl", selected: str = ""):
    """Outputs: (front figure, table rows, front summary markdown)."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    fr = fronts(model, b, ms, cv, metric=mt)
    sel = _selected_point(model, selected, ms, cv, mt) if selected else None
    return _figure(model, fr, b, ms, cv, sel, mt), _table(fr), _front_md(fr, b, mt)


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


def share_link(request: gr.Request | None, model: str, budget: float, config_hash: str,
               eval_set: str = "shakespeare") -> str:
    """The page's own address with ``?model=&budget=&config=[&eval_set=]`` (opening it restores the selection)."""
    base = "http://127.0.0.1:7860/"
    if request is not None:
        ref = (request.headers or {}).get("referer")
        if ref:
            u = urlsplit(ref)
            base = urlunsplit((u.scheme, u.netloc, u.path or "/", "", ""))
    q = {"model": model, "budget": f"{budget:.2f}"}
    if eval_set != "shakespeare":
        q["eval_set"] = eval_set
    if config_hash:
        q["config"] = config_hash
    return f"{base}?{urlencode(q)}"


def describe_selection(model: str, cfg, methods: list[str], cv: Convention, metric: str = "ppl") -> dict:
    """Everything the selection panel shows about ``cfg``, as plain values (also the ``select`` API's JSON).

    The perplexity GP's prediction is always there; the KL GP's only while the KL front is shown
    (``metric="kld"``), so a selection on the perplexity front fits one GP, not two.
    """
    ex = MODELS.get(model)
    m = primary_method(ex, methods)
    ms = None
    if ex.coa is not None:
        _, ms = ex.generate(cfg)
    ev, p = _measured(ex, cfg, m, cv)
    k = _measured(ex, cfg, m, cv, "kld")[1] if metric == "kld" else None
    return {
        "model": model, "config_hash": cfg.hash, "avg_bits": cfg.avg_bits, "method": m,
        "adapter_ms": ms, "adapter_id": ex.adapter_id or None,
        "predicted_ppl": None if p is None else p.pred_ppl,
        "predicted_band": None if p is None else [p.pred_lo, p.pred_hi],
        "measured_ppl": _value(ev, "ppl"), "measured_kld": _value(ev, "kld"),
        "predicted_kld": None if k is None else k.pred_ppl,
        "predicted_kld_band": None if k is None else [k.pred_lo, k.pred_hi],
        "metric": metric, "convention": cv.label, "eval_spec": ex.eval_spec,
        "matrices": len(cfg.targets),
    }


def _selection_md(d: dict) -> tuple[str, str]:
    if d["adapter_ms"] is not None:
        t = (f"Adapter for `{d['config_hash']}` generated in **{d['adapter_ms']:.1f} ms** "
             f"({d['matrices']} LoRA pairs, theta run once over all layers).")
    else:
        t = f"`{d['config_hash']}`: {d['model']} has no trained CoA-LoRA adapter here (quantization only)."
    pred = "no GP yet" if d["predicted_ppl"] is None else \
        f"{d['predicted_ppl']:.2f} (+-2 sigma: {d['predicted_band'][0]:.2f} .. {d['predicted_band'][1]:.2f})"
    meas = "not measured yet (Quick eval)" if d["measured_ppl"] is None else f"**{d['measured_ppl']:.3f}**"
    if d["measured_kld"] is not None:
        meas += f", KL to the unquantized model **{d['measured_kld']:.4f}** nats/token"
    elif d["measured_ppl"] is not None:
        meas += " (no KL measured)"
    kl = ""
    if d.get("predicted_kld") is not None:
        lo, hi = d["predicted_kld_band"]
        kl = f"\n- predicted KL: {d['predicted_kld']:.4f} nats/token (+-2 sigma: {lo:.4f} .. {hi:.4f})"
    s = (f"**Configuration** `{d['config_hash']}` of {d['model']}, **{d['avg_bits']:.3f}** average bits\n\n"
         f"- method: {figures.method_label(d['method'])}\n- predicted ppl: {pred}{kl}\n- measured ppl: {meas} "
         f"({d['convention']})")
    return s, t


@user_errors
def select(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
           metric: str = "ppl", request: gr.Request = None):
    """Outputs: (selected hash, summary md, adapter-time md, heatmap, details JSON, front figure, share link)."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    cfg = MODELS.get(model).config(check_hash(config_hash))
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, adapter = _selection_md(d)
    marker = _marker(cfg, d[f"measured_{mt}"], d[f"predicted_{mt}"])
    fig = _figure(model, fronts(model, b, ms, cv, metric=mt), b, ms, cv, marker, mt)
    return (cfg.hash, summary, adapter, figures.heatmap_figure(cfg), d, fig,
            share_link(request, model, b, cfg.hash, cv.eval_set))


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
        gr.Info(f"no predicted front yet; selecting the allocator's configuration at {b:.2f} bits")
        return select(ex.allocate(b).hash, model, eval_set, b, ms, seqlen, windows, mt, request)
    return select(best.config_hash, model, eval_set, b, ms, seqlen, windows, mt, request)


@user_errors
def select_row(rows, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
               metric: str = "ppl", evt: gr.SelectData = None, request: gr.Request = None):
    """A click on a table row selects its configuration (the path without JavaScript)."""
    row = evt.row_value if evt is not None else None
    if not row:
        raise CoaloraError("click a row of the table to select its configuration")
    return select(row[0], model, eval_set, budget, methods, seqlen, windows, metric, request)


# ---- heavy work: evaluation, sampling, export


@user_errors
def quick_eval(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
               windows: int, metric: str = "ppl",
               progress=gr.Progress()):  # noqa: B008 (Gradio injects it by this default)
    """Outputs: (result md, front figure, table, front md, summary md, details JSON)."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = MODELS.get(model)
    cfg = ex.config(h)
    m = primary_method(ex, ms)
    progress(0, desc="applying the configuration")

    def step(fraction: float) -> None:  # after each batch of windows
        progress(fraction, desc="perplexity and KL")

    ev, cached = ex.evaluate(cfg, m, cv.seqlen, cv.windows, progress=step, corpus=cv.corpus)
    if not cached:
        FRONTS.drop(model)
    fr = fronts(model, b, ms, cv, fresh=not cached, metric=mt)
    how = "cached result (no recomputation)" if cached else f"measured in {ev.seconds:.1f} s and stored"
    kl = f", KL to the unquantized model **{ev.kld:.4f}** nats/token" if ev.kld is not None else ""
    result = (f"**{figures.method_label(m)}** `{h}` ({cfg.avg_bits:.3f} bits): perplexity **{ev.ppl:.3f}**{kl} "
              f"on {ev.windows} x {ev.seqlen} tokens of `{ev.eval_set}` ({ev.eval_spec}), {how}.")
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, _ = _selection_md(d)
    fig = _figure(model, fr, b, ms, cv, _marker(cfg, _value(ev, mt), d[f"predicted_{mt}"]), mt)
    return result, fig, _table(fr), _front_md(fr, b, mt), summary, d


@user_errors
def sample(config_hash: str, model: str, methods: list[str], prompt: str, max_new_tokens: int):
    """Outputs: (continuation under the configuration, continuation of the unquantized model, timing md)."""
    ex = MODELS.get(model)
    cfg = ex.config(check_hash(config_hash))
    m = primary_method(ex, check_methods(methods))
    r = ex.sample(cfg, prompt, int(max_new_tokens), m)
    t = (f"{figures.method_label(m)} at {cfg.avg_bits:.3f} bits: {r['quantized_s']:.2f} s; unquantized: "
         f"{r['dense_s']:.2f} s (greedy, {int(max_new_tokens)} new tokens).")
    return prompt + r["quantized"], prompt + r["dense"], t


def _clean_exports() -> None:
    """Drop exports older than an hour (the directory only ever holds the app's own bundles)."""
    if not EXPORT_DIR.is_dir():
        return
    now = time.time()
    for d in EXPORT_DIR.iterdir():
        try:
            if now - d.stat().st_mtime > EXPORT_KEEP_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


@user_errors
def export(config_hash: str, model: str, eval_set: str, seqlen: int, windows: int):
    """Outputs: ([bundle zip, config JSON] for download, note md)."""
    cv = check_eval(eval_set, seqlen, windows)
    ex = MODELS.get(model)
    cfg = ex.config(check_hash(config_hash))
    _clean_exports()
    out = EXPORT_DIR / uuid.uuid4().hex
    out.mkdir(parents=True)
    stem = f"coalora-{model.replace('/', '--')}-{cfg.hash}"
    t0 = time.perf_counter()
    bundle = ex.export(cfg, out / stem, make_zip=True, measure=False, seqlen=cv.seqlen, windows=cv.windows,
                       corpus=cv.corpus)
    cfg_path = cfg.save(out / f"{stem}.config.json")
    size = Path(bundle).stat().st_size / 2**20
    note = (f"Bundle `{Path(bundle).name}` ({size:.1f} MiB: PEFT adapter, packed weights, coalora_config.json) "
            f"written in {time.perf_counter() - t0:.1f} s. Load it with `coalora load DIR` or "
            "`coalora.bundle.load_bundle`.")
    return [str(bundle), str(cfg_path)], note


# ---- page load, history, comparison


@user_errors
def on_load(default_model: str, request: gr.Request = None):
    """Restore a shared link's state: outputs (model, eval set, budget, selected hash)."""
    qp = dict(request.query_params) if request is not None else {}
    model = qp.get("model", default_model)
    if model not in Models.allowed():
        gr.Warning(f"unknown model {model!r} in the link; showing {default_model}")
        model = default_model
    eval_set = qp.get("eval_set", "shakespeare")
    if eval_set not in EVAL_SETS:
        gr.Warning(f"eval set {eval_set[:40]!r} is not offered here; showing shakespeare")
        eval_set = "shakespeare"
    budget = 4.0
    if "budget" in qp:
        try:
            budget = check_budget(qp["budget"])
        except CoaloraError as e:
            gr.Warning(f"{e}; using 4.0")
    h = ""
    if qp.get("config"):
        try:
            h = check_hash(qp["config"])
        except CoaloraError as e:
            gr.Warning(str(e))
    return model, eval_set, budget, h


@user_errors
def restore_selection(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
                      windows: int, metric: str = "ppl", request: gr.Request = None):
    """After a shared link's front is drawn: select its configuration (nothing when there is none)."""
    if not config_hash:
        return tuple(gr.skip() for _ in range(7))
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
            f"({q / 1e6:.1f} M parameters) in {blocks} blocks; {adapter}; eval set `{ex.eval_set}`.")


@user_errors
def hv_history(model: str):
    ex = MODELS.get(model)
    return figures.hv_history_figure(ex.store.search_rounds(model=model))


NO_COMPARISON = ("The protocol comparison (equal compute, several seeds, perplexity and KL with 95% intervals) "
                 "has not been run yet. Run it with `coalora compare --out data/results/protocol`.")


def _protocol_report():
    """``coalora.protocol_report``, or None where this checkout does not have it."""
    try:
        from coalora import protocol_report
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
    b, mt = check_budget(budget), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    (m,) = check_methods([method])
    ex = MODELS.get(model)
    if m not in GP_METHODS:
        raise CoaloraError(f"the app fits fronts for {' and '.join(GP_METHODS)}; {m} is measured by the protocol "
                           "comparison (`coalora compare`, Methods tab)")
    return ex.front(m, b, cv.seqlen, cv.windows, cv.corpus, mt).to_json()
