"""Per-matrix bit allocation under an average-bits budget: LQ-LoRA's ILP (method.md section 2.3).

Given N weight matrices, a cost ``e[i, c]`` (quantization error of matrix i under config c) for each
of K configs, the configs' storage ``bits[c]`` and the matrices' sizes ``numels[i]``, pick one config
per matrix to

    minimise  sum_i e[i, x_i]    subject to    sum_i bits[x_i] * numels[i] <= budget * sum_i numels[i].

This is a multiple-choice knapsack. Two solvers share one preprocessing step (pruning of dominated
configs, below):

* ``method="exact"``: the MILP, solved by HiGHS through :func:`scipy.optimize.milp` (LQ-LoRA uses
  Gurobi with a 60 s limit; its SciPy fallback is the same model);
* ``method="fast"``: the Lagrangian relaxation of the budget (method.md section 10 S2) solved exactly
  on each matrix's lower convex hull, then a greedy pass that spends the leftover budget. It comes
  with the dual lower bound, so its distance from optimal is known without the MILP.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import numbers
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch

    from coalora.models import Target
    from coalora.quant.config import ModelQuantConfig

    # Annotations are lazy (``from __future__ import annotations``), so this is only for checkers.
    ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

METHODS: tuple[str, ...] = ("exact", "fast")

#: Slack on the budget, in average bits. It only absorbs float round-off of the weighted sums
#: (~1e-15 relative); any real excess over the budget is far larger.
BUDGET_TOL: float = 1e-12
_SOLVER_TOL = BUDGET_TOL / 2  # the solvers keep half of it so the reported average stays within BUDGET_TOL
#: The MILP's budget row is in units of 1e-7 average bits, so HiGHS's absolute row tolerance
#: (1e-6) is 1e-13 average bits rather than ~1e-6, about one step of the lattice real models'
#: sums live on (SmolLM2: 1 / (1024 * 960) bits). What is left is its integrality slack, handled
#: in _exact.
_ROW_SCALE = 1e7
#: "optimal" means the lower bound is within this relative distance of the cost.
_REL_GAP = 1e-8


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


def optimality_gap(fast: Allocation, exact: Allocation) -> float:
    """Relative excess cost of ``fast`` over ``exact``: ``(fast.cost - exact.cost) / exact.cost``."""
    if exact.cost == 0.0:
        return 0.0 if fast.cost == 0.0 else math.inf
    return (fast.cost - exact.cost) / exact.cost


def allocate(
    costs: ArrayLike,
    numels: ArrayLike,
    bits: ArrayLike,
    budget: float,
    method: str = "exact",
    time_limit: float = 60.0,
) -> Allocation:
    """Choose one config per matrix minimising total cost within ``budget`` average bits.

    Args:
        costs: ``N x K`` non-negative errors ``e[i, c]`` (tensor or array, used as float64).
        numels: ``N`` parameter counts of the matrices.
        bits: ``K`` storage bits per parameter of each config (e.g. ``[c.bits for c in ALL_CONFIGS]``).
        budget: target average bits per parameter; must lie in ``[min(bits), max(bits)]`` (up to
            BUDGET_TOL, e.g. ``[MIN_BITS, MAX_BITS]`` for the full 432-config space).
        method: ``"exact"`` (MILP, HiGHS) or ``"fast"`` (Lagrangian + greedy, milliseconds).
        time_limit: seconds HiGHS may spend (exact only); past it the best solution found is returned
            with ``optimal=False``.
    """
    start = time.perf_counter()
    problem = _Problem(costs, numels, bits)
    return problem.solve(budget, method, time_limit, start)


def allocate_config(
    table: ArrayLike,
    model: str,
    targets: Sequence[Target],
    budget: object,
    method: str = "fast",
    time_limit: float = 60.0,
) -> ModelQuantConfig:
    """The allocator's configuration of ``model`` at ``budget`` average bits over the 432-config space.

    Args:
        table: ``N x 432`` error table (``N = len(targets)``, columns ``ALL_CONFIGS``).
        model: the model's name, recorded in the configuration.
        targets: the ``N`` target matrices, in table row order.
        budget: average bits per weight, checked by :func:`~coalora.quant.config.check_budget`.
        method: ``"fast"`` (Lagrangian + greedy, milliseconds) or ``"exact"`` (MILP).
    """
    from coalora.quant.config import CONFIG_BITS, ModelQuantConfig, check_budget

    a = allocate(table, [t.numel for t in targets], CONFIG_BITS, check_budget(budget), method=method,
                 time_limit=time_limit)
    return ModelQuantConfig.from_ids(model, tuple(targets), a.choice)


def allocate_many(
    costs: ArrayLike,
    numels: ArrayLike,
    bits: ArrayLike,
    budgets: Sequence[float],
    method: str = "exact",
    time_limit: float = 60.0,
) -> list[Allocation]:
    """:func:`allocate` for each budget, validating and pruning once. ``time_limit`` is per budget
    and ``seconds`` excludes the shared preprocessing."""
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Iterable):
        raise CoaloraError(f"budgets must be a list of average-bits budgets, got {budgets!r}")
    problem = _Problem(costs, numels, bits)
    return [problem.solve(b, method, time_limit, time.perf_counter()) for b in budgets]


class _Problem:
    """Validated inputs plus the per-matrix Pareto frontiers and convex hulls (budget independent).

    Padded frontier arrays are ``N x P`` (P = longest frontier); position p of row i is the p-th
    surviving config of matrix i in increasing bits (so decreasing cost), invalid slots are masked.
    """

    def __init__(self, costs: ArrayLike, numels: ArrayLike, bits: ArrayLike) -> None:
        self.costs = _as_float_array(costs, "costs")
        self.numels = _as_float_array(numels, "numels")
        self.bits = _as_float_array(bits, "bits")
        self._validate()
        n, k = self.costs.shape
        self.total = float(self.numels.sum())
        self.lo, self.hi = float(self.bits.min()), float(self.bits.max())

        # Prune dominated configs: if c' has bits <= and cost <= those of c (one strictly), swapping
        # c for c' keeps any allocation within budget and never raises its cost, so some optimum
        # avoids c. What survives is each matrix's Pareto staircase: bits strictly up, cost
        # strictly down. Sorting by (bits, cost) and keeping the configs that beat every cheaper-
        # in-bits one finds it; of exact ties the lowest id stays. 432 configs shrink to a few dozen.
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
        # Padding: weight 0 and cost inf, so a padded slot never wins a min and never breaks a product.
        self.w = np.where(self.valid, self.bits[self.ids] * (self.numels / self.total)[:, None], 0.0)
        self.c = np.where(self.valid, np.take_along_axis(self.costs, self.ids, axis=1), np.inf)
        self.lengths = lengths
        self._hull_segments()

    # ---------------------------------------------------------------- validation
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

    def _check_budget(self, budget: object) -> float:
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

    # ---------------------------------------------------------------- lower convex hulls
    def _hull_segments(self) -> None:
        """Segments of each matrix's lower convex hull of (w, cost), in hull order.

        For a multiplier lam, argmin_c e[i,c] + lam*w[i,c] always lies on this hull, and the hull's
        segment slopes are exactly the lam where the argmin moves; so taking segments in decreasing
        cost-decrease-per-bit order traces the Lagrangian solutions for all lam at once (the exact
        result of bisecting on lam, without the bisection)."""
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

    # ---------------------------------------------------------------- solving
    def solve(self, budget: object, method: str, time_limit: float, start: float) -> Allocation:
        value = self._check_budget(budget)
        if method not in METHODS:
            raise CoaloraError(f"unknown allocation method {method!r}; use one of {', '.join(METHODS)}")
        if isinstance(time_limit, bool) or not isinstance(time_limit, numbers.Real) or not time_limit > 0:
            raise CoaloraError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        if method == "fast":
            pos, _, bound = self._lagrangian(value)
            return self._result(self._fill(pos, value), value, "fast", start, bound, optimal=False)
        return self._exact(value, float(time_limit), start)

    def _used(self, pos: np.ndarray) -> float:
        return float(self.w[np.arange(len(pos)), pos].sum())

    def _lagrangian(self, budget: float) -> tuple[np.ndarray, float, float]:
        """Solve the Lagrangian relaxation on the hulls. Returns frontier positions (length N,
        within budget), the critical multiplier lam and the dual lower bound."""
        n = len(self.lengths)
        order = self.seg_order
        # Start every matrix at its fewest-bits config, then take hull segments by decreasing slope
        # while they fit: the prefix that fits is the Lagrangian (= LP) solution at the critical lam.
        used = self.w[:, 0].sum() + np.cumsum(self.seg_dw[order])
        taken = int(np.searchsorted(used, budget + _SOLVER_TOL, side="right"))
        pos = np.zeros(n, dtype=np.int64)
        # Segments are taken in hull order, so a matrix ends at the furthest end point it reached.
        np.maximum.at(pos, self.seg_matrix[order[:taken]], self.seg_to[order[:taken]])
        lam = float(self.seg_slope[order[taken]]) if taken < len(order) else 0.0
        # Weak duality: for any lam >= 0, sum_i min_c (e + lam w) - lam * budget <= optimum.
        bound = float(np.min(self.c + lam * self.w, axis=1).sum() - lam * budget)
        return pos, lam, bound

    def _fill(self, pos: np.ndarray, budget: float) -> np.ndarray:
        """Greedy: repeatedly take the upgrade (any higher-bits frontier config of one matrix) with
        the best cost decrease per extra bit that still fits; stops when none fits."""
        rows = np.arange(len(pos))
        pos = pos.copy()
        while True:
            left = budget + _SOLVER_TOL - self._used(pos)
            dw = self.w - self.w[rows, pos][:, None]
            dc = self.c[rows, pos][:, None] - self.c
            ok = self.valid & (dw > 0) & (dw <= left)
            if not ok.any():
                return pos
            ratio = np.where(ok, dc / np.where(ok, dw, 1.0), -np.inf)
            i, p = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            pos[i] = p

    def _repair(self, pos: np.ndarray, budget: float) -> np.ndarray:
        """Make an over-budget allocation feasible: downgrade the matrix whose step down frees the
        most bits per unit of added cost until it fits (the all-fewest-bits allocation always
        fits), then refill greedily."""
        rows = np.arange(len(pos))
        pos = pos.copy()
        while self._used(pos) > budget + _SOLVER_TOL:
            cols = np.arange(self.w.shape[1])[None, :]
            freed = self.w[rows, pos][:, None] - self.w
            added = self.c - self.c[rows, pos][:, None]
            ok = cols < pos[:, None]  # strictly fewer bits, so strictly more cost: added > 0
            ratio = np.where(ok, freed / np.where(ok, added, 1.0), -np.inf)
            i, p = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            pos[i] = p
        return self._fill(pos, budget)

    def _exact(self, budget: float, time_limit: float, start: float) -> Allocation:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_matrix, vstack

        n = len(self.lengths)
        rows = np.arange(n)
        # The fast solution is the incumbent (upper bound), its multiplier gives the lower bound.
        fast_pos, lam, bound = self._lagrangian(budget)
        fast_pos = self._fill(fast_pos, budget)
        upper = float(self.c[rows, fast_pos].sum())
        if _proven(upper, bound):  # e.g. every matrix got its least-error config
            return self._result(fast_pos, budget, "exact", start, bound, optimal=True)
        # Reduced-cost fixing, exact: any feasible x costs at least bound + sum_i r_i(x_i), where
        # r_i(p) = e + lam*w - min_q(e + lam*w) >= 0 over matrix i's choices. A choice with
        # r_i(p) > upper - bound therefore lies in no allocation cheaper than the fast one, so the
        # MILP can drop it. This typically leaves a handful of choices per matrix and cuts HiGHS's
        # time several-fold. The relative margin keeps ties and absorbs round-off.
        lagr = self.c + lam * self.w
        reduced = lagr - lagr.min(axis=1, keepdims=True)
        keep = self.valid & (reduced <= (upper - bound) + 1e-9 * upper)
        keep[rows, fast_pos] = True  # the incumbent always stays representable
        flat_w, flat_c = self.w[keep], self.c[keep]
        nvar = len(flat_w)
        group = np.nonzero(keep)[0]  # row-major, so grouped by matrix
        # Costs scaled so the optimum is ~1000 (LQ-LoRA uses 1000 / ||e||_F; relative to the
        # incumbent instead, HiGHS's absolute gap tolerance, 1e-6, stays 1e-9 of the optimum even
        # at high budgets where the chosen errors are tiny next to the 2-bit ones).
        scale = 1000.0 / upper
        one_hot = csr_matrix((np.ones(nvar), (group, np.arange(nvar))), shape=(n, nvar))
        a = vstack([one_hot, csr_matrix(flat_w[None, :] * _ROW_SCALE)]).tocsr()
        lb = np.concatenate([np.ones(n), [-np.inf]])

        def solve(rhs: float) -> Any:
            seconds = max(time_limit - (time.perf_counter() - start), 1e-3)
            with _drop_highs_stray_output():
                return milp(
                    flat_c * scale,
                    integrality=np.ones(nvar),
                    bounds=Bounds(0, 1),
                    constraints=LinearConstraint(a, lb, np.concatenate([np.ones(n), [rhs * _ROW_SCALE]])),
                    # HiGHS's default relative gap, 1e-4, would stop short of the optimum. Presolve
                    # gains nothing on a model this plain and is what mostly triggers the stray output.
                    options={"time_limit": seconds, "mip_rel_gap": _REL_GAP / 10, "presolve": False},
                )

        res = solve(budget)
        if res.get("mip_dual_bound") is not None and math.isfinite(res.mip_dual_bound):
            # Valid for the true problem too: HiGHS's feasible set (budget + tolerance) contains it.
            bound = max(bound, res.mip_dual_bound / scale)
        pos, cost, notes = fast_pos, upper, []
        for attempt in range(2):
            if res.x is None:  # stopped before any integer solution: keep what we have
                notes.append(f"HiGHS found no solution ({res.message})")
                break
            if res.status != 0:
                notes.append(f"HiGHS stopped early ({res.message})")
            # Each matrix's chosen slot is its largest x (0/1 up to HiGHS's integrality tolerance).
            xs = np.full(self.w.shape, -1.0)
            xs[keep] = res.x
            found = np.argmax(xs, axis=1)
            over = self._used(found) - budget
            if over > _SOLVER_TOL:
                # HiGHS counts x within 1e-6 of 0/1 as integral, so x = 1 - 1e-9 can hide up to
                # 1e-6 of a weight from the budget row; rounded, the allocation is over. This only
                # bites for solutions within ~1e-6 * max weight of the budget (never seen on real
                # models, whose sums sit on a coarser lattice). Repair greedily, then re-solve once
                # with the row tightened by what HiGHS can hide, in case that finds better.
                found = self._repair(found, budget)
                notes.append("HiGHS's solution exceeded the budget within its tolerance and was repaired")
            found_cost = float(self.c[rows, found].sum())
            if found_cost < cost:
                pos, cost = found, found_cost
            if over <= _SOLVER_TOL or attempt == 1:
                break
            res = solve(budget - 2 * over - 1e-6 * float(flat_w.max()))
        optimal = _proven(cost, bound)
        note = "" if optimal else "; ".join(dict.fromkeys(notes)) or "not proven optimal"
        return self._result(pos, budget, "exact", start, bound, optimal, note)

    def _result(
        self,
        pos: np.ndarray,
        budget: float,
        method: str,
        start: float,
        bound: float | None,
        optimal: bool,
        note: str = "",
    ) -> Allocation:
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


def _proven(cost: float, bound: float) -> bool:
    """Whether ``bound`` certifies ``cost`` as optimal (within _REL_GAP relative)."""
    return cost - bound <= _REL_GAP * abs(cost)


_HIGHS_STRAY = b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();"


@contextlib.contextmanager
def _drop_highs_stray_output() -> Iterator[None]:
    """Swallow one known debug line that HiGHS 1.8-1.12 (bundled with SciPy) prints with C stdio
    straight to file descriptor 1 (ERGO-Code/HiGHS#2783), which would corrupt JSON on stdout.

    fd 1 is pointed at a temporary file for the solve and everything else written there meanwhile
    (other threads' output) is passed through afterwards. Where fd 1 or libc is not available,
    this does nothing."""
    try:
        libc = ctypes.CDLL(None)
        if sys.stdout is not None:
            sys.stdout.flush()
        saved = os.dup(1)
    except Exception:  # no fd 1 (pythonw), no libc handle (Windows): leave output alone
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield
        finally:
            libc.fflush(None)  # C stdio buffers the line; flush it into tmp before switching back
            if sys.stdout is not None:
                sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            kept = b"".join(line for line in tmp if line.rstrip(b"\r\n") != _HIGHS_STRAY)
            if kept:
                os.write(1, kept)


def _as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module does not import torch
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise CoaloraError(f"{name} must be numeric (a tensor, array or list of numbers)") from None


# -------------------------------------------------------------------- synthetic instance
SMOLLM2_SHAPES: dict[str, tuple[int, int]] = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "v_proj": (192, 576),
    "o_proj": (576, 576),
    "gate_proj": (1536, 576),
    "up_proj": (1536, 576),
    "down_proj": (576, 1536),
}  # SmolLM2-135M: 30 blocks of these 7 projections, N = 210


def synthetic_instance(seed: int = 0, blocks: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A realistic stand-in for measured LQ-LoRA costs, for tests and benchmarks.

    Returns ``(costs N x 432, numels N, bits 432)`` over :data:`coalora.quant.config.ALL_CONFIGS` with
    SmolLM2-135M's matrix sizes. Error falls ~4x per weight bit (``2^-2 b0``), grows with the block
    size B0 (outliers dominate larger blocks) and with coarse first-level scales (few b1 bits), and
    barely depends on B1 and the second-level format; each matrix has a log-normal sensitivity and
    each entry 5% log-normal noise.
    """
    from coalora.quant.config import ALL_CONFIGS

    rng = np.random.default_rng(seed)
    numels = np.array([o * i for _ in range(blocks) for o, i in SMOLLM2_SHAPES.values()], dtype=np.int64)
    bits = np.array([c.bits for c in ALL_CONFIGS])
    rel = np.array(
        [
            2.0 ** (-2 * c.b0)
            * (1 + 0.35 * math.log2(c.B0 / 16))
            * (1 + 8 * 4.0 ** (-c.b1))
            * (1 + 0.01 * math.log2(c.B1 / 16))
            * (1 + {"bf16": 2e-3, "fp16": 1e-3, "fp32": 0.0}[c.b2])
            for c in ALL_CONFIGS
        ]
    )
    sensitivity = rng.lognormal(0.0, 1.0, size=len(numels))
    noise = rng.lognormal(0.0, 0.05, size=(len(numels), len(rel)))
    costs = numels[:, None] * sensitivity[:, None] * rel[None, :] * noise
    return costs, numels, bits
