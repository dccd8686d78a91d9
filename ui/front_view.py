"""The front panel: the fitted fronts (cached), their figure, table and summary, and the events that
redraw them (the view controls, the budget box) and the ``front`` JSON endpoint.

A front is the GP's predicted Pareto front of average bits against perplexity or KL
(:class:`coalora.search.front.FrontResult`, method section 5) for one model, method, convention
(:mod:`ui.convention`) and metric. The figure rings the selection and the session's pinned
configuration at their measured value where stored, else at the GP's prediction, and shows next to
each measured point the prediction kept for it (:mod:`ui.predictions`).
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from coalora.errors import CoaloraError
from coalora.search.pareto import HV_DEFINITION, hv_kind, normalised_hv
from ui import compare, figures, predictions, state
from ui.convention import Convention, check_eval
from ui.inputs import DEFAULT_METHODS, GP_METHODS, check_budget, check_hash, check_method, check_methods, check_metric
from ui.messages import user_errors

TABLE_HEADERS = ["config", "method", "avg bits", "predicted", "-2 sigma", "+2 sigma", "measured", "source"]
"""The front table's columns; "predicted" and "measured" are of the shown metric (ppl or KL)."""

Marker = tuple[str, float, float]
"""A ring on the front: (configuration hash, average bits, value on the shown axis)."""


def primary_method(ex: Any, methods: list[str]) -> str:
    """The method whose front carries the selection: CoA-LoRA when shown and trained, else no adapter."""
    return "coalora" if "coalora" in methods and "coalora" in ex.methods else "none"


def fronts(model: str, budget: float, methods: list[str], cv: Convention, fresh: bool = False,
           metric: str = "ppl") -> dict:
    """method -> FrontResult for the shown GP methods on ``metric`` (cached in :data:`ui.state.FRONTS`)."""
    key = (model, round(budget, 4), tuple(methods), cv, metric)
    hit = None if fresh else state.FRONTS.get(key)
    if hit is not None:
        return hit
    ex = state.MODELS.get(model)
    out = {m: ex.front(m, budget, cv.seqlen, cv.windows, cv.corpus, metric) for m in GP_METHODS
           if m in methods and m in ex.methods}
    state.FRONTS.put(key, out)
    return out


def hypervolume_text(r: Any) -> str:
    """A front's hypervolumes in the one definition used everywhere (:func:`coalora.search.pareto.normalised_hv`)."""
    ref = r.hv_reference
    hv = r.hypervolume
    pred = normalised_hv(hv["predicted"], ref["bits"], r.metric) if "predicted" in hv else None
    return (f"hypervolume measured {normalised_hv(hv['measured'], ref['bits'], r.metric):.4f}"
            + (f", predicted {pred:.4f}" if pred is not None else "") + f" ({HV_DEFINITION[hv_kind(r.metric)]})")


def front_md(fr: dict, budget: float, metric: str = "ppl") -> str:
    """The front summary under the plot: per method its measured count, front size, hypervolumes and
    fit, and the best configuration within ``budget`` (or why there is none)."""
    if not fr:
        return "No GP front for the selected methods (tick CoA-LoRA or no adapter)."
    name, f = figures.metric_name(metric), figures.metric_format(metric)
    lines = []
    for m, r in fr.items():
        label = figures.method_label(m)
        if r.refit.startswith("none"):
            what = {"ppl": "", "kld": " with a KL"}.get(metric, " on this task (Quick eval with lm-eval task documents)")
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


