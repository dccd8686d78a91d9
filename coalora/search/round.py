"""Pareto-based configuration search (method.md section 5, spec S5), with the official code's bugs fixed.

One round, given a pool of configurations with measured (average bits, loss):

1. **Surrogate.** A botorch ``SingleTaskGP`` models the loss f1 on a compact encoding of the
   configuration; average bits f2 is exact (a deterministic model), not GP-modelled. Two
   encodings are compared by leave-one-out prediction error and the better one is used:
   ``index`` (the 5N value indices scaled to [0, 1] by their static ranges) and ``bits``
   (each matrix's bits per parameter scaled to [0, 1]).
2. **Acquisition.** qLogEHVI on the maximisation targets (-bits, -loss) with the reference point
   *worse* than every pool point (the official code uses [0, 0], which lies beyond every point
   and makes the acquisition degenerate).
3. **Candidates.** Finite-difference coordinate ascent over the discrete indices from M random
   pool members: evaluate the acquisition at x +- e_j for every index coordinate (one batched
   call), move the coordinate with the largest |central difference| by one step in the ascent
   direction, up to T steps; keep the best configuration visited that is not already pooled.
   We use this rather than botorch's discrete optimisers because the space (432^N) cannot be
   enumerated, and ``optimize_acqf_mixed`` over 5N integer dims is far slower (stack.md).
4. The caller scores the candidates *with the current adapter* and applies the segment-wise
   Pareto filter (:func:`coalora.search.pareto.segment_pareto_filter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from coalora.errors import CoaloraError
from coalora.quant.config import B2_BITS, FIELD_SIZES, FIELD_VALUES, MAX_BITS, MIN_BITS

ENCODINGS = ("index", "bits")


@dataclass(frozen=True)
class SearchSettings:
    candidates: int = 5
    """New configurations per round (M random starts; the official code uses 5)."""
    steps: int = 20
    """Coordinate-ascent steps per start (T)."""
    mc_samples: int = 64
    encoding: str = "auto"
    """``auto`` (pick by leave-one-out error), ``index`` or ``bits``."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.steps < 1 or self.mc_samples < 1:
            raise CoaloraError("search candidates, steps and mc_samples must be positive")
        if self.encoding not in (*ENCODINGS, "auto"):
            raise CoaloraError(f"unknown encoding {self.encoding!r}; use auto, index or bits")


@dataclass
class SearchRound:
    """What one round proposed and why (logged to the training JSONL)."""

    candidates: list[np.ndarray]
    """Index matrices ``[N, 5]`` of the new configurations."""
    encoding: str
    loo_rmse: dict[str, float]
    """Leave-one-out RMSE of the loss GP per encoding (lower is better)."""
    acquisition: list[float]
    """log-EHVI of each candidate."""
    ref_point: list[float]
    seconds: float = 0.0


# ---- encodings

_SIZES = torch.tensor(FIELD_SIZES, dtype=torch.float64)


def _bits_lookup() -> torch.Tensor:
    """bits of every (b0, b1, b2, B0, B1) index combination, ``[4, 4, 3, 3, 3]``."""
    t = torch.empty(FIELD_SIZES, dtype=torch.float64)
    for i0, b0 in enumerate(FIELD_VALUES[0]):
        for i1, b1 in enumerate(FIELD_VALUES[1]):
            for i2, b2 in enumerate(FIELD_VALUES[2]):
                for i3, bs0 in enumerate(FIELD_VALUES[3]):
                    for i4, bs1 in enumerate(FIELD_VALUES[4]):
                        t[i0, i1, i2, i3, i4] = b0 + b1 / bs0 + B2_BITS[b2] / (bs0 * bs1)
    return t


BITS_LOOKUP = _bits_lookup()


def matrix_bits(idx: torch.Tensor) -> torch.Tensor:
    """Bits per parameter of each matrix from index tensors ``[..., N, 5]`` -> ``[..., N]``."""
    i = idx.long()
    return BITS_LOOKUP[i[..., 0], i[..., 1], i[..., 2], i[..., 3], i[..., 4]]


