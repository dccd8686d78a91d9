"""Plain functions behind the app's events (testable without a browser)."""

from __future__ import annotations

from functools import lru_cache

import gradio as gr

from coalora.errors import CoaloraError


@lru_cache(maxsize=2)
def loaded_model(name: str):
    """Load a model once per process; the app serves one model at a time per name."""
    from coalora.models import load_model

    return load_model(name)


def model_summary(name: str) -> str:
    """Markdown summary of the loaded model: parameters and quantization targets."""
    from coalora.models import describe

    try:
        model, _ = loaded_model(name)
    except CoaloraError as e:
        raise gr.Error(str(e)) from None
    d = describe(model)
    return (
        f"**{name}** is loaded: {d['parameters'] / 1e6:.1f} M parameters, {d['targets']} quantizable linear layers "
        f"({d['target_parameters'] / 1e6:.1f} M parameters) in {d['blocks']} blocks, context {d['context_length']} tokens."
    )


def quick_perplexity(name: str, windows: int, seqlen: int) -> str:
    """Perplexity of the unquantized model on the first windows of the held-out text."""
    from coalora.evaluate import evaluate_corpus

    try:
        model, tok = loaded_model(name)
        r = evaluate_corpus(model, tok, seqlen=int(seqlen), windows=int(windows), progress=False)
    except CoaloraError as e:
        raise gr.Error(str(e)) from None
    return (
        f"Perplexity **{r.ppl:.3f}** on `{r.dataset}` ({r.windows} windows x {r.seqlen} tokens, {r.convention}), "
        f"{r.tokens_per_s:.0f} tokens/s."
    )
