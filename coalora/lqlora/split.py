"""LQ-LoRA's low-rank plus quantized decomposition W ~ Q + L1 L2 (method.md section 2.1).

Alternating: Q_0 = 0; for t = 1..T: (L1, L2) = rank-r SVD of W - Q_{t-1} (sqrt(S) split to both
factors); Q_t = quant_c(W - L1 L2); stop when the error ||W - Q_t - L1 L2||_F rises. Unlike the
official code (which returns the iterate whose error rose, as a note there admits), this returns the best
iterate. Used for the LQ-LoRA baseline (exact SVDs, cached: the frozen base is Q and the LoRA starts at
(L2, L1)) and, with randomized SVDs, for the ``lq`` base of CoA-LoRA (:func:`fast_split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coalora.errors import CoaloraError
from coalora.quant.config import QuantConfig
from coalora.quant.nf import fake_quantize


@dataclass(frozen=True)
class LQResult:
    """LQ-LoRA's split of one matrix, W ~ Q + L1 L2 (method.md 2.1)."""

    q: torch.Tensor
    """Dequantized quantized part ``[d_out, d_in]`` (= fake_quantize(w - l1 @ l2, config))."""
    l1: torch.Tensor
    """``[d_out, r]``"""
    l2: torch.Tensor
    """``[r, d_in]``"""
    errors: tuple[float, ...]
    """``||W - Q_t - L1_t L2_t||_F`` per iteration."""


def svd_split(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` SVD of ``m`` ``[d_out, d_in]`` as ``(L1 [d_out, rank], L2 [rank, d_in])``, sqrt(S) in each
    (zero columns past ``m``'s own rank)."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return _factors(m, rank, u, s, vh.T)


def randomized_svd_split(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`svd_split` with ``torch.svd_lowrank`` (oversampling 4, 2 power iterations): milliseconds per
    matrix where the full SVD costs a second. Seeded by the caller."""
    u, s, v = torch.svd_lowrank(m, q=min(rank + 4, *m.shape), niter=2)
    return _factors(m, rank, u, s, v)


def _factors(m: torch.Tensor, rank: int, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L1, L2) = (U_k sqrt(S_k), sqrt(S_k) V_k^T)`` from ``m ~ U S V^T`` (``v``: ``[d_in, *]``), zero-padded
    to ``rank`` columns / rows where ``m`` has fewer singular values."""
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    l1 = torch.zeros(m.shape[0], rank, dtype=m.dtype)
    l2 = torch.zeros(rank, m.shape[1], dtype=m.dtype)
    l1[:, :k] = u[:, :k] * root
    l2[:k] = root[:, None] * v[:, :k].T
    return l1, l2


def lq_decompose(w: torch.Tensor, config: QuantConfig, rank: int, iters: int = 10, *,
                 randomized: bool = False, seed: int = 0) -> LQResult:
    """Decompose ``w`` ``[d_out, d_in]`` into a ``config``-quantized part plus a rank-``rank`` part.

    At most ``iters`` alternations from Q = 0; the best iterate is returned and the loop stops at the
    first whose error does not improve. ``randomized`` takes each SVD with
    :func:`randomized_svd_split` under ``torch.manual_seed(seed)`` (the global RNG state is restored),
    so the same matrix and configuration always give the same split.
    """
    if iters < 1 or rank < 1:
        raise CoaloraError(f"LQ decomposition needs iters >= 1 and rank >= 1, got {iters}, {rank}")
    w = w.float()
    q = torch.zeros_like(w)
    best: LQResult | None = None
    errors: list[float] = []
    state = torch.random.get_rng_state()
    if randomized:
        torch.manual_seed(seed)
    try:
        for _ in range(iters):
            l1, l2 = randomized_svd_split(w - q, rank) if randomized else svd_split(w - q, rank)
            q = fake_quantize(w - l1 @ l2, config)
            errors.append(float(torch.linalg.norm(w - q - l1 @ l2)))
            if best is not None and errors[-1] >= best.errors[-1]:
                break
            best = LQResult(q, l1, l2, tuple(errors))
    finally:
        if randomized:
            torch.random.set_rng_state(state)
    assert best is not None
    return LQResult(best.q, best.l1, best.l2, tuple(errors))


def fast_split(w: torch.Tensor, config: QuantConfig, rank: int, iters: int = 5, seed: int = 0) -> LQResult:
    """LQ-LoRA's alternation (:func:`lq_decompose`) with randomized SVDs: cheap enough to compute when a
    configuration is applied (a CoA-LoRA base consistent with every configuration, method.md 2.1).

    Keeping the best iterate matters: the alternation is not monotone at 2 bits. With no adapter, the
    protocol's 2.5-bit evaluation configuration of SmolLM2 scores 796,627 plain, 7.0e6 after one
    alternation and 323 with the best of five (8.7 s per model on one thread); at 3 bits 146.9, 108.4
    and 98.7; at 6 bits 48.4, 47.6 and 47.1 (``data/results/lq_base.json``, ``scripts/lq_base.py``).
    """
    return lq_decompose(w, config, rank, iters, randomized=True, seed=seed)


def cached_split(originals: dict[str, torch.Tensor], targets, config, rank: int, *, progress: bool = False,
                 directory=None) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``{matrix: (L1, L2)}`` of :func:`lq_decompose` for every target under ``config`` (a
    :class:`~coalora.quant.config.ModelQuantConfig`), and the seconds computing them took.

    Cached under ``$COALORA_HOME/lq`` keyed by the original weights, the configuration and the rank:
    the split is deterministic, and on 2 CPU cores it costs minutes per configuration.
    """
    import hashlib
    import json
    import time
    from pathlib import Path

    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from coalora import assets
    from coalora.files import atomic_file

    h = hashlib.sha256()
    for t in targets:
        h.update(t.name.encode())
        h.update(originals[t.name].float().contiguous().numpy().tobytes())
    key = f"{h.hexdigest()[:16]}-{config.hash}-r{rank}"
    path = Path(directory) if directory is not None else assets.home() / "lq"
    f = path / f"{key}.safetensors"
    if f.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as fh:
                seconds = float(json.loads(fh.metadata()["seconds"]))
            tensors = load_file(str(f))
            return {t.name: (tensors[f"{t.name}.l1"], tensors[f"{t.name}.l2"]) for t in targets}, seconds
        except (OSError, KeyError, ValueError, RuntimeError):
            f.unlink(missing_ok=True)  # a damaged cache entry is recomputed, not trusted
    t0 = time.perf_counter()
    out = {}
    for t, c in tqdm(list(zip(targets, config.configs)), desc="LQ split", unit="matrix", disable=not progress,
                     leave=False):
        res = lq_decompose(originals[t.name], c, rank)
        out[t.name] = (res.l1.contiguous(), res.l2.contiguous())
    seconds = time.perf_counter() - t0
    path.mkdir(parents=True, exist_ok=True)
    with atomic_file(f) as tmp:
        save_file({f"{n}.{k}": v for n, (l1, l2) in out.items() for k, v in (("l1", l1), ("l2", l2))}, str(tmp),
                  metadata={"seconds": json.dumps(seconds)})
    return out, seconds
