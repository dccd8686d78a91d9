"""Pareto-based configuration search during training (method.md section 5, spec S5), on the front's surrogate.

One round, given a pool of configurations with measured (average bits, probe loss):

1. **Surrogate.** The section-5 GP (:func:`coalora.search.gp.fit_gp`: floored-log outcome, signed
   linear mean) models the loss on :mod:`coalora.search.encoding`'s two numbers, the same model the
   app's front fits to stored evaluations; average bits are exact, not modelled. The round reports the
   GP's closed-form leave-one-out RMSE of the loss.
2. **Acquisition.** Exact 2-D EHVI (:mod:`coalora.search.acquisition`) over the pool's front, in log
   form so the search still climbs where the improvement is vanishingly small. The reference point is
   (``HV_BITS_REF`` bits, 10% of the loss range worse than the worst pool point): every pool point
   dominates part of the box (the official code's [0, 0] lies beyond every point and makes the
   acquisition degenerate).
3. **Candidates.** Finite-difference coordinate ascent over the discrete value indices ``[N, 5]`` from
   M random pool members: evaluate the acquisition at x +- e_j for every index coordinate (one batched
   call), move the coordinate with the largest |central difference| by one step in the ascent
   direction, up to T steps; keep the best configuration visited that is not already pooled. The space
   (432^N) cannot be enumerated, and botorch's ``optimize_acqf_mixed`` over 5N integer dims is far
   slower (stack.md). After each start the GP is conditioned on its pick at the predicted loss (a
   Kriging believer, as the front's batch), so later starts do not return near-copies.
4. The caller scores the candidates *with the current adapter* and applies the segment-wise
   Pareto filter (:func:`coalora.search.pareto.segment_pareto_filter`).

The encoding's second number needs the model's error table (``table``); without one,
:func:`coalora.search.encoding.weight_free_table` stands in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from coalora.errors import CoaloraError
from coalora.quant.config import FIELD_SIZES
from coalora.search.acquisition import log_expected_hvi
from coalora.search.encoding import (
    BITS,
    ENCODING,
    ENCODING_SIGNS,
    check_table,
    config_ids,
    encode,
    weight_free_table,
)
from coalora.search.front_query import HV_BITS_REF
from coalora.search.gp import fit_gp, loo, posterior, untransform_mean
from coalora.search.pareto import pareto_mask


@dataclass(frozen=True)
class SearchSettings:
    candidates: int = 5
    """New configurations per round (M random starts; the official code uses 5)."""
    steps: int = 20
    """Coordinate-ascent steps per start (T)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.steps < 1:
            raise CoaloraError(f"search candidates and steps must be positive, got {self.candidates} and {self.steps}")


@dataclass
class SearchRound:
    """What one round proposed and why (logged to the training JSONL)."""

    candidates: list[np.ndarray]
    """Index matrices ``[N, 5]`` of the new configurations."""
    encoding: str
    """The surrogate's input encoding (:data:`coalora.search.encoding.ENCODING`)."""
    loo_rmse: dict[str, float]
    """Leave-one-out RMSE of the loss GP, keyed by the encoding."""
    acquisition: list[float]
    """log-EHVI of each candidate when it was picked."""
    ref_point: list[float]
    """The EHVI reference (bits, loss), both minimised."""
    seconds: float = 0.0


