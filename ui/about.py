"""The About tab: what the explorer shows and under which conventions (bits, perplexity, KL, the GP,
the hypervolume), its numbers taken from the code's constants so the text cannot drift from what
the app computes."""

from __future__ import annotations

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
  with the noise the fit estimated (`coalora front --validate` measures how many held-out points fall
  inside it; the README gives the shipped store's figures).
  Measured configurations are shown at their measured value. *Best within budget* minimises
  mean + 1 sigma (a likely-good pick, not the luckiest guess). Diamonds (legend, hidden by default) are
  the EHVI proposals: the unmeasured configurations whose evaluation would most grow the front.
- **Next-line error rate** is 1 - acc_norm of lm-evaluation-harness's zero-shot multiple choice on the
  local task `{TASK}` (pick a held-out play's true next line among four of its lines; chance 0.25):
  the third *Y axis*. Its points are measured on {APP_LIMIT} of its {MAX_DOCS} items unless you set
  *lm-eval task documents*; results of different item counts are never fitted together, and its band
  does not include lm-eval's standard error (about 0.05 at {APP_LIMIT} items).
- **Quick eval** applies the configuration (only changed matrices are re-quantized), adds the generated
  adapter and measures perplexity and KL, and the task when asked; the result is stored in DuckDB
  and the GP refits.
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

    from coalora.evaluation.tasks import APP_LIMIT
    from coalora.limits import APP_MAX_TASK_DOCS
    from ui.inputs import APP_TASK

    b0, b1, b2, blk0, blk1 = FIELD_VALUES
    text = (ABOUT_TEMPLATE.replace("{B0_BITS}", braces(b0)).replace("{B1_BITS}", braces(b1))
            .replace("{B2}", " / ".join(map(str, b2))).replace("{BLOCK0}", braces(blk0))
            .replace("{BLOCK1}", braces(blk1)).replace("{N_CONFIGS}", str(len(ALL_CONFIGS)))
            .replace("{TASK}", APP_TASK).replace("{APP_LIMIT}", str(APP_LIMIT))
            .replace("{MAX_DOCS}", str(APP_MAX_TASK_DOCS)))
    return text + f"- **Hypervolume** (Explore, Search history): {HV_DEFINITION['ppl']}.\n"


