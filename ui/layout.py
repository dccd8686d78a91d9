"""The explorer's layout and event wiring (the callbacks are in :mod:`ui.handlers`).

Light events (front, selection) run up to 4 at a time; heavy ones (quick eval, sample, export)
share one queue (``concurrency_id="heavy"``), one at a time, so a waiting eval never blocks a
selection. Every event the page uses has an ``api_name`` (``gradio_client`` can drive it).

Events take their inputs unprocessed (``preprocess=False``): Gradio's own checks of a dropdown's or
a radio's value echo a rejected value unescaped and whole into the error toast, so the handlers
(:mod:`ui.handlers`) are the one place every argument is checked, and every message they send is
escaped. :class:`StrictBlocks` refuses calls with extra arguments, which Gradio drops silently.
"""

from __future__ import annotations

import gradio as gr

from coalora import __version__, limits
from ui import bridge, guard, handlers, panels


class StrictBlocks(gr.Blocks):
    """``gr.Blocks`` that refuses a call carrying more or fewer arguments than its event takes, in one
    sentence (Gradio drops extra arguments silently and answers too few with no message), so a
    malformed API call is an error, not a guess."""

    def validate_inputs(self, block_fn, inputs: list) -> None:
        want, got = len(block_fn.inputs), len(inputs)
        name = f"/{block_fn.api_name}" if isinstance(block_fn.api_name, str) else "this event"
        if got != want:
            fix = "drop the extra ones" if got > want else "pass all of them, in order (the API page lists them)"
            raise gr.Error(f"{name} takes {want} arguments, got {got}; {fix}", print_exception=False)
        why = _argument_problem(inputs)
        if why:
            raise gr.Error(f"{name} takes text, numbers and lists of them; {why}", print_exception=False)


