"""The unquantized model's next-token log-probabilities on a set of eval windows: KL's reference.

KL(p_ref || p_q) per predicted token needs the reference distribution over the whole vocabulary.
It is computed once per (model weights, windows) and cached under ``$COALORA_HOME/reference`` in
llama.cpp's ``--kl-divergence-base`` layout: per token, the minimum log-probability and a scale
(float32), and every log-probability as a uint16 step between the minimum and the maximum. That is
2 bytes per vocabulary entry (SmolLM2, 8 windows of 256: 200 MB) and a rounding error of at most
``range / 131070`` nats per entry (about 3e-4 for a 40-nat range), far below any KL worth reporting.

A reference larger than ``max_cache_bytes`` (a full-mode eval) is not cached: the caller computes
it batch by batch in the same pass (:func:`coalora.evaluation.perplexity.perplexity` takes either).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

DEFAULT_MAX_CACHE_BYTES = 2 << 30
_STEPS = 65535


def reference_bytes(windows: torch.Tensor, vocab: int) -> int:
    """Bytes of a cached reference for ``windows`` ``[n, seqlen]`` over ``vocab`` tokens."""
    n, seqlen = windows.shape
    return n * (seqlen - 1) * (2 * vocab + 8)


def encode(logprobs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``[t, V]`` float log-probs -> (uint16 codes ``[t, V]``, float32 ``[t, 2]`` of (min, scale))."""
    import numpy as np

    lp = logprobs.float()
    lo = lp.min(dim=-1, keepdim=True).values
    hi = lp.max(dim=-1, keepdim=True).values
    scale = (hi - lo).clamp_min(1e-12) / _STEPS
    codes = ((lp - lo) / scale).round_().clamp_(0, _STEPS).to(dtype=lp.dtype).numpy().astype(np.uint16)
    return codes, np.concatenate([lo.numpy(), scale.numpy()], axis=1).astype(np.float32)


def decode(codes: np.ndarray, meta: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`encode`: ``[t, V]`` float32 log-probs."""
    import torch

    c = torch.from_numpy(codes.astype("float32"))
    m = torch.from_numpy(meta)
    return c * m[:, 1:2] + m[:, 0:1]


class Reference:
    """Reference log-probs of ``windows``: ``logprobs(start, stop)`` gives ``[b, seqlen-1, V]`` float32."""

    def __init__(self, logprobs: Callable[[int, int], torch.Tensor], cached: bool):
        self._fn = logprobs
        self.cached = cached
        """Whether it reads from the disk cache (False: recomputed batch by batch)."""

    def logprobs(self, start: int, stop: int) -> torch.Tensor:
        return self._fn(start, stop)


def _forward_logprobs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=ids.to(next(model.parameters()).device)).logits.float()
    return torch.log_softmax(logits[:, :-1], dim=-1).cpu()


def key(model_name: str, weights_hash: str, windows_key: str) -> str:
    """Cache key of a reference: the model, its weights' fingerprint
    (:func:`coalora.lqlora.sensitivity.weights_fingerprint` of the unquantized weights) and the windows'
    content hash (:attr:`coalora.evaluation.spec.EvalWindows.key`)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)[:64]
    return f"{safe}-{weights_hash[:16]}-{windows_key}"


def cache_dir() -> Path:
    from coalora import assets

    return assets.home() / "reference"


def build(model: nn.Module, windows: torch.Tensor, key: str, *, batch_size: int = 4,
          max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES, directory: str | os.PathLike | None = None,
          progress: bool = False) -> Reference:
    """The reference for ``windows`` ``[n, seqlen]`` from ``model`` as it is now (unquantized).

    ``key`` names the (weights, windows) pair: :func:`key`.
    Cached: one forward over the windows the first time, a file read after. Too large to cache:
    every call of ``logprobs`` runs ``model`` again, so the model must stay unquantized meanwhile;
    callers that change the model in between pass their own function to :class:`Reference`.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from coalora.files import atomic_file

    n, seqlen = windows.shape
    vocab = _vocab(model)
    if reference_bytes(windows, vocab) > max_cache_bytes:
        return Reference(lambda a, b: _forward_logprobs(model, windows[a:b]), cached=False)
    d = Path(directory) if directory is not None else cache_dir()
    codes_path, meta_path = d / f"{key}.codes.npy", d / f"{key}.meta.npy"
    shape = (n, seqlen - 1, vocab)
    if not _valid(codes_path, meta_path, shape):
        d.mkdir(parents=True, exist_ok=True)
        with atomic_file(codes_path) as tmp_codes:
            mm = np.lib.format.open_memmap(tmp_codes, mode="w+", dtype=np.uint16, shape=shape)
            metas = np.zeros((n, seqlen - 1, 2), dtype=np.float32)
            for a in tqdm(range(0, n, batch_size), desc="reference log-probs", unit="batch", disable=not progress,
                          leave=False):
                lp = _forward_logprobs(model, windows[a : a + batch_size])
                for i in range(lp.shape[0]):
                    mm[a + i], metas[a + i] = encode(lp[i])
            mm.flush()
            del mm
        with atomic_file(meta_path) as tmp_meta, open(tmp_meta, "wb") as f:
            np.save(f, metas, allow_pickle=False)
    codes = np.load(codes_path, mmap_mode="r")
    metas = np.load(meta_path)

    def read(a: int, b: int) -> torch.Tensor:
        import torch

        return torch.stack([decode(np.asarray(codes[i]), metas[i]) for i in range(a, min(b, n))])

    return Reference(read, cached=True)


def _valid(codes_path: Path, meta_path: Path, shape: tuple[int, int, int]) -> bool:
    """Both files present with the expected shapes (a damaged or foreign file is rebuilt, not trusted)."""
    import numpy as np

    if not (codes_path.is_file() and meta_path.is_file()):
        return False
    try:
        codes = np.load(codes_path, mmap_mode="r")
        meta = np.load(meta_path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return codes.shape == shape and codes.dtype == np.uint16 and meta.shape == (*shape[:2], 2)


def _vocab(model: nn.Module) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None or not hasattr(out, "weight"):
        raise CoaloraError("KL divergence needs a causal LM with an output embedding (lm_head)")
    return int(out.weight.shape[0])
