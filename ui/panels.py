"""Events of the comparison and download panels (the page's other events are in :mod:`ui.handlers`).

Arguments are checked by the same ``check_*`` functions as every other event; errors are one
escaped toast (:func:`ui.handlers.user_errors`).
"""

from __future__ import annotations

import gradio as gr

from ui import compare, downloads
from ui import handlers as h


@h.user_errors
def pin(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
        metric: str = "ppl", request: gr.Request = None):
    """Pin the selection as comparison A; outputs those of :func:`ui.handlers.select` (the pinned
    configuration stays selected until another is picked)."""
    ch = h.check_hash(config_hash)
    h.MODELS.get(model).config(ch)  # one clear error for an unknown hash, before pinning it
    compare.PINS.set(compare.session_of(request), ch)
    h.info(f"pinned {ch} as A; select another configuration to compare")
    return h.select(ch, model, eval_set, budget, methods, seqlen, windows, metric, request)


@h.user_errors
def unpin(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
          metric: str = "ppl", request: gr.Request = None):
    """Drop the pinned configuration; outputs those of :func:`ui.handlers.select` (or unchanged
    when nothing is selected)."""
    compare.PINS.set(compare.session_of(request), "")
    if not config_hash:
        return tuple(gr.skip() for _ in range(h.SELECT_OUTPUTS - 2)) + (h.NO_PIN, None)
    return h.select(config_hash, model, eval_set, budget, methods, seqlen, windows, metric, request)


def _stem(model: str) -> str:
    return model.replace("/", "--")


@h.user_errors
def front_files(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                metric: str = "ppl") -> list[str]:
    """The shown methods' front candidates (:func:`ui.downloads.front_table`) as CSV and Parquet."""
    b, ms = h.check_budget(budget), h.check_methods(methods)
    h.check_metric(metric)  # the table carries ppl and KL both
    cv = h.check_eval(eval_set, seqlen, windows)
    ex = h.MODELS.get(model)
    shown = [m for m in ms if m in ex.methods]
    if not shown:
        raise h.CoaloraError("no method ticked: tick CoA-LoRA or no adapter to download its front")
    df = downloads.front_table(ex, shown, cv, h.sizes(model), h.fronts(model, b, ms, cv, metric="ppl"))
    return downloads.write(h.EXPORT_DIR, f"front-{_stem(model)}-{cv.seqlen}x{cv.windows}", df)


@h.user_errors
def evaluation_files(model: str) -> list[str]:
    """The model's stored evaluations as CSV and Parquet."""
    ex = h.MODELS.get(model)
    return downloads.write(h.EXPORT_DIR, f"evaluations-{_stem(model)}", downloads.evaluations_table(ex))


@h.user_errors
def layer_files(config_hash: str, model: str) -> list[str]:
    """The selected configuration's per-layer table as CSV and Parquet."""
    ch = h.check_hash(config_hash)
    ex = h.MODELS.get(model)
    cfg = ex.config(ch)
    return downloads.write(h.EXPORT_DIR, f"layers-{_stem(model)}-{cfg.hash}", downloads.layer_table(ex, cfg))