def _argument_problem(value, max_depth: int = 8) -> str:
    """What makes a request's arguments unacceptable before Gradio walks them ("" when nothing): a
    Gradio file reference (a dict with ``meta._type == "gradio.FileData"``, which Gradio would try
    to copy into its cache) or nesting deeper than ``max_depth`` (Gradio walks it recursively).
    Walked without recursion; the request body's size cap (:mod:`ui.guard`) bounds the work."""
    todo = [(value, 0)]
    while todo:
        x, depth = todo.pop()
        if depth > max_depth:
            return f"these nest deeper than {max_depth} levels"
        if isinstance(x, dict):
            meta = x.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                return "files are not taken here"
            todo.extend((v, depth + 1) for v in x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend((v, depth + 1) for v in x)
    return ""


ABOUT_TEMPLATE = """
### What you are looking at

- **CoA-LoRA** ([arXiv 2509.25214](https://arxiv.org/abs/2509.25214)) trains *one* configuration-aware
  network that maps every layer's quantization configuration to an r x r matrix U; the shared LoRA pair
  (A, B) becomes (U A, B). Any configuration gets its adapter in milliseconds, with no fine-tuning.
- **Quantization space** (LQ-LoRA): per matrix, NormalFloat weights of b0 in {B0_BITS} bits in blocks
  of B0 in {BLOCK0}, their absmax scales quantized to b1 in {B1_BITS} bits in blocks of B1 in {BLOCK1},
  and those scales' scales stored as {B2}: {N_CONFIGS} configurations per matrix.
- **Bits** are *average bits per weight including all scale storage*, weighted by each matrix's
  number of parameters: `b0 + b1/B0 + b2/(B0 B1)` per matrix, over the quantized matrices only
  (embeddings and norms stay in full precision).
- **Perplexity** is token-level `exp(mean NLL)` over non-overlapping windows of the held-out text
  (`windows x seqlen` tokens, both recorded with every result). The windows are picked by the eval spec
  `strided-v1`: spread evenly over every held-out play (beginning, middle and end), not the opening of
  the first one. Numbers are comparable only within one convention and spec, and the front is fitted
  on one at a time.
- **KL divergence** is the mean per-token KL(p_unquantized || p_model) in nats, on the same windows,
  against the unquantized model's next-token distribution (computed once and cached). Unlike
  perplexity it is 0 only for a model that predicts exactly like the unquantized one, so an adapter
  that also adapts the model to Shakespeare (lower perplexity) can still have a larger KL. The
  *Y axis* selector fits and shows the front on either.
- **Predicted** means the posterior of a Gaussian process (botorch `SingleTaskGP`) fitted to the stored
  log-perplexities (or log KL) of this model, method and convention, on two features per configuration (average
  bits and the allocator's summed quantization error); the band is +-2 posterior standard deviations
  (narrower than it should be: about 70% of held-out points fall inside it).
  Measured configurations are shown at their measured value. *Best within budget* minimises
  mean + 1 sigma (a likely-good pick, not the luckiest guess). Diamonds (legend, hidden by default) are
  the EHVI proposals: the unmeasured configurations whose evaluation would most grow the front.
- **Quick eval** applies the configuration (only changed matrices are re-quantized), adds the generated
  adapter and measures perplexity; the result is stored in DuckDB and the GP refits.
- The comparison of methods (tab *Methods*) is the protocol's: `coalora compare`, equal compute, several
  seeds, intervals; the seed results are described in `data/README.md`.
"""


def about() -> str:
    """The About tab, its numbers taken from the code's constants (:mod:`coalora.quant.config`,
    :mod:`coalora.search.pareto`), so the text cannot drift from what the app computes."""
    from coalora.quant.config import ALL_CONFIGS, FIELD_VALUES
    from coalora.search.pareto import HV_DEFINITION

    def braces(vals) -> str:
        return "{" + ", ".join(map(str, vals)) + "}"

    b0, b1, b2, blk0, blk1 = FIELD_VALUES
    text = (ABOUT_TEMPLATE.replace("{B0_BITS}", braces(b0)).replace("{B1_BITS}", braces(b1))
            .replace("{B2}", " / ".join(map(str, b2))).replace("{BLOCK0}", braces(blk0))
            .replace("{BLOCK1}", braces(blk1)).replace("{N_CONFIGS}", str(len(ALL_CONFIGS))))
    return text + f"- **Hypervolume** (Explore, Search history): {HV_DEFINITION['ppl']}.\n"


def build_app(model: str = "smollm2-135m", warm: bool = True) -> gr.Blocks:
    """The explorer for ``model`` (the default selection). ``warm`` loads the model and fits its front
    now, so the first page shows a front in about a second."""
    handlers.MODELS.default = model  # the one test model the page may offer is the operator's
    if warm:
        handlers.warm(model)
    with StrictBlocks(title="coalora explorer",
                      delete_cache=(limits.CACHE_SWEEP_S, limits.EXPORT_KEEP_S)) as demo:
        gr.Markdown(
            f"# coalora {__version__}: configuration-aware LoRA explorer\n"
            "Pick a model and a bit budget, click a configuration on the predicted Pareto front to generate its "
            "adapter on the fly, evaluate it, export it. ([CoA-LoRA, arXiv 2509.25214]"
            "(https://arxiv.org/abs/2509.25214); conventions in the *About* tab.)"
        )
        default_model = gr.State(model)
        selected = gr.Textbox(visible=False, elem_id="selected-hash")  # not a State: the API takes it too
        pending = gr.State("")
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    model_dd = gr.Dropdown(handlers.MODELS.choices(model), value=model, label="Model",
                                           elem_id="model")
                    eval_set = gr.Dropdown(list(handlers.EVAL_SETS), value="shakespeare", label="Eval set",
                                           interactive=len(handlers.EVAL_SETS) > 1, elem_id="eval-set",
                                           info="held-out text; more with app.py --eval-set NAME=PATH")
                    budget = gr.Slider(*handlers.BUDGET_RANGE, value=4.0, step=0.001, label="Budget (average bits)",
                                       elem_id="budget")
                    methods = gr.CheckboxGroup(handlers.METHOD_CHOICES, value=handlers.DEFAULT_METHODS,
                                               label="Methods", elem_id="methods")
                    metric = gr.Radio(handlers.METRIC_CHOICES, value="ppl", label="Y axis", elem_id="metric",
                                      info="the front's objective next to average bits")
                    with gr.Accordion("Evaluation settings", open=False):
                        seqlen = gr.Dropdown(list(handlers.SEQLENS), value=256, label="Tokens per window")
                        windows = gr.Slider(1, handlers.MAX_WINDOWS, value=8, step=1, label="Windows")
                    best_btn = gr.Button("Select best within budget", elem_id="select-best")
                    summary = gr.Markdown(elem_id="model-summary")
                with gr.Column(scale=3, elem_id="plot-col"):
                    front_plot = gr.Plot(label="Front: average bits vs. perplexity or KL divergence",
                                         elem_id=bridge.FRONT_PLOT)
                    with gr.Row():
                        yscale = gr.Radio([("log", "log"), ("linear", "linear")], value="log", label="Y scale",
                                          elem_id="view-yscale", min_width=120)
                        yrange = gr.Radio([("where methods differ (>= 3 bits)", "focus"), ("full range", "full")],
                                          value="focus", label="Y range", elem_id="view-yrange", min_width=200)
                        xaxis = gr.Radio([("average bits", "bits"), ("model size (MB)", "mb")], value="bits",
                                         label="X axis", elem_id="view-x", min_width=160)
                    front_md = gr.Markdown(elem_id="front-summary")
            bridge_box = gr.Textbox(visible=False)
            bridge_btn = gr.Button("select clicked point", elem_id=bridge.BRIDGE_BUTTON)
            with gr.Row():
                with gr.Column(scale=2):
                    adapter_md = gr.Markdown("Click a point on the front (or a row of the table below) to select "
                                             "a configuration.", elem_id="adapter-time")
                    selection_md = gr.Markdown(elem_id="selection-summary")
                    with gr.Row():
                        eval_btn = gr.Button("Quick eval", variant="primary", elem_id="quick-eval")
                        export_btn = gr.Button("Export bundle", elem_id="export")
                    eval_md = gr.Markdown(elem_id="eval-result")
                    files = gr.File(label="Export: bundle (zip) and configuration JSON", file_count="multiple",
                                    interactive=False, elem_id="export-files")
                    export_md = gr.Markdown(elem_id="export-note")
                    share = gr.Textbox(label="Share link (restores model, eval set, budget, methods, windows, selection "
                                             "and pinned comparison)",
                                       buttons=["copy"], interactive=False, elem_id="share-link")
                with gr.Column(scale=2):
                    heatmap = gr.Plot(label="Bits per layer", elem_id="heatmap")
                    residual_plot = gr.Plot(label="Predicted vs measured (this page's Quick evals)",
                                            elem_id="residuals")
            with gr.Accordion("Sample: continue a prompt with the selected configuration", open=False):
                prompt = gr.Textbox("ROMEO:\nBut soft, what light", label="Prompt", lines=2,
                                    max_length=limits.MAX_PROMPT_CHARS)
                new_tokens = gr.Slider(1, limits.MAX_NEW_TOKENS, value=24, step=1, label="New tokens")
                sample_btn = gr.Button("Sample", elem_id="sample")
                with gr.Row():
                    quant_txt = gr.Textbox(label="Quantized (with the CoA-LoRA adapter when ticked)", lines=4,
                                          interactive=False, elem_id="sample-quantized")
                    dense_txt = gr.Textbox(label="Unquantized", lines=4, interactive=False)
                sample_md = gr.Markdown()
            with gr.Accordion("Compare: pin a selection, select another", open=True, elem_id="compare-panel"):
                with gr.Row():
                    pin_btn = gr.Button("Pin for comparison (A)", elem_id="pin")
                    unpin_btn = gr.Button("Unpin", elem_id="unpin")
                compare_md = gr.Markdown(handlers.NO_PIN, elem_id="compare")
                compare_plot = gr.Plot(label="Bits per layer: A, B and B - A", elem_id="compare-plot")
            with gr.Accordion("Per-layer table of the selection (click a header to sort)", open=False):
                layers = gr.Dataframe(headers=downloads_columns(), interactive=False, elem_id="layer-table")
            with gr.Accordion("Downloads: CSV and Parquet", open=False):
                with gr.Row():
                    dl_front = gr.Button("Front: every candidate", elem_id="download-front")
                    dl_evals = gr.Button("Stored evaluations", elem_id="download-evaluations")
                    dl_layers = gr.Button("Selection's per-layer table", elem_id="download-layers")
                dl_files = gr.File(label="CSV and Parquet", file_count="multiple", interactive=False,
                                   elem_id="download-files")
            with gr.Accordion("Front points (select a row)", open=False):
                table = gr.Dataframe(headers=handlers.TABLE_HEADERS, interactive=False, elem_id="front-table")
            with gr.Accordion("Selection details (JSON)", open=False):
                details = gr.JSON()
        with gr.Tab("Search history"):
            hv_plot = gr.Plot(label="Hypervolume of the training set per search round")
        with gr.Tab("Methods"):
            cmp_md = gr.Markdown(elem_id="comparison")
            cmp_img = gr.Image(label="The protocol comparison's fronts", type="filepath", interactive=False,
                               elem_id="comparison-front")
        with gr.Tab("About"):
            gr.Markdown(about(), elem_id="about")

        view = [model_dd, eval_set, budget, methods, seqlen, windows, metric]
        front_out = [front_plot, table, front_md]
        select_out = [selected, selection_md, adapter_md, heatmap, details, front_plot, share, layers, compare_md,
                      compare_plot]
        raw = {"preprocess": False}  # the handlers check every argument (module docstring)
        light = {"concurrency_limit": 4, "concurrency_id": "light", **raw}
        heavy = {"concurrency_limit": 1, "concurrency_id": "heavy", **raw}

        load = demo.load(handlers.on_load, [default_model], [model_dd, eval_set, budget, pending, methods, seqlen, windows],
                         api_name=False, **raw)
        load.then(handlers.refresh_front, [*view, pending], front_out, api_name=False, **light) \
            .then(handlers.restore_selection, [pending, *view], select_out, api_name=False, **light) \
            .then(handlers.model_summary, [model_dd], [summary], api_name=False, **raw)
        demo.load(handlers.comparison, None, [cmp_md, cmp_img], api_name=False)
        demo.load(handlers.hv_history, [default_model], [hv_plot], api_name=False, **raw)

        for ctl in (eval_set, methods, seqlen, windows, metric):
            ctl.change(handlers.refresh_front, [*view, selected], front_out, api_name=False, trigger_mode="always_last",
                       **light)
        # the budget box: debounced in the page, clamped values written back (handlers.refresh_budget)
        budget.change(handlers.refresh_budget, [*view, selected], [budget, *front_out], api_name=False,
                      js=bridge.debounce_js(view.index(budget)), trigger_mode="always_last", **light)
        for ctl, part in ((yscale, "yscale"), (yrange, "yrange"), (xaxis, "x")):
            ctl.change(None, [ctl], None, js=bridge.set_view_js(part), api_name=False, **raw)
        model_dd.change(lambda: "", None, [selected], api_name=False) \
            .then(handlers.refresh_front, [*view, selected], front_out, api_name=False, **light) \
            .then(handlers.model_summary, [model_dd], [summary], api_name=False, **raw) \
            .then(handlers.hv_history, [model_dd], [hv_plot], api_name=False, **raw)

        # Named endpoints (the API page lists them; gradio_client drives them).
        gr.api(handlers.api_front, api_name="front")
        bridge_btn.click(handlers.select, [bridge_box, *view], select_out, js=bridge.READ_POINT,
                         api_name="select", trigger_mode="always_last", **light)  # a click is never dropped
        table.select(handlers.select_row, view, select_out, api_name=False, **light)
        best_btn.click(handlers.select_best, view, select_out, api_name="select_best", **light)
        eval_btn.click(handlers.quick_eval, [selected, *view],
                       [eval_md, front_plot, table, front_md, selection_md, details, residual_plot],
                       api_name="quick_eval", show_progress_on=[eval_md], **heavy)
        sample_btn.click(handlers.sample, [selected, model_dd, methods, prompt, new_tokens],
                         [quant_txt, dense_txt, sample_md], api_name="sample", **heavy)
        pin_btn.click(panels.pin, [selected, *view], select_out, api_name=False, **light)
        unpin_btn.click(panels.unpin, [selected, *view], select_out, api_name=False, **light)
        dl_front.click(panels.front_files, view, [dl_files], api_name=False, show_progress_on=[dl_files], **heavy)
        dl_evals.click(panels.evaluation_files, [model_dd], [dl_files], api_name=False, **light)
        dl_layers.click(panels.layer_files, [selected, model_dd], [dl_files], api_name=False, **light)
        export_btn.click(handlers.export, [selected, model_dd, eval_set, seqlen, windows], [files, export_md],
                         api_name="export", **heavy)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def downloads_columns() -> list[str]:
    from ui.downloads import LAYER_COLUMNS

    return list(LAYER_COLUMNS)


def launch_kwargs() -> dict:
    """What ``launch`` needs besides host and port: the click bridge, its CSS, the download dir,
    no error details for the browser, and the request guard (:mod:`ui.guard`)."""
    return {"js": bridge.JS, "css": bridge.CSS, "allowed_paths": [str(handlers.EXPORT_DIR)],
            "max_file_size": "1mb", "show_error": False, "app_kwargs": guard.app_kwargs()}