def encode(idx: torch.Tensor, encoding: str) -> torch.Tensor:
    """GP inputs in [0, 1]: ``[..., N, 5]`` indices -> ``[..., 5N]`` (index) or ``[..., N]`` (bits)."""
    if encoding == "index":
        return (idx.double() / (_SIZES - 1)).flatten(-2)
    if encoding == "bits":
        return (matrix_bits(idx) - MIN_BITS) / (MAX_BITS - MIN_BITS)
    raise CoaloraError(f"unknown encoding {encoding!r}")


def avg_bits(idx: torch.Tensor, numels: torch.Tensor) -> torch.Tensor:
    """Parameter-weighted average bits ``[...]`` of index tensors ``[..., N, 5]``."""
    return (matrix_bits(idx) * numels).sum(-1) / numels.sum()


# ---- the surrogate

def fit_loss_gp(x: torch.Tensor, y: torch.Tensor):
    """A ``SingleTaskGP`` on inputs ``[n, d]`` in [0, 1] and losses ``[n]`` (standardised outcome)."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    gp = SingleTaskGP(x, y[:, None], outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    return gp


def loo_rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Leave-one-out RMSE of the GP's posterior mean, with hyperparameters fitted on all points.

    Uses the closed form for GP LOO residuals, ``(K^-1 y)_i / (K^-1)_ii`` (Rasmussen & Williams 5.12),
    on the standardised outcome, then scales back.
    """
    gp = fit_loss_gp(x, y)
    gp.eval()
    with torch.no_grad():
        k = gp.covar_module(x).to_dense() + gp.likelihood.noise * torch.eye(len(x), dtype=x.dtype)
        ys = (y - y.mean()) / y.std().clamp_min(1e-12)
        mean_const = gp.mean_module(x)
        kinv = torch.linalg.inv(k)
        resid = (kinv @ (ys - mean_const)) / torch.diagonal(kinv)
    return float(resid.pow(2).mean().sqrt() * y.std())


def choose_encoding(idx: torch.Tensor, y: torch.Tensor, requested: str = "auto") -> tuple[str, dict[str, float]]:
    """Compare both encodings by LOO RMSE; return the chosen one and both scores."""
    scores = {e: loo_rmse(encode(idx, e), y) for e in ENCODINGS}
    if requested != "auto":
        return requested, scores
    return min(scores, key=scores.get), scores  # type: ignore[arg-type]


# ---- the acquisition

def decode_bits(x: torch.Tensor, encoding: str, n: int) -> torch.Tensor:
    """Per-matrix bits ``[..., N]`` back from encoded inputs ``[..., d]`` (exact on lattice points)."""
    if encoding == "index":
        return matrix_bits((x.reshape(*x.shape[:-1], n, 5) * (_SIZES - 1)).round())
    return x * (MAX_BITS - MIN_BITS) + MIN_BITS


