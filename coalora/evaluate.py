"""Perplexity evaluation: token perplexity over non-overlapping windows (GPTQ / LQ-LoRA convention).

    ppl = exp( sum of token NLLs / number of predicted tokens )

over the first ``windows`` non-overlapping windows of ``seqlen`` tokens of the joined held-out
text; each window predicts its last ``seqlen - 1`` tokens (no context is carried between windows,
no BOS is added). HF's sliding-window recipe (stride < window) gives lower numbers and
lm-eval's ``wikitext`` reports word perplexity, so every result records its convention, seqlen and
window count: compare numbers only within one convention.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch
    from torch import nn

CONVENTION = "token-ppl/non-overlapping"


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    """exp(mean token NLL)."""
    nll: float
    """Mean token negative log-likelihood in nats."""
    tokens: int
    """Predicted tokens: windows * (seqlen - 1)."""
    seqlen: int
    windows: int
    dataset: str
    """Corpus id, e.g. ``shakespeare:eval@3f2a9c1b``."""
    seconds: float
    tokens_per_s: float
    """Throughput over all window tokens (windows * seqlen / seconds)."""
    convention: str = CONVENTION

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    dataset: str = "",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on token windows ``[n, seqlen]`` (int64).

    The model must return ``.logits`` of shape ``[b, seqlen, vocab]`` (any HF causal LM).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if windows.dim() != 2 or windows.shape[1] < 2:
        raise CoaloraError(f"windows must be a [n, seqlen>=2] tensor, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise CoaloraError(f"batch_size must be at least 1, got {batch_size}")
    from coalora.models import context_length

    n, seqlen = windows.shape
    if hasattr(model, "config") and seqlen > context_length(model):
        raise CoaloraError(f"seqlen {seqlen} exceeds the model's context length {context_length(model)}")
    device = next(model.parameters()).device
    total_nll = 0.0
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.inference_mode(), tqdm(total=n, desc="perplexity", unit="win", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids).logits.float()
            # Sum in float64: thousands of tokens of ~3 nats each lose digits in float32.
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total_nll += float(nll.double())
            bar.update(ids.shape[0])
    model.train(was_training)
    seconds = time.perf_counter() - t0
    tokens = n * (seqlen - 1)
    mean_nll = total_nll / tokens
    if not math.isfinite(mean_nll):
        raise CoaloraError("the model produced non-finite losses (NaN/inf logits); check the model and its configuration")
    return PerplexityResult(
        ppl=math.exp(mean_nll),
        nll=mean_nll,
        tokens=tokens,
        seqlen=int(seqlen),
        windows=int(n),
        dataset=dataset,
        seconds=seconds,
        tokens_per_s=n * seqlen / seconds if seconds > 0 else float("inf"),
    )


def evaluate_corpus(
    model: nn.Module,
    tokenizer,
    *,
    corpus: str = "shakespeare",
    split: str = "eval",
    seqlen: int = 256,
    windows: int | None = 8,
    batch_size: int = 4,
    progress: bool = True,
) -> PerplexityResult:
    """Load a corpus split, window it and measure perplexity (``windows=None``: all windows)."""
    from coalora import data
    from coalora.models import context_length

    if seqlen > context_length(model):
        raise CoaloraError(f"seqlen {seqlen} exceeds the model's context length {context_length(model)}")
    c = data.load_corpus(corpus, split)
    ids = data.tokenize(tokenizer, c)
    w = data.windows(ids, seqlen, windows)
    return perplexity(model, w, batch_size=batch_size, dataset=c.id, progress=progress)
