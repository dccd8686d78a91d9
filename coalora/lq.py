"""LQ-LoRA's low-rank plus quantized decomposition W ~ Q + L1 L2 (method.md section 2.1).

Alternating: Q_0 = 0; for t = 1..T: (L1, L2) = rank-r SVD of W - Q_{t-1} (sqrt(S) split to both
factors); Q_t = quant_c(W - L1 L2); stop when the error ||W - Q_t - L1 L2||_F rises. Unlike the
official code (which returns the iterate whose error rose, as a note there admits), this returns the best
iterate. Used for the LQ-LoRA baseline: the frozen base is Q and the LoRA starts at (L2, L1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coalora.config import QuantConfig
from coalora.errors import CoaloraError
from coalora.quant import fake_quantize


@dataclass(frozen=True)
class LQResult:
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
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    l1 = torch.zeros(m.shape[0], rank, dtype=m.dtype)
    l2 = torch.zeros(rank, m.shape[1], dtype=m.dtype)
    l1[:, :k] = u[:, :k] * root
    l2[:k] = root[:, None] * vh[:k]
    return l1, l2


def lq_decompose(w: torch.Tensor, config: QuantConfig, rank: int, iters: int = 10) -> LQResult:
    """Decompose ``w`` ``[d_out, d_in]`` into a ``config``-quantized part plus a rank-``rank`` part."""
    if iters < 1 or rank < 1:
        raise CoaloraError(f"LQ decomposition needs iters >= 1 and rank >= 1, got {iters}, {rank}")
    w = w.float()
    q = torch.zeros_like(w)
    best: LQResult | None = None
    errors: list[float] = []
    for _ in range(iters):
        l1, l2 = svd_split(w - q, rank)
        q = fake_quantize(w - l1 @ l2, config)
        err = float(torch.linalg.norm(w - q - l1 @ l2))
        errors.append(err)
        if best is not None and err >= best.errors[-1]:
            break
        best = LQResult(q, l1, l2, tuple(errors))
    assert best is not None
    return LQResult(best.q, best.l1, best.l2, tuple(errors))
