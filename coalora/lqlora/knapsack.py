"""The allocation problem as a multiple-choice knapsack, pruned to each matrix's Pareto frontier
(method.md section 2.3).

Given N weight matrices, a cost ``e[i, c]`` (quantization error of matrix i under config c) for each
of K configs, the configs' storage ``bits[c]`` and the matrices' sizes ``numels[i]``, pick one config
per matrix to

    minimise  sum_i e[i, x_i]    subject to    sum_i bits[x_i] * numels[i] <= budget * sum_i numels[i].

:class:`Problem` holds the validated inputs and what every solver shares, whatever the budget: the
per-matrix Pareto frontiers (dominated configs pruned) and the lower convex hulls of those
frontiers. The solvers are :mod:`coalora.lqlora.lagrangian` (``fast``) and :mod:`coalora.lqlora.milp`
(``exact``); :mod:`coalora.lqlora.allocate` is the public entry point.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch

    # Annotations are lazy (``from __future__ import annotations``), so this is only for checkers.
    ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

#: Slack on the budget, in average bits. It only absorbs float round-off of the weighted sums
#: (~1e-15 relative); any real excess over the budget is far larger.
BUDGET_TOL: float = 1e-12
#: The solvers keep half of BUDGET_TOL, so the reported average stays within BUDGET_TOL.
SOLVER_TOL: float = BUDGET_TOL / 2


@dataclass(frozen=True)
class Allocation:
    """One config per matrix, with what it costs and how it was found."""

    choice: tuple[int, ...]
    """Column (config id, when the columns are ``ALL_CONFIGS``) chosen for each matrix."""
    avg_bits: float
    """``sum_i bits[choice[i]] * numels[i] / sum_i numels[i]``; never above the budget (+ BUDGET_TOL)."""
    cost: float
    """``sum_i costs[i, choice[i]]``."""
    method: str
    """``"exact"`` or ``"fast"``."""
    seconds: float
    """Wall time of the solve."""
    lower_bound: float | None
    """A proven lower bound on the optimal cost (MILP dual bound or Lagrangian dual bound)."""
    optimal: bool
    """True when ``lower_bound`` proves the cost optimal (to 1e-8 relative). The case for
    ``"exact"`` unless HiGHS hit the time limit (or, rarely, an allocation sits within HiGHS's
    tolerance of the budget); ``"fast"`` reports False without checking."""
    note: str = ""
    """For an exact allocation not proven optimal, why (time limit, fallback); else empty."""

    @property
    def gap(self) -> float | None:
        """Relative distance to the lower bound, ``(cost - lower_bound) / cost``; an upper bound on
        how far from optimal this allocation can be."""
        if self.lower_bound is None:
            return None
        if self.cost <= 0.0:
            return 0.0
        return max(0.0, (self.cost - self.lower_bound) / self.cost)


def as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` (tensor, array or nested list) as a float64 array; ``name`` names it in the error."""
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module does not import torch
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise CoaloraError(f"{name} must be numeric (a tensor, array or list of numbers)") from None


