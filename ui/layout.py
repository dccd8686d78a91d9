"""The explorer's page: one builder per panel, then the event wiring (:mod:`ui.wiring`).

Each builder creates its panel's components inside the current Gradio context and records them
on the :class:`Page`, which the wiring reads. The element ids (``elem_id``) are what the page's
JavaScript (:mod:`ui.bridge`) and the browser tests find components by.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from coalora import __version__, limits
from coalora.quant.config import MAX_BITS
from ui import bridge, convention, figures, front_view, guard, state, task_eval, wiring
from ui.about import about
from ui.downloads import LAYER_COLUMNS
from ui.front_view import TABLE_HEADERS
from ui.inputs import APP_TASK, DEFAULT_METHODS, GP_METHODS, TASK_METRICS
from ui.selection import NO_PIN
from ui.strict import StrictBlocks

METHOD_CHOICES = [(label, key) for key, (label, _) in figures.METHODS.items() if key in GP_METHODS]
"""The method filter: (label, key)."""
METRIC_CHOICES = [("Perplexity", "ppl"), ("KL divergence to the unquantized model", "kld"),
                  ("Next-line error rate (lm-eval, 1 - acc_norm)", TASK_METRICS[0])]
"""The front's y axis: (label, :data:`coalora.search.front.METRICS` key or a :data:`ui.inputs.TASK_METRICS` one)."""
BUDGET_RANGE = (2.0, MAX_BITS)
"""The budget slider; values below the cheapest configuration (2.032 bits) are clamped to it
(:func:`ui.inputs.check_budget`)."""
HEADER = ("Pick a model and a bit budget, click a configuration on the predicted Pareto front to generate its "
          "adapter on the fly, evaluate it, export it. ([CoA-LoRA, arXiv 2509.25214]"
          "(https://arxiv.org/abs/2509.25214); conventions in the *About* tab.)")


class Page(SimpleNamespace):
    """The page's components by name (the builders set them, :mod:`ui.wiring` reads them)."""


def _controls(p: Page, model: str) -> None:
    """The left column: model, eval set, budget, methods, y axis, evaluation settings, best within budget."""
    p.model_dd = gr.Dropdown(state.MODELS.choices(model), value=model, label="Model", elem_id="model")
    p.eval_set = gr.Dropdown(list(convention.EVAL_SETS), value="shakespeare", label="Eval set",
                             interactive=len(convention.EVAL_SETS) > 1, elem_id="eval-set",
                             info="held-out text; more with app.py --eval-set NAME=PATH")
    p.budget = gr.Slider(*BUDGET_RANGE, value=4.0, step=0.001, label="Budget (average bits)", elem_id="budget")
    p.methods = gr.CheckboxGroup(METHOD_CHOICES, value=DEFAULT_METHODS, label="Methods", elem_id="methods")
    p.metric = gr.Radio(METRIC_CHOICES, value="ppl", label="Y axis", elem_id="metric",
                        info="the front's objective next to average bits")
    with gr.Accordion("Evaluation settings", open=False):
        p.seqlen = gr.Dropdown(list(convention.SEQLENS), value=256, label="Tokens per window")
        p.windows = gr.Slider(1, convention.MAX_WINDOWS, value=8, step=1, label="Windows")
        p.task_docs = gr.Slider(0, limits.APP_MAX_TASK_DOCS, value=0, step=10, label="lm-eval task documents",
                                elem_id="task-docs",
                                info=f"Quick eval also scores {APP_TASK} (pick a play's true next line among four) "
                                     f"on this many documents; 0: not, unless the y axis shows it (then as "
                                     f"many as its points, {task_eval.DEFAULT_DOCS} for the seed's)")
    p.best_btn = gr.Button("Select best within budget", elem_id="select-best")
    p.summary = gr.Markdown(elem_id="model-summary")


def _front_panel(p: Page) -> None:
    """The front plot, its view controls (in the browser only, :mod:`ui.bridge`) and its summary."""
    p.front_plot = gr.Plot(label="Front: average bits vs. perplexity, KL divergence or next-line error rate",
                           elem_id=bridge.FRONT_PLOT)
    with gr.Row():
        p.yscale = gr.Radio([("log", "log"), ("linear", "linear")], value="log", label="Y scale",
                            elem_id="view-yscale", min_width=120)
        p.yrange = gr.Radio([("where methods differ (>= 3 bits)", "focus"), ("full range", "full")],
                            value="focus", label="Y range", elem_id="view-yrange", min_width=200)
        p.xaxis = gr.Radio([("average bits", "bits"), ("model size (MB)", "mb")], value="bits",
                           label="X axis", elem_id="view-x", min_width=160)
    p.front_md = gr.Markdown(elem_id="front-summary")


