"""Perplexity of a GGUF file under llama.cpp (through llama-cpp-python), on coalora's own windows.

The convention is :func:`coalora.evaluation.perplexity.perplexity`'s, token for token: each window
of ``seqlen`` token ids (``[n, seqlen]``, as an eval spec picks them) is fed on its own (no
context carried between windows, no BOS added: the ids go to llama.cpp as they are, never
re-tokenized), its last ``seqlen - 1`` tokens are predicted, and

    ppl = exp( sum of token NLLs (float64) / (n * (seqlen - 1)) )

so the number is comparable with coalora's simulated perplexity of the same configuration on the
same windows: the only difference left is the weights (ggml's types vs NF-k, and llama.cpp's
kernels).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LlamaCppPerplexity:
    ppl: float
    nll: float
    """Mean token NLL in nats."""
    tokens: int
    """Predicted tokens: windows * (seqlen - 1)."""
    windows: int
    seqlen: int
    seconds: float
    """Loading the file plus scoring every window."""
    window_nll: tuple[float, ...] = ()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``x`` ``[t, vocab]`` in float64."""
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def load_llama(path: str | os.PathLike, n_ctx: int, n_threads: int | None = None):
    """A ``llama_cpp.Llama`` over ``path`` that keeps the logits of every position (CPU only, quiet)."""
    try:
        import llama_cpp
    except ImportError:
        from coalora.export.gguf_ggml import INSTALL_HINT

        raise CoaloraError(INSTALL_HINT) from None
    threads = n_threads or min(4, os.cpu_count() or 1)
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                               n_threads=threads, n_threads_batch=threads, n_gpu_layers=0, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise CoaloraError(f"llama.cpp cannot load {path} ({e}); re-export the GGUF") from None


def window_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits ``[len(ids), vocab]`` (float32) of one window fed from an empty context."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_cpp_perplexity(path: str | os.PathLike, windows: torch.Tensor, *,
                         n_threads: int | None = None) -> LlamaCppPerplexity:
    """Perplexity of the GGUF at ``path`` on token windows ``[n, seqlen]`` (int64), coalora's convention."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise CoaloraError(f"windows must be a [n, seqlen>=2] tensor, got shape {tuple(windows.shape)}")
    t0 = time.perf_counter()
    n, seqlen = (int(s) for s in windows.shape)
    llm = load_llama(path, seqlen, n_threads)
    vocab = llm.n_vocab()
    if int(windows.max()) >= vocab:
        raise CoaloraError(f"window token id {int(windows.max())} is outside the GGUF's vocabulary of {vocab}; "
                           "score it on windows made with the model's own tokenizer")
    window_nll = []
    try:
        for row in windows.tolist():
            logp = _log_softmax(window_logits(llm, row)[:-1])  # [seqlen-1, vocab]
            window_nll.append(float(-logp[np.arange(seqlen - 1), row[1:]].sum()))
    finally:
        with contextlib.suppress(Exception):
            llm.close()
    tokens = n * (seqlen - 1)
    nll = math.fsum(window_nll) / tokens
    if not math.isfinite(nll):
        raise CoaloraError(f"llama.cpp produced non-finite losses on {path}; check the exported file")
    return LlamaCppPerplexity(math.exp(nll), nll, tokens, n, seqlen, time.perf_counter() - t0, tuple(window_nll))
