"""Quick eval: measure the selected configuration's perplexity and KL now, store it and refit the front.

The configuration is applied to the model (only changed matrices are re-quantized), its adapter
generated when the method is CoA-LoRA, and perplexity and KL to the unquantized model measured on
the convention's windows (:mod:`ui.convention`); the result goes into the store and the GP refits.
The GP's prediction is recorded before measuring (:mod:`ui.predictions`), so the page's residual
plot compares what was predicted with what was then measured for every Quick eval since the page
was opened. As an option it also scores the lm-eval task :data:`ui.inputs.APP_TASK` (:mod:`ui.task_eval`),
whose error rate is a front the y axis can show.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui import figures, predictions, state, task_eval
from ui.convention import check_eval
from ui.front_view import figure, front_md, fronts, marker, measured_value, primary_method, table_rows
from ui.inputs import APP_TASK, check_budget, check_hash, check_methods, check_metric, check_task_docs
from ui.messages import md_code, user_errors
from ui.selection import describe_selection, selection_md, shown


def _result_md(method: str, h: str, cfg: Any, ev: Any, cached: bool) -> str:
    """The result line: method, hash, bits, perplexity and KL with the convention, and whether it was measured now."""
    how = "cached result (no recomputation)" if cached else f"measured in {ev.seconds:.1f} s and stored"
    kl = f", KL to the unquantized model **{ev.kld:.4f}** nats/token" if ev.kld is not None else ""
    return (f"**{figures.method_label(method)}** `{h}` ({cfg.avg_bits:.3f} bits): perplexity **{ev.ppl:.3f}**{kl} "
            f"on {ev.windows} x {ev.seqlen} tokens of {md_code(ev.eval_set)} ({ev.eval_spec}), {how}.")


def _residuals(ex: Any, cfg: Any, method: str, metric: str, kept: dict, value: float | None, prior: Any,
               request: gr.Request | None) -> list[dict]:
    """The session's residual rows with this measurement (``value`` of ``metric``) added, when a
    prediction was kept for it (``kept``, recorded before measuring, else ``prior``)."""
    prior = kept.get(metric) or prior
    session = getattr(request, "session_hash", None) or "api"
    if prior is None or value is None:
        return predictions.RESIDUALS.get(session)
    return predictions.RESIDUALS.add(session, {"hash": cfg.hash, "bits": cfg.avg_bits, "method": method,
                                               "metric": metric, "predicted": list(prior[:3]), "how": prior[3],
                                               "measured": value})


@user_errors
def quick_eval(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
               windows: int, metric: str = "ppl", task_docs: int = 0, request: gr.Request = None,
               progress: gr.Progress = gr.Progress()  # noqa: B008 (Gradio injects it by this default)
               ) -> tuple[Any, ...]:
    """Outputs: (result md, front figure, table, front md, summary md, details JSON, residual figure).

    ``task_docs``: also score the lm-eval task :data:`ui.inputs.APP_TASK` on this many documents
    (0: not, unless the front shows its error rate: then as many as that front's points,
    :func:`ui.task_eval.docs_for`)."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    asked = check_task_docs(task_docs)
    h = check_hash(config_hash)
    ex = state.MODELS.get(model)
    cfg = ex.config(h)
    m = primary_method(ex, ms)
    on_front = task_eval.front_docs(ex, m, cv, mt) if figures.is_task(mt) else None
    docs = task_eval.docs_for(asked, mt, on_front)
    progress(0, desc="GP prediction before measuring")
    shown_task = (mt,) if figures.is_task(mt) else ()
    kept = predictions.record(ex, cfg, m, cv, ("ppl", "kld", *shown_task))  # before the measurement enters the GP

    def step(fraction: float) -> None:  # after each window
        progress(fraction, desc=f"perplexity and KL over {cv.windows} windows")

    note = ex.apply_note(m)
    progress(0, desc=f"applying the configuration: {note}" if note else f"perplexity and KL over {cv.windows} windows")
    ev, ppl_cached = ex.evaluate(cfg, m, cv.seqlen, cv.windows, progress=step, corpus=cv.corpus)
    task_md, task_cached = "", True
    if docs:
        progress(None, desc=f"lm-eval {APP_TASK} on {docs} documents")
        got, task_cached = task_eval.measure(ex, cfg, m, docs)
        task_md = "\n\n" + task_eval.result_md(got, task_cached) + task_eval.off_front_md(docs, on_front)
    fresh = not (ppl_cached and task_cached)
    if fresh:
        state.FRONTS.drop(model)
    fr = fronts(model, b, ms, cv, fresh=fresh, metric=mt)
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, _ = selection_md(d)
    value = measured_value(ex, cfg, m, cv, mt, ev)  # from ev itself: a read-only store keeps no evaluation
    fig = figure(model, fr, b, ms, cv, marker(cfg, value, shown(d)[1]), mt)
    prior = predictions.prior_of(ex, cfg, m, cv, mt) if value is not None else None
    rows = _residuals(ex, cfg, m, mt, kept, value, prior, request)
    return (_result_md(m, h, cfg, ev, ppl_cached) + task_md, fig, table_rows(fr), front_md(fr, b, mt),
            summary, d, figures.residual_figure(rows, mt))
