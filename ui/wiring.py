"""The page's events: which handler each control triggers, with what inputs and outputs, and how
the events share the server.

Light events (front, selection) run up to 4 at a time; heavy ones (quick eval, sample, export,
the front download) share one queue (``concurrency_id="heavy"``), one at a time, so a waiting eval
never blocks a selection. Every event the page's API offers has an ``api_name`` (``gradio_client``
can drive it).

Events take their inputs unprocessed (``preprocess=False``): Gradio's own checks of a dropdown's or
a radio's value echo a rejected value unescaped and whole into the error toast, so the handlers are
the one place every argument is checked (:mod:`ui.inputs`), and every message they send is escaped
(:mod:`ui.messages`). :class:`ui.strict.StrictBlocks` refuses calls with extra arguments.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ui import bridge, bundle, front_view, panels, quick_eval, reports, sample, selection, share

RAW = {"preprocess": False}
"""Every event: inputs unprocessed (module docstring)."""
LIGHT = {"concurrency_limit": 4, "concurrency_id": "light", **RAW}
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy", **RAW}


def _view(p: SimpleNamespace) -> list:
    """The controls every front and selection event reads, in the handlers' argument order."""
    return [p.model_dd, p.eval_set, p.budget, p.methods, p.seqlen, p.windows, p.metric]


def _select_out(p: SimpleNamespace) -> list:
    """The outputs of :func:`ui.selection.select` (:data:`ui.selection.SELECT_OUTPUTS` of them)."""
    return [p.selected, p.selection_md, p.adapter_md, p.heatmap, p.details, p.front_plot, p.share, p.layers,
            p.compare_md, p.compare_plot]


def _wire_load(demo: gr.Blocks, p: SimpleNamespace) -> None:
    """Page load: restore a share link's view, draw its front, then select its configuration."""
    view, front_out = _view(p), [p.front_plot, p.table, p.front_md]
    load = demo.load(share.on_load, [p.default_model],
                     [p.model_dd, p.eval_set, p.budget, p.pending, p.methods, p.seqlen, p.windows],
                     api_name=False, **RAW)
    load.then(front_view.refresh_front, [*view, p.pending], front_out, api_name=False, **LIGHT) \
        .then(selection.restore_selection, [p.pending, *view], _select_out(p), api_name=False, **LIGHT) \
        .then(reports.model_summary, [p.model_dd], [p.summary], api_name=False, **RAW)
    demo.load(reports.comparison, None, [p.cmp_md, p.cmp_img], api_name=False)
    demo.load(reports.hv_history, [p.default_model], [p.hv_plot], api_name=False, **RAW)


def _wire_front(p: SimpleNamespace) -> None:
    """The controls that redraw the front: view settings, the (debounced) budget box, the model."""
    view, front_out = _view(p), [p.front_plot, p.table, p.front_md]
    for ctl in (p.eval_set, p.methods, p.seqlen, p.windows, p.metric):
        ctl.change(front_view.refresh_front, [*view, p.selected], front_out, api_name=False,
                   trigger_mode="always_last", **LIGHT)
    # the budget box: debounced in the page, clamped values written back (front_view.refresh_budget)
    p.budget.change(front_view.refresh_budget, [*view, p.selected], [p.budget, *front_out], api_name=False,
                    js=bridge.debounce_js(view.index(p.budget)), trigger_mode="always_last", **LIGHT)
    for ctl, part in ((p.yscale, "yscale"), (p.yrange, "yrange"), (p.xaxis, "x")):
        ctl.change(None, [ctl], None, js=bridge.set_view_js(part), api_name=False, **RAW)
    p.model_dd.change(lambda: "", None, [p.selected], api_name=False) \
        .then(front_view.refresh_front, [*view, p.selected], front_out, api_name=False, **LIGHT) \
        .then(reports.model_summary, [p.model_dd], [p.summary], api_name=False, **RAW) \
        .then(reports.hv_history, [p.model_dd], [p.hv_plot], api_name=False, **RAW)


def _wire_actions(p: SimpleNamespace) -> None:
    """The named endpoints and the buttons: select, quick eval, sample, export, pin, downloads."""
    view, select_out = _view(p), _select_out(p)
    gr.api(front_view.api_front, api_name="front")
    p.bridge_btn.click(selection.select, [p.bridge_box, *view], select_out, js=bridge.READ_POINT,
                       api_name="select", trigger_mode="always_last", **LIGHT)  # a click is never dropped
    p.table.select(selection.select_row, view, select_out, api_name=False, **LIGHT)
    p.best_btn.click(selection.select_best, view, select_out, api_name="select_best", **LIGHT)
    p.eval_btn.click(quick_eval.quick_eval, [p.selected, *view, p.task_docs],
                     [p.eval_md, p.front_plot, p.table, p.front_md, p.selection_md, p.details, p.residual_plot],
                     api_name="quick_eval", show_progress_on=[p.eval_md], **HEAVY)
    p.sample_btn.click(sample.sample, [p.selected, p.model_dd, p.methods, p.prompt, p.new_tokens],
                       [p.quant_txt, p.dense_txt, p.sample_md], api_name="sample", **HEAVY)
    p.pin_btn.click(panels.pin, [p.selected, *view], select_out, api_name=False, **LIGHT)
    p.unpin_btn.click(panels.unpin, [p.selected, *view], select_out, api_name=False, **LIGHT)
    p.dl_front.click(panels.front_files, view, [p.dl_files], api_name=False, show_progress_on=[p.dl_files], **HEAVY)
    p.dl_evals.click(panels.evaluation_files, [p.model_dd], [p.dl_files], api_name=False, **LIGHT)
    p.dl_layers.click(panels.layer_files, [p.selected, p.model_dd], [p.dl_files], api_name=False, **LIGHT)
    p.export_btn.click(bundle.export, [p.selected, p.model_dd, p.eval_set, p.seqlen, p.windows],
                       [p.files, p.export_md], api_name="export", **HEAVY)


def wire(demo: gr.Blocks, p: SimpleNamespace) -> None:
    """Connect every event of the page built in ``demo`` (components in ``p``, :class:`ui.layout.Page`)."""
    _wire_load(demo, p)
    _wire_front(p)
    _wire_actions(p)

