"""Quick eval: measure the selected configuration's perplexity and KL now, store it and refit the front.

The configuration is applied to the model (only changed matrices are re-quantized), its adapter
generated when the method is CoA-LoRA, and perplexity and KL to the unquantized model measured on
the convention's windows (:mod:`ui.convention`); the result goes into the store and the GP refits.
The GP's prediction is recorded before measuring (:mod:`ui.predictions`), so the page's residual
plot compares what was predicted with what was then measured for every Quick eval since the page
was opened.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui import figures, predictions, state
from ui.convention import Convention, check_eval
from ui.front_view import figure, front_md, fronts, marker, metric_value, primary_method, table_rows
from ui.inputs import check_budget, check_hash, check_methods, check_metric
from ui.messages import md_code, user_errors
from ui.selection import describe_selection, selection_md


def _result_md(method: str, h: str, cfg: Any, ev: Any, cached: bool) -> str:
    """The result line: method, hash, bits, perplexity and KL with the convention, and whether it was measured now."""
    how = "cached result (no recomputation)" if cached else f"measured in {ev.seconds:.1f} s and stored"
    kl = f", KL to the unquantized model **{ev.kld:.4f}** nats/token" if ev.kld is not None else ""
    return (f"**{figures.method_label(method)}** `{h}` ({cfg.avg_bits:.3f} bits): perplexity **{ev.ppl:.3f}**{kl} "
            f"on {ev.windows} x {ev.seqlen} tokens of {md_code(ev.eval_set)} ({ev.eval_spec}), {how}.")


def _residuals(ex: Any, cfg: Any, method: str, cv: Convention, metric: str, kept: dict, ev: Any,
               request: gr.Request | None) -> list[dict]:
    """The session's residual rows with this measurement added (when a prediction was kept for it)."""
    prior = kept.get(metric) or predictions.prior_of(ex, cfg, method, cv, metric)
    session = getattr(request, "session_hash", None) or "api"
    value = metric_value(ev, metric)
    if prior is None or value is None:
        return predictions.RESIDUALS.get(session)
    return predictions.RESIDUALS.add(session, {"hash": cfg.hash, "bits": cfg.avg_bits, "method": method,
                                               "metric": metric, "predicted": list(prior[:3]), "how": prior[3],
                                               "measured": value})


@user_errors
def quick_eval(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int,
               windows: int, metric: str = "ppl", request: gr.Request = None,
               progress: gr.Progress = gr.Progress()  # noqa: B008 (Gradio injects it by this default)
               ) -> tuple[Any, ...]:
    """Outputs: (result md, front figure, table, front md, summary md, details JSON, residual figure)."""
    b, ms, mt = check_budget(budget), check_methods(methods), check_metric(metric)
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = state.MODELS.get(model)
    cfg = ex.config(h)
    m = primary_method(ex, ms)
    progress(0, desc="GP prediction before measuring")
    kept = predictions.record(ex, cfg, m, cv)  # before the measurement enters the GP

    def step(fraction: float) -> None:  # after each window
        progress(fraction, desc=f"perplexity and KL over {cv.windows} windows")

    progress(0, desc=f"perplexity and KL over {cv.windows} windows")
    ev, cached = ex.evaluate(cfg, m, cv.seqlen, cv.windows, progress=step, corpus=cv.corpus)
    if not cached:
        state.FRONTS.drop(model)
    fr = fronts(model, b, ms, cv, fresh=not cached, metric=mt)
    d = describe_selection(model, cfg, ms, cv, mt)
    summary, _ = selection_md(d)
    fig = figure(model, fr, b, ms, cv, marker(cfg, metric_value(ev, mt), d[f"predicted_{mt}"]), mt)
    rows = _residuals(ex, cfg, m, cv, mt, kept, ev, request)
    return (_result_md(m, h, cfg, ev, cached), fig, table_rows(fr), front_md(fr, b, mt), summary, d,
            figures.residual_figure(rows, mt))
