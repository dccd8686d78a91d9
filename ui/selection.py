"""The selection panel: one configuration picked on the front (a click, a table row, the best within
the budget, a shared link) and everything shown about it.

Selecting generates the configuration's CoA-LoRA adapter (method section 3: the configuration-aware
network maps the per-layer configuration to U, the adapter is (U A, B)) and times it, and shows its
bits per layer, its predicted and measured ppl / KL, its per-layer table, its share link
(:mod:`ui.share`) and its comparison with the session's pinned configuration (:mod:`ui.compare`).
A measured configuration shows the prediction made without its measurement (:mod:`ui.predictions`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from coalora.errors import CoaloraError
from coalora.evaluation.tasks import newest_for_config
from ui import compare, downloads, figures, predictions, state, task_eval
from ui.convention import Convention, check_eval
from ui.front_view import (
    best_point,
    figure,
    fronts,
    marker,
    measured,
    measured_value,
    metric_value,
    primary_method,
    selected_point,
)
from ui.inputs import check_budget, check_hash, check_methods, check_metric
from ui.messages import info, md_code, user_errors
from ui.share import share_link

SELECT_OUTPUTS = 10
"""How many outputs :func:`select` has (the page's selection panel)."""
NO_PIN = "Pin a selection (*Pin for comparison*), then select another configuration to compare the two."


def kept_prediction(ex: Any, cfg: Any, method: str, cv: Convention, metric: str, value: float | None,
                    p: Any) -> figures.Prior | None:
    """The prediction shown for ``cfg``: for a measured one (``value``, its stored value of ``metric``)
    the one made without its measurement (:mod:`ui.predictions`), for an unmeasured one the GP's
    (``p``); None without a GP."""
    if value is not None:
        return predictions.prior_of(ex, cfg, method, cv, metric)
    return None if p is None else (p.pred_ppl, p.pred_lo, p.pred_hi, "GP posterior")


def describe_selection(model: str, cfg: Any, methods: list[str], cv: Convention, metric: str = "ppl") -> dict:
    """Everything the selection panel shows about ``cfg``, as plain values (also the ``select`` API's JSON).

    The perplexity GP's prediction is always there; the KL GP's only while the KL front is shown
    (``metric="kld"``) and a task's error-rate GP's only while that front is shown, so a selection on
    the perplexity front fits one GP, not two. ``tasks``: the stored lm-eval accuracies of ``cfg``.
    """
    ex = state.MODELS.get(model)
    m = primary_method(ex, methods)
    ms = None
    if ex.coa is not None and m == "coalora":
        _, ms = ex.adapter_for(cfg)
    ev, p = measured(ex, cfg, m, cv)
    pp = kept_prediction(ex, cfg, m, cv, "ppl", metric_value(ev, "ppl"), p)
    kk = kept_prediction(ex, cfg, m, cv, "kld", metric_value(ev, "kld"), measured(ex, cfg, m, cv, "kld")[1]) \
        if metric == "kld" else None
    task_v = measured_value(ex, cfg, m, cv, metric) if figures.is_task(metric) else None
    tt = kept_prediction(ex, cfg, m, cv, metric, task_v, measured(ex, cfg, m, cv, metric)[1]) \
        if figures.is_task(metric) else None
    return {
        "model": model, "config_hash": cfg.hash, "avg_bits": cfg.avg_bits, "method": m,
        "size_mb": state.sizes(model).mb(cfg.avg_bits),
        "adapter_ms": ms if m == "coalora" else None, "adapter_id": ex.adapter_id or None,
        "predicted_ppl": None if pp is None else pp[0], "predicted_band": None if pp is None else [pp[1], pp[2]],
        "predicted_how": None if pp is None else pp[3],
        "measured_ppl": metric_value(ev, "ppl"), "measured_kld": metric_value(ev, "kld"),
        "predicted_kld": None if kk is None else kk[0],
        "predicted_kld_band": None if kk is None else [kk[1], kk[2]],
        "measured_task": task_v, "predicted_task": None if tt is None else tt[0],
        "predicted_task_band": None if tt is None else [tt[1], tt[2]],
        "tasks": newest_for_config(ex, cfg, m),
        "metric": metric, "convention": cv.label, "eval_spec": ex.eval_spec,
        "matrices": len(cfg.targets),
    }


def shown(d: dict) -> tuple[float | None, float | None]:
    """(measured, predicted) value of a :func:`describe_selection` on the front's metric ``d["metric"]``."""
    key = "task" if figures.is_task(d["metric"]) else d["metric"]
    return d[f"measured_{key}"], d[f"predicted_{key}"]


def _adapter_md(d: dict) -> str:
    """The adapter line: its generation time, or why there is no adapter."""
    if d["adapter_ms"] is not None:
        return (f"Adapter for `{d['config_hash']}` generated in **{d['adapter_ms']:.1f} ms** "
                f"({d['matrices']} LoRA pairs, theta run once over all layers).")
    if d["adapter_id"]:
        return f"`{d['config_hash']}` without an adapter (method: no adapter; tick CoA-LoRA to generate its adapter)."
    return f"`{d['config_hash']}`: {d['model']} has no trained CoA-LoRA adapter here (quantization only)."


def selection_md(d: dict) -> tuple[str, str]:
    """(summary md, adapter md) of a :func:`describe_selection` result."""
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
    task = ""
    if d.get("predicted_task") is not None or d.get("measured_task") is not None:
        task += f"\n- {figures.metric_axis(d['metric'])}: " + _task_line(d)
    if d.get("tasks"):
        task += f"\n- lm-eval accuracy: {task_eval.accuracy_text(d['tasks'])}"
    s = (f"**Configuration** `{d['config_hash']}` of {d['model']}, **{d['avg_bits']:.3f}** average bits, "
         f"{d['size_mb']:.1f} MB\n\n"
         f"- method: {figures.method_label(d['method'])}\n- predicted ppl: {pred}{kl}\n- measured ppl: {meas} "
         f"({d['convention']}){task}")
    return s, _adapter_md(d)


def _task_line(d: dict) -> str:
    """The task front's predicted and measured error rate of a selection."""
    parts = []
    if d.get("predicted_task") is not None:
        lo, hi = d["predicted_task_band"]
        parts.append(f"predicted {d['predicted_task']:.3f} (+-2 sigma: {lo:.3f} .. {hi:.3f})")
    if d.get("measured_task") is not None:
        parts.append(f"measured **{d['measured_task']:.3f}**")
    return ", ".join(parts)


def comparison_of(model: str, pin: str, cfg: Any, methods: list[str], cv: Convention) -> tuple[str, Any]:
    """(comparison md, bits-per-layer difference figure) of the pinned ``pin`` (A) and ``cfg`` (B)."""
    if not pin:
        return NO_PIN, None
    ex = state.MODELS.get(model)
    try:
        a_cfg = ex.config(pin)
    except CoaloraError:
        return f"The pinned configuration {md_code(pin)} is not one of {model}'s; pin another.", None
    a = describe_selection(model, a_cfg, methods, cv, "kld")
    b = a if a_cfg.hash == cfg.hash else describe_selection(model, cfg, methods, cv, "kld")
    note = "" if a_cfg.hash != cfg.hash else "\n\nA and B are the same configuration: select another one."
    return compare.compare_md(a, b) + note, compare.diff_figure(a_cfg, cfg)


@user_errors
def select(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
           metric: str = "ppl", request: gr.Request = None) -> tuple[Any, ...]:
    """Outputs: (selected hash, summary md, adapter-time md, heatmap, details JSON, front figure, share
    link, per-layer table rows, comparison md, comparison figure). The comparison is against the
    session's pinned configuration (:mod:`ui.compare`), when there is one."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = state.MODELS.get(model)
    cfg = ex.config(h)
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, adapter = selection_md(d)
    ring = marker(cfg, *shown(d))
    pin = compare.PINS.get(compare.session_of(request))
    pinned = selected_point(model, pin, ms, cv, mt) if pin else None
    fig = figure(model, fronts(model, b, ms, cv, metric=mt), b, ms, cv, ring, mt, pinned)
    cmp_md, cmp_fig = comparison_of(model, pin, cfg, ms, cv)
    return (cfg.hash, summary, adapter, figures.heatmap_figure(cfg), d, fig,
            share_link(model, b, cfg.hash, cv.eval_set, ms, cv.seqlen, cv.windows, pin),
            downloads.as_rows(downloads.layer_table(ex, cfg)), cmp_md, cmp_fig)


@user_errors
def select_best(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                metric: str = "ppl", request: gr.Request = None) -> tuple[Any, ...]:
    """Select the best predicted configuration within the budget on the shown metric (same outputs
    as :func:`select`); without a GP yet, the allocator's configuration for the budget."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    ex = state.MODELS.get(model)
    best = best_point(fronts(model, b, ms, cv, metric=mt), ms, ex)
    if best is None:
        why = "tick CoA-LoRA or no adapter for a predicted front" if not ms else "no predicted front yet"
        info(f"{why}; selecting the allocator's configuration at {b:.2f} bits")
        return select(ex.allocate(b).hash, model, eval_set, b, ms, seqlen, windows, mt, request)
    return select(best.config_hash, model, eval_set, b, ms, seqlen, windows, mt, request)


@user_errors
def select_row(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
               metric: str = "ppl", evt: gr.SelectData = None, request: gr.Request = None) -> tuple[Any, ...]:
    """A click on a table row selects its configuration (the path without JavaScript)."""
    row = evt.row_value if evt is not None else None
    if not isinstance(row, (list, tuple)) or not row:
        raise CoaloraError("click a row of the table to select its configuration")
    return select(row[0], model, eval_set, budget, methods, seqlen, windows, metric, request)


@user_errors
def restore_selection(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
                      windows: int, metric: str = "ppl", request: gr.Request = None) -> tuple[Any, ...]:
    """After a shared link's front is drawn: select its configuration (nothing when there is none)."""
    if not config_hash:
        return tuple(gr.skip() for _ in range(SELECT_OUTPUTS))
    return select(config_hash, model, eval_set, budget, methods, seqlen, windows, metric, request)
