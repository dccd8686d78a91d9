"""The app's layout and event wiring."""

from __future__ import annotations

import gradio as gr

from coalora import __version__
from ui import handlers


def build_app(model: str = "smollm2-135m") -> gr.Blocks:
    """The explorer. Until the front and adapter views land it shows the loaded model and a quick eval."""
    with gr.Blocks(title="coalora") as demo:
        gr.Markdown(
            f"# coalora {__version__}\n"
            "Configuration-aware LoRA ([CoA-LoRA, arXiv 2509.25214](https://arxiv.org/abs/2509.25214)) "
            "for mixed-precision quantized LLMs."
        )
        model_box = gr.Textbox(value=model, label="Model", interactive=False)
        summary = gr.Markdown(elem_id="model-summary")
        with gr.Row():
            windows = gr.Slider(1, 32, value=4, step=1, label="Windows")
            seqlen = gr.Slider(64, 1024, value=256, step=64, label="Tokens per window")
        run = gr.Button("Quick perplexity (unquantized)", variant="primary")
        result = gr.Markdown(elem_id="ppl-result")
        demo.load(handlers.model_summary, inputs=model_box, outputs=summary, api_name="model_summary")
        run.click(handlers.quick_perplexity, inputs=[model_box, windows, seqlen], outputs=result, api_name="quick_perplexity")
    demo.queue(default_concurrency_limit=1)
    return demo