class Problem:
    """Validated inputs plus the per-matrix Pareto frontiers and convex hulls (budget independent).

    Padded frontier arrays are ``N x P`` (P = longest frontier); position p of row i is the p-th
    surviving config of matrix i in increasing bits (so decreasing cost), invalid slots are masked:

    * ``ids [N, P]`` int64: the config (column of ``costs``) at each position;
    * ``w [N, P]``: its storage in average-bits units, ``bits * numels[i] / total`` (0 when padded);
    * ``c [N, P]``: its cost (inf when padded, so a padded slot never wins a min);
    * ``valid [N, P]`` bool and ``lengths [N]``: which positions hold a config.

    The hull segments (``seg_*``, one entry per segment, all matrices together) are described in
    :meth:`_hull_segments`.
    """

    def __init__(self, costs: ArrayLike, numels: ArrayLike, bits: ArrayLike) -> None:
        self.costs = as_float_array(costs, "costs")
        self.numels = as_float_array(numels, "numels")
        self.bits = as_float_array(bits, "bits")
        self._validate()
        self.total = float(self.numels.sum())
        self.lo, self.hi = float(self.bits.min()), float(self.bits.max())
        self._prune()
        self._hull_segments()

    def _validate(self) -> None:
        costs, numels, bits = self.costs, self.numels, self.bits
        if costs.ndim != 2 or costs.shape[0] < 1 or costs.shape[1] < 1:
            raise CoaloraError(f"costs must be a non-empty N x K matrix (matrices x configs), got shape {costs.shape}")
        n, k = costs.shape
        if numels.shape != (n,):
            raise CoaloraError(f"numels must have one entry per matrix (shape ({n},)), got shape {numels.shape}")
        if bits.shape != (k,):
            raise CoaloraError(f"bits must have one entry per config (shape ({k},)), got shape {bits.shape}")
        if not np.isfinite(costs).all() or (costs < 0).any():
            raise CoaloraError("costs must be finite and non-negative (found NaN, inf or a negative error)")
        if not np.isfinite(numels).all() or (numels <= 0).any():
            raise CoaloraError("numels must be positive finite parameter counts")
        if not np.isfinite(bits).all() or (bits <= 0).any():
            raise CoaloraError("bits must be positive finite bits per parameter")

    def _prune(self) -> None:
        """Drop dominated configs: if c' has bits <= and cost <= those of c (one strictly), swapping
        c for c' keeps any allocation within budget and never raises its cost, so some optimum
        avoids c. What survives is each matrix's Pareto staircase: bits strictly up, cost strictly
        down. Sorting by (bits, cost) and keeping the configs that beat every cheaper-in-bits one
        finds it; of exact ties the lowest id stays. 432 configs shrink to a few dozen."""
        n, k = self.costs.shape
        order = np.lexsort((self.costs, np.broadcast_to(self.bits, (n, k))), axis=-1)
        sorted_costs = np.take_along_axis(self.costs, order, axis=-1)
        best_before = np.minimum.accumulate(sorted_costs, axis=-1)
        keep = np.ones((n, k), dtype=bool)
        keep[:, 1:] = sorted_costs[:, 1:] < best_before[:, :-1]
        lengths = keep.sum(axis=1)
        p = int(lengths.max())
        self.valid = np.arange(p)[None, :] < lengths[:, None]  # N x P
        self.ids = np.zeros((n, p), dtype=np.int64)
        self.ids[self.valid] = order[keep]  # row-major fill keeps each row's increasing-bits order
        # Weights in average-bits units: the budget row is then just "<= budget", O(1) for any model
        # size (LQ-LoRA divides by 2**30 for the same reason).
        self.w = np.where(self.valid, self.bits[self.ids] * (self.numels / self.total)[:, None], 0.0)
        self.c = np.where(self.valid, np.take_along_axis(self.costs, self.ids, axis=1), np.inf)
        self.lengths = lengths

    def _hull_segments(self) -> None:
        """Segments of each matrix's lower convex hull of (w, cost), in hull order.

        For a multiplier lam, argmin_c e[i,c] + lam*w[i,c] always lies on this hull, and the hull's
        segment slopes are exactly the lam where the argmin moves; so taking segments in decreasing
        cost-decrease-per-bit order traces the Lagrangian solutions for all lam at once (the exact
        result of bisecting on lam, without the bisection). Sets ``seg_matrix``, ``seg_to`` (the
        segment's end position), ``seg_dw`` (its extra weight), ``seg_slope`` (cost decrease per
        weight) and ``seg_order`` (segments by decreasing slope), each ``[S]``."""
        seg_matrix, seg_from, seg_to, seg_slope = [], [], [], []
        for i in range(len(self.lengths)):
            # Plain lists: this loop is most of the preprocessing time and numpy scalars are slow.
            w, c = self.w[i, : self.lengths[i]].tolist(), self.c[i, : self.lengths[i]].tolist()
            hull: list[int] = []
            for p in range(len(w)):  # monotone chain over increasing w; drops non-convex and collinear points
                while len(hull) >= 2:
                    a, b = hull[-2], hull[-1]
                    if (c[b] - c[a]) * (w[p] - w[a]) >= (c[p] - c[a]) * (w[b] - w[a]):
                        hull.pop()
                    else:
                        break
                hull.append(p)
            slope = math.inf
            for a, b in zip(hull, hull[1:]):
                # Cost decrease per extra bit; clamped so round-off can never make a later segment
                # of the same hull look better than an earlier one (the greedy relies on hull order).
                slope = min(slope, (c[a] - c[b]) / (w[b] - w[a]))
                seg_slope.append(slope)
            seg_matrix += [i] * (len(hull) - 1)
            seg_from += hull[:-1]
            seg_to += hull[1:]
        self.seg_matrix = np.asarray(seg_matrix, dtype=np.int64)
        self.seg_to = np.asarray(seg_to, dtype=np.int64)
        self.seg_dw = (
            self.w[self.seg_matrix, self.seg_to] - self.w[self.seg_matrix, np.asarray(seg_from, dtype=np.int64)]
        )
        self.seg_slope = np.asarray(seg_slope, dtype=np.float64)
        # Stable sort: equal slopes keep array order, which within a matrix is hull order.
        self.seg_order = np.argsort(-self.seg_slope, kind="stable")

    def check_budget(self, budget: object) -> float:
        """``budget`` as a float within ``[min(bits), max(bits)]`` (round-off clamped), or a :class:`CoaloraError`."""
        # bool is a numbers.Real subclass: True must not silently mean a 1-bit budget.
        if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real):
            raise CoaloraError(f"budget must be a number of average bits per parameter, got {budget!r}")
        value = float(budget)
        # min/max bits are the cheapest/dearest averages reachable (every matrix at the extreme
        # config). Budgets within round-off (BUDGET_TOL) of the range, e.g. an allocation's own
        # avg_bits fed back, are clamped into it rather than rejected.
        if not (self.lo - BUDGET_TOL <= value <= self.hi + BUDGET_TOL):  # also rejects NaN
            raise CoaloraError(
                # repr: the shortest exact form, so a budget a hair outside visibly differs from the bound.
                f"budget {value!r} bits is outside the feasible range {self.lo!r}..{self.hi!r} "
                f"average bits; pick a budget in that range"
            )
        return min(max(value, self.lo), self.hi)

    def used(self, pos: np.ndarray) -> float:
        """Average bits of frontier positions ``pos [N]``."""
        return float(self.w[np.arange(len(pos)), pos].sum())

    def cost_of(self, pos: np.ndarray) -> float:
        """Total cost of frontier positions ``pos [N]``."""
        return float(self.c[np.arange(len(pos)), pos].sum())

    def result(self, pos: np.ndarray, budget: float, method: str, start: float, bound: float | None,
               optimal: bool, note: str = "") -> Allocation:
        """The :class:`Allocation` of frontier positions ``pos [N]``, re-checked against ``budget``
        in the reported units; ``start`` is the solve's ``time.perf_counter()``."""
        choice = self.ids[np.arange(len(pos)), pos]
        avg = float(np.dot(self.bits[choice], self.numels) / self.total)
        # The solvers work in normalised weights; this re-check in the reported units guards the promise.
        if avg > budget + BUDGET_TOL:
            raise AssertionError(f"allocation uses {avg!r} > budget {budget!r} average bits")
        cost = float(self.costs[np.arange(len(pos)), choice].sum())
        if bound is not None:
            bound = min(bound, cost)  # round-off can put the bound a hair above a proven optimum
        return Allocation(
            choice=tuple(int(x) for x in choice),
            avg_bits=avg,
            cost=cost,
            method=method,
            seconds=time.perf_counter() - start,
            lower_bound=bound,
            optimal=optimal,
            note=note,
        )
