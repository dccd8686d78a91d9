"""Events of the comparison and download panels.

Arguments are checked by the same ``check_*`` functions as every other event (:mod:`ui.inputs`);
errors are one escaped toast (:func:`ui.messages.user_errors`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from coalora.errors import CoaloraError
from ui import compare, downloads, state
from ui.convention import check_eval
from ui.front_view import fronts
from ui.inputs import check_budget, check_hash, check_methods, check_metric
from ui.messages import info, user_errors
from ui.selection import NO_PIN, SELECT_OUTPUTS, select


@user_errors
def pin(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
        metric: str = "ppl", request: gr.Request = None) -> tuple[Any, ...]:
    """Pin the selection as comparison A; outputs those of :func:`ui.selection.select` (the pinned
    configuration stays selected until another is picked)."""
    ch = check_hash(config_hash)
    state.MODELS.get(model).config(ch)  # one clear error for an unknown hash, before pinning it
    compare.PINS.set(compare.session_of(request), ch)
    info(f"pinned {ch} as A; select another configuration to compare")
    return select(ch, model, eval_set, budget, methods, seqlen, windows, metric, request)


@user_errors
def unpin(config_hash: str, model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
          metric: str = "ppl", request: gr.Request = None) -> tuple[Any, ...]:
    """Drop the pinned configuration; outputs those of :func:`ui.selection.select` (or unchanged
    when nothing is selected)."""
    compare.PINS.set(compare.session_of(request), "")
    if not config_hash:
        return tuple(gr.skip() for _ in range(SELECT_OUTPUTS - 2)) + (NO_PIN, None)
    return select(config_hash, model, eval_set, budget, methods, seqlen, windows, metric, request)


def _stem(model: str) -> str:
    """``model`` as a file-name part (a hub id's ``/`` becomes ``--``)."""
    return model.replace("/", "--")


@user_errors
def front_files(model: str, eval_set: str, budget: float, methods: list[str], seqlen: int, windows: int,
                metric: str = "ppl") -> list[str]:
    """The shown methods' front candidates (:func:`ui.downloads.front_table`) as CSV and Parquet."""
    b, ms = check_budget(budget), check_methods(methods)
    check_metric(metric)  # the table carries ppl and KL both
    cv = check_eval(eval_set, seqlen, windows)
    ex = state.MODELS.get(model)
    shown = [m for m in ms if m in ex.methods]
    if not shown:
        raise CoaloraError("no method ticked: tick CoA-LoRA or no adapter to download its front")
    df = downloads.front_table(ex, shown, cv, state.sizes(model), fronts(model, b, ms, cv, metric="ppl"))
    return downloads.write(state.EXPORT_DIR, f"front-{_stem(model)}-{cv.seqlen}x{cv.windows}", df)


@user_errors
def evaluation_files(model: str) -> list[str]:
    """The model's stored evaluations as CSV and Parquet."""
    ex = state.MODELS.get(model)
    return downloads.write(state.EXPORT_DIR, f"evaluations-{_stem(model)}", downloads.evaluations_table(ex))


@user_errors
def layer_files(config_hash: str, model: str) -> list[str]:
    """The selected configuration's per-layer table as CSV and Parquet."""
    ch = check_hash(config_hash)
    ex = state.MODELS.get(model)
    cfg = ex.config(ch)
    return downloads.write(state.EXPORT_DIR, f"layers-{_stem(model)}-{cfg.hash}", downloads.layer_table(ex, cfg))