def _selection_panel(p: Page) -> None:
    """The click bridge, the selection's summary, Quick eval and Export, share link, heatmap and residuals."""
    p.bridge_box = gr.Textbox(visible=False)
    p.bridge_btn = gr.Button("select clicked point", elem_id=bridge.BRIDGE_BUTTON)
    with gr.Row():
        with gr.Column(scale=2):
            p.adapter_md = gr.Markdown("Click a point on the front (or a row of the table below) to select "
                                       "a configuration.", elem_id="adapter-time")
            p.selection_md = gr.Markdown(elem_id="selection-summary")
            with gr.Row():
                p.eval_btn = gr.Button("Quick eval", variant="primary", elem_id="quick-eval")
                p.export_btn = gr.Button("Export bundle", elem_id="export")
            p.eval_md = gr.Markdown(elem_id="eval-result")
            p.files = gr.File(label="Export: bundle (zip) and configuration JSON", file_count="multiple",
                              interactive=False, elem_id="export-files")
            p.export_md = gr.Markdown(elem_id="export-note")
            p.share = gr.Textbox(label="Share link (restores model, eval set, budget, methods, windows, selection "
                                       "and pinned comparison)", buttons=["copy"], interactive=False,
                                 elem_id="share-link")
        with gr.Column(scale=2):
            p.heatmap = gr.Plot(label="Bits per layer", elem_id="heatmap")
            p.residual_plot = gr.Plot(label="Predicted vs measured (this page's Quick evals)", elem_id="residuals")


def _sample_panel(p: Page) -> None:
    """Sample: a prompt continued under the selection and by the unquantized model."""
    with gr.Accordion("Sample: continue a prompt with the selected configuration", open=False):
        p.prompt = gr.Textbox("ROMEO:\nBut soft, what light", label="Prompt", lines=2,
                              max_length=limits.MAX_PROMPT_CHARS)
        p.new_tokens = gr.Slider(1, limits.MAX_NEW_TOKENS, value=24, step=1, label="New tokens")
        p.sample_btn = gr.Button("Sample", elem_id="sample")
        with gr.Row():
            p.quant_txt = gr.Textbox(label="Quantized (with the CoA-LoRA adapter when ticked)", lines=4,
                                     interactive=False, elem_id="sample-quantized")
            p.dense_txt = gr.Textbox(label="Unquantized", lines=4, interactive=False)
        p.sample_md = gr.Markdown()


def _compare_panel(p: Page) -> None:
    """Compare: pin a selection (A), select another (B)."""
    with gr.Accordion("Compare: pin a selection, select another", open=True, elem_id="compare-panel"):
        with gr.Row():
            p.pin_btn = gr.Button("Pin for comparison (A)", elem_id="pin")
            p.unpin_btn = gr.Button("Unpin", elem_id="unpin")
        p.compare_md = gr.Markdown(NO_PIN, elem_id="compare")
        p.compare_plot = gr.Plot(label="Bits per layer: A, B and B - A", elem_id="compare-plot")


def _table_panels(p: Page) -> None:
    """The per-layer table, the CSV / Parquet downloads, the front table and the selection's JSON."""
    with gr.Accordion("Per-layer table of the selection (click a header to sort)", open=False):
        p.layers = gr.Dataframe(headers=list(LAYER_COLUMNS), interactive=False, elem_id="layer-table")
    with gr.Accordion("Downloads: CSV and Parquet", open=False):
        with gr.Row():
            p.dl_front = gr.Button("Front: every candidate", elem_id="download-front")
            p.dl_evals = gr.Button("Stored evaluations", elem_id="download-evaluations")
            p.dl_layers = gr.Button("Selection's per-layer table", elem_id="download-layers")
        p.dl_files = gr.File(label="CSV and Parquet", file_count="multiple", interactive=False,
                             elem_id="download-files")
    with gr.Accordion("Front points (select a row)", open=False):
        p.table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="front-table")
    with gr.Accordion("Selection details (JSON)", open=False):
        p.details = gr.JSON()


def _other_tabs(p: Page) -> None:
    """The Search history, Methods and About tabs."""
    with gr.Tab("Search history"):
        p.hv_plot = gr.Plot(label="Hypervolume of the training set per search round")
    with gr.Tab("Methods"):
        p.cmp_md = gr.Markdown(elem_id="comparison")
        p.cmp_img = gr.Image(label="The protocol comparison's fronts", type="filepath", interactive=False,
                             elem_id="comparison-front")
    with gr.Tab("About"):
        gr.Markdown(about(), elem_id="about")


def build_app(model: str = "smollm2-135m", warm: bool = True) -> gr.Blocks:
    """The explorer for ``model`` (the default selection). ``warm`` loads the model and fits its front
    now, so the first page shows a front in about a second."""
    state.MODELS.default = model  # the one test model the page may offer is the operator's
    if warm:
        front_view.warm(model)
    with StrictBlocks(title="coalora explorer",
                      delete_cache=(limits.CACHE_SWEEP_S, limits.EXPORT_KEEP_S)) as demo:
        gr.Markdown(f"# coalora {__version__}: configuration-aware LoRA explorer\n{HEADER}")
        p = Page(default_model=gr.State(model),
                 selected=gr.Textbox(visible=False, elem_id="selected-hash"),  # not a State: the API takes it too
                 pending=gr.State(""))
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    _controls(p, model)
                with gr.Column(scale=3, elem_id="plot-col"):
                    _front_panel(p)
            _selection_panel(p)
            _sample_panel(p)
            _compare_panel(p)
            _table_panels(p)
        _other_tabs(p)
        wiring.wire(demo, p)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch_kwargs() -> dict:
    """What ``launch`` needs besides host and port: the click bridge, its CSS, the download dir,
    no error details for the browser, and the request guard (:mod:`ui.guard`)."""
    return {"js": bridge.JS, "css": bridge.CSS, "allowed_paths": [str(state.EXPORT_DIR)],
            "max_file_size": "1mb", "show_error": False, "app_kwargs": guard.app_kwargs()}