def make_acquisition(gp, encoding: str, numels: torch.Tensor, pool_y: torch.Tensor, mc_samples: int, seed: int):
    """qLogEHVI over (-avg bits, -loss) on encoded inputs ``[b, 1, d]``.

    ``pool_y`` ``[n, 2]`` are the pool's (bits, loss). Bits are exact (a deterministic model of
    the same inputs); the reference point is 10% of each objective's range worse than the worst
    pool point, so every pool point dominates part of the box.
    Bits enter through the MC objective (computed from the inputs), so only the loss is modelled.
    Returns the acquisition module and the reference point in the (-bits, -loss) frame.
    """
    from botorch.acquisition.multi_objective.logei import qLogExpectedHypervolumeImprovement
    from botorch.acquisition.multi_objective.objective import MCMultiOutputObjective
    from botorch.sampling import SobolQMCNormalSampler
    from botorch.utils.multi_objective.box_decompositions import FastNondominatedPartitioning

    n = numels.numel()

    class BitsAndLoss(MCMultiOutputObjective):
        """(-avg bits, -loss) from the loss GP's samples ``[s, b, q, 1]`` and the inputs ``[b, q, d]``."""

        def forward(self, samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
            bits = (decode_bits(X, encoding, n) * numels).sum(-1) / numels.sum()  # [b, q]
            return torch.stack([-bits.expand(samples.shape[:-1]), -samples[..., 0]], dim=-1)

    y_max = -pool_y  # maximisation frame
    span = (y_max.max(0).values - y_max.min(0).values).clamp_min(1e-6)
    ref = y_max.min(0).values - 0.1 * span
    part = FastNondominatedPartitioning(ref_point=ref, Y=y_max)
    acq = qLogExpectedHypervolumeImprovement(
        gp, ref_point=ref, partitioning=part, objective=BitsAndLoss(),
        sampler=SobolQMCNormalSampler(torch.Size([mc_samples]), seed=seed),
    )
    return acq, ref.tolist()


def coordinate_ascent(
    acq: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    exclude: set[bytes],
    chunk: int = 1024,
) -> tuple[torch.Tensor | None, float]:
    """Finite-difference coordinate ascent on the index lattice (method.md 5.2, spec S5 step 4).

    Args:
        acq: maps index inputs ``[b, 1, 5N]`` (float) to acquisition values ``[b]``.
        start: index matrix ``[N, 5]``.
        exclude: ``bytes`` of index matrices already in the pool.
    Returns:
        the best visited index matrix not in ``exclude`` (or None) and its acquisition value.
    """
    x = start.clone().long()
    n = x.shape[0]
    upper = (_SIZES.long() - 1).repeat(n)  # [5N]
    best, best_val = None, -math.inf
    seen = {x.numpy().tobytes()}
    for _ in range(steps):
        flat = x.reshape(-1)
        d = flat.numel()
        plus = flat.repeat(d, 1) + torch.eye(d, dtype=torch.long)
        minus = flat.repeat(d, 1) - torch.eye(d, dtype=torch.long)
        ok_p = plus.diagonal() <= upper
        ok_m = minus.diagonal() >= 0
        batch = torch.cat([flat[None], plus[ok_p], minus[ok_m]]).double()
        with torch.no_grad():
            vals = torch.cat([acq(b[:, None, :]) for b in batch.split(chunk)])
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


def propose(
    pool_idx: Sequence[np.ndarray] | torch.Tensor,
    pool_bits: Sequence[float],
    pool_loss: Sequence[float],
    numels: Sequence[int],
    settings: SearchSettings = SearchSettings(),
) -> SearchRound:
    """One search round: fit, compare encodings, maximise qLogEHVI from random pool members."""
    import time

    t0 = time.perf_counter()
    idx = torch.as_tensor(np.asarray(pool_idx), dtype=torch.long)  # [n, N, 5]
    if idx.dim() != 3 or idx.shape[-1] != 5 or len(idx) < 3:
        raise CoaloraError(f"the search needs a pool of at least 3 configurations as [n, N, 5] indices, got {tuple(idx.shape)}")
    y_loss = torch.as_tensor(pool_loss, dtype=torch.float64)
    y = torch.stack([torch.as_tensor(pool_bits, dtype=torch.float64), y_loss], dim=1)
    enc, scores = choose_encoding(idx, y_loss, settings.encoding)
    gp = fit_loss_gp(encode(idx, enc), y_loss)
    acq_enc, ref = make_acquisition(gp, enc, torch.as_tensor(numels, dtype=torch.float64), y, settings.mc_samples, settings.seed)
    n = idx.shape[1]

    def acq(x: torch.Tensor) -> torch.Tensor:  # index inputs [b, 1, 5N] -> [b]
        return acq_enc(encode(x.reshape(*x.shape[:-1], n, 5), enc))
    rng = np.random.default_rng(settings.seed)
    starts = rng.choice(len(idx), size=min(settings.candidates, len(idx)), replace=False)
    exclude = {m.numpy().tobytes() for m in idx}
    cands, vals = [], []
    for s in starts:
        best, val = coordinate_ascent(acq, idx[s], settings.steps, exclude)
        if best is not None:
            exclude.add(best.numpy().tobytes())
            cands.append(best.numpy())
            vals.append(val)
    return SearchRound(cands, enc, scores, vals, ref, time.perf_counter() - t0)
