"""Sample: continue a prompt greedily under the selected configuration and with the unquantized model.

The quantized continuation uses the configuration's generated CoA-LoRA adapter when CoA-LoRA is the
shown method (:func:`ui.front_view.primary_method`), else the quantized weights alone; both are
timed, so the page shows what the configuration does to the text and to the speed.
"""

from __future__ import annotations

from coalora import limits
from ui import figures, state
from ui.front_view import primary_method
from ui.inputs import check_hash, check_int, check_methods, check_prompt
from ui.messages import user_errors


@user_errors
def sample(config_hash: str, model: str, methods: list[str], prompt: str, max_new_tokens: int) -> tuple[str, str, str]:
    """Outputs: (continuation under the configuration, continuation of the unquantized model, timing md)."""
    h, ms = check_hash(config_hash), check_methods(methods)
    text = check_prompt(prompt)
    n = check_int(max_new_tokens, "max new tokens", 1, limits.MAX_NEW_TOKENS)
    ex = state.MODELS.get(model)
    cfg = ex.config(h)
    m = primary_method(ex, ms)
    r = ex.sample(cfg, text, n, m)
    t = (f"{figures.method_label(m)} at {cfg.avg_bits:.3f} bits: {r['quantized_s']:.2f} s; unquantized: "
         f"{r['dense_s']:.2f} s (greedy, {n} new tokens).")
    return text + r["quantized"], text + r["dense"], t
