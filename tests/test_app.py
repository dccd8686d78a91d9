from __future__ import annotations

import gradio as gr


def test_app_builds_and_summarises_the_model():
    from ui import handlers
    from ui.layout import build_app

    demo = build_app("tiny-llama")
    assert isinstance(demo, gr.Blocks)
    text = handlers.model_summary("tiny-llama")
    assert "14 quantizable linear layers" in text


def test_handler_turns_user_errors_into_gradio_errors():
    import pytest

    from ui import handlers

    with pytest.raises(gr.Error, match="unknown model"):
        handlers.model_summary("nope")