def matrix_bits(idx: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Bits per parameter of each matrix from index tensors ``[..., N, 5]`` -> ``[..., N]``."""
    return torch.from_numpy(BITS[config_ids(idx)])


def avg_bits(idx: torch.Tensor | np.ndarray, numels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Parameter-weighted average bits ``[...]`` of index tensors ``[..., N, 5]``."""
    n = torch.as_tensor(numels, dtype=torch.float64)
    return (matrix_bits(idx) * n).sum(-1) / n.sum()


def loo_rmse(gp, y: torch.Tensor) -> float:
    """RMSE ``[]`` of the GP's closed-form leave-one-out means of its training losses ``y [n]``
    (hyperparameters fitted on all points; the mean mapped back as the log-normal's median)."""
    mean, _ = loo(gp)
    return float((untransform_mean(gp, mean) - y).pow(2).mean().sqrt())


def coordinate_ascent(
    acq: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    exclude: set[bytes],
    chunk: int = 1024,
) -> tuple[torch.Tensor | None, float]:
    """Finite-difference coordinate ascent on the index lattice (method.md 5.2, spec S5 step 4).

    Args:
        acq: maps index matrices ``[b, N, 5]`` (long) to acquisition values ``[b]``.
        start: index matrix ``[N, 5]``.
        exclude: ``bytes`` of index matrices already in the pool.
    Returns:
        the best visited index matrix not in ``exclude`` (or None) and its acquisition value.
    """
    x = start.clone().long()
    n = x.shape[0]
    upper = (torch.tensor(FIELD_SIZES) - 1).repeat(n)  # [5N]
    best, best_val = None, -math.inf
    seen = {x.numpy().tobytes()}
    for _ in range(steps):
        flat = x.reshape(-1)
        d = flat.numel()
        plus = flat.repeat(d, 1) + torch.eye(d, dtype=torch.long)
        minus = flat.repeat(d, 1) - torch.eye(d, dtype=torch.long)
        ok_p = plus.diagonal() <= upper
        ok_m = minus.diagonal() >= 0
        batch = torch.cat([flat[None], plus[ok_p], minus[ok_m]]).reshape(-1, n, 5)
        with torch.no_grad():
            vals = torch.cat([torch.as_tensor(acq(b), dtype=torch.float64) for b in batch.split(chunk)])
        center = vals[0]
        vp = torch.full((d,), float("nan"), dtype=vals.dtype)
        vm = torch.full((d,), float("nan"), dtype=vals.dtype)
        vp[ok_p] = vals[1 : 1 + int(ok_p.sum())]
        vm[ok_m] = vals[1 + int(ok_p.sum()) :]
        # central difference inside the range, one-sided at the bounds (delta = 1 index step)
        grad = torch.where(ok_p & ok_m, (vp - vm) / 2, torch.where(ok_p, vp - center, center - vm))
        grad = torch.nan_to_num(grad, nan=0.0)
        # A move may only go where the lattice continues: at a bound, only inwards.
        grad = torch.where((grad > 0) & ~ok_p, 0.0, grad)
        grad = torch.where((grad < 0) & ~ok_m, 0.0, grad)
        if float(grad.abs().max()) == 0.0:
            break
        j = int(grad.abs().argmax())
        flat = flat.clone()
        flat[j] += 1 if grad[j] > 0 else -1
        x = flat.reshape(n, 5)
        key = x.numpy().tobytes()
        val = float(vp[j] if grad[j] > 0 else vm[j])
        if key in seen:
            break  # cycling
        seen.add(key)
        if key not in exclude and val > best_val:
            best, best_val = x.clone(), val
    return best, best_val


def _acquisition(gp, table: np.ndarray, numels: np.ndarray, front: tuple[np.ndarray, np.ndarray],
                 ref: tuple[float, float], extra: tuple[torch.Tensor, torch.Tensor] | None) -> Callable:
    """log-EHVI of index matrices ``[b, N, 5]`` -> ``[b]`` over ``front`` (bits, loss), GP conditioned on ``extra``."""

    def acq(idx: torch.Tensor) -> torch.Tensor:
        ids = config_ids(idx)
        mean, sd = posterior(gp, encode(ids, numels, table), extra=extra)
        bits = BITS[ids] @ numels / numels.sum()
        return torch.from_numpy(log_expected_hvi(bits, mean, sd, front[0], front[1], ref))
    return acq


def propose(
    pool_idx: Sequence[np.ndarray] | torch.Tensor,
    pool_bits: Sequence[float],
    pool_loss: Sequence[float],
    numels: Sequence[int],
    settings: SearchSettings = SearchSettings(),
    table: np.ndarray | None = None,
) -> SearchRound:
    """One search round (module docstring): fit the GP to the pool, then one candidate per random start.

    ``pool_idx``: index matrices ``[n, N, 5]`` (n >= 3) with their average bits and losses ``[n]``;
    ``numels [N]``: matrix sizes; ``table``: the model's error table ``[N, 432]`` (None: a weight-free
    stand-in).
    """
    t0 = time.perf_counter()
    idx = torch.as_tensor(np.asarray(pool_idx), dtype=torch.long)  # [n, N, 5]
    if idx.dim() != 3 or idx.shape[-1] != 5 or len(idx) < 3:
        raise CoaloraError(f"the search needs a pool of at least 3 configurations as [n, N, 5] indices, got {tuple(idx.shape)}")
    sizes = np.asarray(numels, dtype=np.float64)
    table = weight_free_table(sizes) if table is None else check_table(table, idx.shape[1])
    y = torch.as_tensor(pool_loss, dtype=torch.float64)
    bits = np.asarray(pool_bits, dtype=np.float64)
    gp = fit_gp(encode(config_ids(idx), sizes, table), y, signs=ENCODING_SIGNS)
    span = max(float(y.max() - y.min()), 1e-6)
    ref = (HV_BITS_REF, float(y.max()) + 0.1 * span)
    keep = pareto_mask(np.stack([bits, y.numpy()], 1))
    fb, fl = bits[keep], y.numpy()[keep]
    rng = np.random.default_rng(settings.seed)
    starts = rng.choice(len(idx), size=min(settings.candidates, len(idx)), replace=False)
    exclude = {m.numpy().tobytes() for m in idx}
    cands: list[np.ndarray] = []
    vals: list[float] = []
    believed: list[torch.Tensor] = []
    believed_y: list[float] = []
    for s in starts:
        extra = (torch.cat(believed), torch.tensor(believed_y, dtype=torch.float64)) if believed else None
        best, val = coordinate_ascent(_acquisition(gp, table, sizes, (fb, fl), ref, extra), idx[s], settings.steps, exclude)
        if best is None:
            continue
        exclude.add(best.numpy().tobytes())
        cands.append(best.numpy())
        vals.append(val)
        # Kriging believer: the pick joins the front and the GP's data at its predicted loss.
        x_new = encode(config_ids(best[None]), sizes, table)
        m, _ = posterior(gp, x_new, extra=extra)
        believed.append(x_new)
        believed_y.append(float(m[0]))
        b_new = float(BITS[config_ids(best)] @ sizes / sizes.sum())
        fb, fl = np.append(fb, b_new), np.append(fl, m[0])
        front = pareto_mask(np.stack([fb, fl], 1))
        fb, fl = fb[front], fl[front]
    return SearchRound(cands, ENCODING, {ENCODING: loo_rmse(gp, y)}, vals, list(ref), time.perf_counter() - t0)