def _r(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def table_rows(fr: dict) -> list[list]:
    """The front table (:data:`TABLE_HEADERS`): every predicted-front point, by method then bits."""
    rows = []
    for m, r in fr.items():
        d = 3 if r.metric == "ppl" else 5
        for p in r.front:
            rows.append([p.config_hash, m, round(p.avg_bits, 4), _r(p.pred_ppl, d), _r(p.pred_lo, d), _r(p.pred_hi, d),
                         _r(p.ppl, d), p.source])
    rows.sort(key=lambda r: (r[1], r[2]))
    return rows


def best_point(fr: dict, methods: list[str], ex: Any) -> Any:
    """The best-within-budget FrontPoint of the primary method's front (None without a GP)."""
    r = fr.get(primary_method(ex, methods))
    return None if r is None else r.best


def metric_value(ev: Any, metric: str) -> float | None:
    """An evaluation's value of ``metric`` (None: not stored, no KL measured, or a task metric, which
    an evaluation does not hold: :func:`measured_value`)."""
    if ev is None or metric not in ("ppl", "kld"):
        return None
    return ev.ppl if metric == "ppl" else ev.kld


def measured_value(ex: Any, cfg: Any, method: str, cv: Convention, metric: str, ev: Any = None) -> float | None:
    """``cfg``'s stored value of ``metric`` as the front shows it: perplexity or KL from its evaluation
    ``ev``, a task's error rate from the stored rows the task front is fitted on (None: not stored)."""
    if not figures.is_task(metric):
        return metric_value(ev, metric)
    hashes, _, y = ex.front_service().measured(ex.query(method, cv.seqlen, cv.windows, cv.corpus, metric))
    values = dict(zip(hashes, y))
    return math.exp(values[cfg.hash]) if cfg.hash in values else None


def marker(cfg: Any, measured: float | None, predicted: float | None) -> Marker | None:
    """The selection ring of ``cfg``: at the measured value, else the predicted one (None: neither)."""
    y = measured if measured is not None else predicted
    return None if y is None else (cfg.hash, cfg.avg_bits, y)


def measured(ex: Any, cfg: Any, method: str, cv: Convention, metric: str = "ppl") -> tuple[Any, Any]:
    """(the stored Evaluation or None, the ``metric`` GP's FrontPoint prediction or None) of ``cfg``."""
    ev = ex.cached(cfg, method, cv.seqlen, cv.windows, cv.corpus)
    p = ex.front_service().predict(ex.query(method, cv.seqlen, cv.windows, cv.corpus, metric), cfg)
    return ev, p


def selected_point(model: str, h: str, methods: list[str], cv: Convention, metric: str = "ppl") -> Marker | None:
    """The ring of configuration ``h`` (None for a hash not of ``model``, or one with no value yet)."""
    ex = state.MODELS.get(model)
    try:
        cfg = ex.config(h)
    except CoaloraError:
        return None
    m = primary_method(ex, methods)
    ev, p = measured(ex, cfg, m, cv, metric)
    return marker(cfg, measured_value(ex, cfg, m, cv, metric, ev), None if p is None else p.pred_ppl)


def figure(model: str, fr: dict, budget: float, methods: list[str], cv: Convention, selected: Marker | None = None,
           metric: str = "ppl", pinned: Marker | None = None) -> Any:
    """The front figure (:func:`ui.figures.front_figure`) with the kept predictions of measured points."""
    ex = state.MODELS.get(model)
    priors = {m: predictions.priors(ex, m, cv, metric) for m in fr}
    return figures.front_figure(fr, budget, best_point(fr, methods, ex), selected, cv.label, metric,
                                sizes=state.sizes(model), pinned=pinned, priors=priors,
                                best_method=primary_method(ex, methods))


@user_errors
def refresh_front(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                  metric: str = "ppl", selected: str = "", request: gr.Request = None) -> tuple[Any, list, str]:
    """Outputs: (front figure, table rows, front summary markdown); the selection and the
    session's pinned configuration ringed."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(selected) if selected else ""
    fr = fronts(model, b, ms, cv, metric=mt)
    sel = selected_point(model, h, ms, cv, mt) if h else None
    pin = compare.PINS.get(compare.session_of(request))
    pinned = selected_point(model, pin, ms, cv, mt) if pin else None
    return figure(model, fr, b, ms, cv, sel, mt, pinned), table_rows(fr), front_md(fr, b, mt)


@user_errors
def refresh_budget(model: str, eval_set: str, budget: Any, methods: list[str], seqlen: int, windows: int,
                   metric: str = "ppl", selected: str = "", request: gr.Request = None) -> tuple[Any, ...]:
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
    except (TypeError, ValueError, OverflowError):
        typed = b
    if typed != b:
        shown = b
    return (shown, *refresh_front(model, eval_set, b, methods, seqlen, windows, metric, selected, request))


def warm(model: str) -> None:
    """Load ``model``, fit its default fronts and index its candidates before the first page."""
    ex = state.MODELS.get(model)
    ex.candidate_index()
    fronts(model, 4.0, DEFAULT_METHODS, check_eval("shakespeare", 256, 8))  # the first page's metric: ppl


@user_errors
def api_front(model: str, budget: float = 4.0, method: str = "coalora", seqlen: int = 256, windows: int = 8,
              eval_set: str = "shakespeare", metric: str = "ppl") -> dict:
    """The front as JSON (``coalora front --json``'s content): measured points, predicted front with its
    +-2 sigma band, hypervolumes, the best configuration within ``budget`` and EHVI proposals;
    ``metric``: ``ppl``, ``kld`` (KL divergence to the unquantized model) or a task's error rate
    (:data:`ui.inputs.TASK_METRICS`)."""
    b, mt, m = check_budget(budget), check_metric(metric), check_method(method)
    cv = check_eval(eval_set, seqlen, windows)
    return state.MODELS.get(model).front(m, b, cv.seqlen, cv.windows, cv.corpus, mt).to_json()
