"""Perplexity and KL evaluation over non-overlapping windows (GPTQ / LQ-LoRA convention).

    ppl = exp( sum of token NLLs / number of predicted tokens )
    kld = sum over predicted tokens of KL(p_unquantized || p_model) / number of predicted tokens

over windows of ``seqlen`` tokens that an eval spec picks from the held-out text (:mod:`coalora.evaluation.spec`;
``strided-v1`` spreads them evenly over every held-out play); each window predicts its last
``seqlen - 1`` tokens (no context is carried between windows, no BOS is added). KL is in nats per
token against the unquantized model's distribution (:mod:`coalora.evaluation.reference`), computed in the same
pass; the per-window sums of NLL and KL are kept so that intervals can be bootstrapped over windows. HF's sliding-window recipe (stride < window) gives lower numbers and
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
    from collections.abc import Callable

    import torch
    from torch import nn

    from coalora.evaluation.reference import Reference
    from coalora.evaluation.spec import EvalWindows

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
    kld: float | None = None
    """Mean per-token KL(p_unquantized || p_model) in nats; None without a reference."""
    spec: str = ""
    """The eval spec that picked the windows (e.g. ``strided-v1``)."""
    window_nll: tuple[float, ...] = ()
    """Summed token NLL of each window, in window order (``seqlen - 1`` tokens each)."""
    window_kld: tuple[float, ...] = ()
    """Summed token KL of each window (empty without a reference)."""

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    dataset: str = "",
    progress: bool | Callable[[float], None] = True,
    reference: Reference | None = None,
    spec: str = "",
) -> PerplexityResult:
    """Perplexity (and KL against ``reference``) of ``model`` on token windows ``[n, seqlen]`` (int64).

    The model must return ``.logits`` of shape ``[b, seqlen, vocab]`` (any HF causal LM).
    ``progress``: a tqdm bar (True), none (False), or a callback given the finished fraction after
    each batch.
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
    window_nll: list[float] = []
    window_kld: list[float] = []
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    callback = progress if callable(progress) else None
    with torch.inference_mode(), tqdm(total=n, desc="perplexity", unit="win", disable=progress is not True,
                                      leave=False) as bar:
        for start in range(0, n, batch_size):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids).logits.float()
            logp = F.log_softmax(logits[:, :-1], dim=-1)  # [b, seqlen-1, V]
            nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [b, seqlen-1]
            # Sums in float64: thousands of tokens of ~3 nats each lose digits in float32.
            window_nll += nll.double().sum(1).tolist()
            if reference is not None:
                ref = reference.logprobs(start, start + ids.shape[0]).to(logp.device)
                if ref.shape != logp.shape:
                    raise CoaloraError(f"the KL reference has shape {tuple(ref.shape)}, the model's log-probs "
                                       f"{tuple(logp.shape)}; build the reference from the same windows and model")
                kl = (ref.exp() * (ref - logp)).sum(-1)  # [b, seqlen-1]
                window_kld += kl.double().sum(1).tolist()
            bar.update(ids.shape[0])
            if callback is not None:
                callback(min(1.0, (start + ids.shape[0]) / n))
    model.train(was_training)
    seconds = time.perf_counter() - t0
    tokens = n * (seqlen - 1)
    mean_nll = math.fsum(window_nll) / tokens
    kld = math.fsum(window_kld) / tokens if reference is not None else None
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
        kld=kld,
        spec=spec,
        window_nll=tuple(window_nll),
        window_kld=tuple(window_kld),
    )


def eval_windows(tokenizer, *, corpus: str = "shakespeare", split: str = "eval", seqlen: int = 256,
                 windows: int | None = 8, spec: str | None = None) -> EvalWindows:
    """The windows ``spec`` (default :data:`~coalora.evaluation.spec.DEFAULT_SPEC`) picks from a corpus split."""
    from coalora import data
    from coalora.evaluation.spec import DEFAULT_SPEC, select

    return select(data.load_corpus(corpus, split), tokenizer, seqlen, windows, spec or DEFAULT_SPEC)


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
    spec: str | None = None,
    reference: Callable[[EvalWindows], Reference] | None = None,
) -> PerplexityResult:
    """Pick a corpus split's windows under ``spec`` and measure perplexity (``windows=None``: the
    full mode, every window); with ``reference`` (windows -> the unquantized model's log-probs),
    KL as well."""
    from coalora.models import context_length

    if seqlen > context_length(model):
        raise CoaloraError(f"seqlen {seqlen} exceeds the model's context length {context_length(model)}")
    ew = eval_windows(tokenizer, corpus=corpus, split=split, seqlen=seqlen, windows=windows, spec=spec)
    return perplexity(model, ew.windows, batch_size=batch_size, dataset=ew.dataset, progress=progress,
                      reference=reference(ew) if reference is not None else None, spec=ew.spec)
