"""The ``fast`` allocator: Lagrangian relaxation of the budget, then a greedy fill (method.md 2.3, S2).

The relaxation is solved exactly on each matrix's lower convex hull (:class:`~coalora.lqlora.knapsack.Problem`),
which also gives the dual lower bound, so the distance from optimal is known without the MILP. The
greedy pass then spends the budget the relaxation leaves over. Frontier positions ``pos`` are int64
``[N]`` indices into the problem's ``[N, P]`` frontier arrays.
"""

from __future__ import annotations

import numpy as np

from coalora.lqlora.knapsack import SOLVER_TOL, Allocation, Problem


def lagrangian(problem: Problem, budget: float) -> tuple[np.ndarray, float, float]:
    """Solve the Lagrangian relaxation on the hulls. Returns frontier positions ``[N]`` (within
    budget), the critical multiplier lam and the dual lower bound."""
    n = len(problem.lengths)
    order = problem.seg_order
    # Start every matrix at its fewest-bits config, then take hull segments by decreasing slope
    # while they fit: the prefix that fits is the Lagrangian (= LP) solution at the critical lam.
    used = problem.w[:, 0].sum() + np.cumsum(problem.seg_dw[order])
    taken = int(np.searchsorted(used, budget + SOLVER_TOL, side="right"))
    pos = np.zeros(n, dtype=np.int64)
    # Segments are taken in hull order, so a matrix ends at the furthest end point it reached.
    np.maximum.at(pos, problem.seg_matrix[order[:taken]], problem.seg_to[order[:taken]])
    lam = float(problem.seg_slope[order[taken]]) if taken < len(order) else 0.0
    # Weak duality: for any lam >= 0, sum_i min_c (e + lam w) - lam * budget <= optimum.
    bound = float(np.min(problem.c + lam * problem.w, axis=1).sum() - lam * budget)
    return pos, lam, bound


def fill(problem: Problem, pos: np.ndarray, budget: float) -> np.ndarray:
    """Greedy: repeatedly take the upgrade (any higher-bits frontier config of one matrix) with
    the best cost decrease per extra bit that still fits; stops when none fits. Returns new positions."""
    w, c = problem.w, problem.c
    rows = np.arange(len(pos))
    pos = pos.copy()
    while True:
        left = budget + SOLVER_TOL - problem.used(pos)
        dw = w - w[rows, pos][:, None]
        dc = c[rows, pos][:, None] - c
        ok = problem.valid & (dw > 0) & (dw <= left)
        if not ok.any():
            return pos
        ratio = np.where(ok, dc / np.where(ok, dw, 1.0), -np.inf)
        i, p = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        pos[i] = p


def repair(problem: Problem, pos: np.ndarray, budget: float) -> np.ndarray:
    """Make an over-budget allocation feasible: downgrade the matrix whose step down frees the
    most bits per unit of added cost until it fits (the all-fewest-bits allocation always
    fits), then :func:`fill`."""
    w, c = problem.w, problem.c
    rows = np.arange(len(pos))
    pos = pos.copy()
    while problem.used(pos) > budget + SOLVER_TOL:
        cols = np.arange(w.shape[1])[None, :]
        freed = w[rows, pos][:, None] - w
        added = c - c[rows, pos][:, None]
        ok = cols < pos[:, None]  # strictly fewer bits, so strictly more cost: added > 0
        ratio = np.where(ok, freed / np.where(ok, added, 1.0), -np.inf)
        i, p = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        pos[i] = p
    return fill(problem, pos, budget)


def solve_fast(problem: Problem, budget: float, start: float) -> Allocation:
    """The ``fast`` allocation at ``budget`` (already checked): relaxation, fill, dual bound."""
    pos, _, bound = lagrangian(problem, budget)
    return problem.result(fill(problem, pos, budget), budget, "fast", start, bound, optimal=False)
