"""The ``exact`` allocator: the multiple-choice knapsack as a MILP, solved by HiGHS (method.md 2.3).

HiGHS runs through :func:`scipy.optimize.milp` (LQ-LoRA uses Gurobi with a 60 s limit; its SciPy
fallback is the same model). The ``fast`` solution (:mod:`coalora.lqlora.lagrangian`) is the
incumbent and its multiplier the first lower bound; reduced-cost fixing with them shrinks the MILP
to a handful of choices per matrix.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from coalora.lqlora.knapsack import SOLVER_TOL, Allocation, Problem
from coalora.lqlora.lagrangian import fill, lagrangian, repair

#: The MILP's budget row is in units of 1e-7 average bits, so HiGHS's absolute row tolerance
#: (1e-6) is 1e-13 average bits rather than ~1e-6, about one step of the lattice real models'
#: sums live on (SmolLM2: 1 / (1024 * 960) bits). What is left is its integrality slack, handled
#: in :func:`solve_exact`.
ROW_SCALE = 1e7
#: "optimal" means the lower bound is within this relative distance of the cost.
REL_GAP = 1e-8
#: The debug line HiGHS 1.8-1.12 prints to fd 1 (ERGO-Code/HiGHS#2783), dropped by :func:`drop_highs_stray_output`.
HIGHS_STRAY = b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();"


def proven(cost: float, bound: float) -> bool:
    """Whether ``bound`` certifies ``cost`` as optimal (within :data:`REL_GAP` relative)."""
    return cost - bound <= REL_GAP * abs(cost)


def _reduced_choices(problem: Problem, pos: np.ndarray, lam: float, upper: float, bound: float) -> np.ndarray:
    """Reduced-cost fixing, exact: the ``[N, P]`` mask of frontier choices that can still beat ``upper``.

    Any feasible x costs at least bound + sum_i r_i(x_i), where r_i(p) = e + lam*w - min_q(e + lam*w)
    >= 0 over matrix i's choices. A choice with r_i(p) > upper - bound therefore lies in no
    allocation cheaper than the incumbent ``pos``, so the MILP can drop it. This typically leaves a
    handful of choices per matrix and cuts HiGHS's time several-fold. The relative margin keeps ties
    and absorbs round-off.
    """
    lagr = problem.c + lam * problem.w
    reduced = lagr - lagr.min(axis=1, keepdims=True)
    keep = problem.valid & (reduced <= (upper - bound) + 1e-9 * upper)
    keep[np.arange(len(pos)), pos] = True  # the incumbent always stays representable
    return keep


def _milp_solver(problem: Problem, keep: np.ndarray, scale: float, time_limit: float,
                 start: float) -> Callable[[float], Any]:
    """A function ``rhs -> scipy OptimizeResult``: the MILP over the ``keep`` choices with budget row ``<= rhs``."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix, vstack

    n = keep.shape[0]
    flat_w, flat_c = problem.w[keep], problem.c[keep]
    nvar = len(flat_w)
    group = np.nonzero(keep)[0]  # row-major, so grouped by matrix
    one_hot = csr_matrix((np.ones(nvar), (group, np.arange(nvar))), shape=(n, nvar))
    a = vstack([one_hot, csr_matrix(flat_w[None, :] * ROW_SCALE)]).tocsr()
    lb = np.concatenate([np.ones(n), [-np.inf]])

    def solve(rhs: float) -> Any:
        seconds = max(time_limit - (time.perf_counter() - start), 1e-3)
        with drop_highs_stray_output():
            return milp(
                flat_c * scale,
                integrality=np.ones(nvar),
                bounds=Bounds(0, 1),
                constraints=LinearConstraint(a, lb, np.concatenate([np.ones(n), [rhs * ROW_SCALE]])),
                # HiGHS's default relative gap, 1e-4, would stop short of the optimum. Presolve
                # gains nothing on a model this plain and is what mostly triggers the stray output.
                options={"time_limit": seconds, "mip_rel_gap": REL_GAP / 10, "presolve": False},
            )

    return solve


def solve_exact(problem: Problem, budget: float, time_limit: float, start: float) -> Allocation:
    """The ``exact`` allocation at ``budget`` (already checked) within ``time_limit`` seconds of ``start``."""
    # The fast solution is the incumbent (upper bound), its multiplier gives the lower bound.
    fast_pos, lam, bound = lagrangian(problem, budget)
    fast_pos = fill(problem, fast_pos, budget)
    upper = problem.cost_of(fast_pos)
    if proven(upper, bound):  # e.g. every matrix got its least-error config
        return problem.result(fast_pos, budget, "exact", start, bound, optimal=True)
    keep = _reduced_choices(problem, fast_pos, lam, upper, bound)
    # Costs scaled so the optimum is ~1000 (LQ-LoRA uses 1000 / ||e||_F; relative to the
    # incumbent instead, HiGHS's absolute gap tolerance, 1e-6, stays 1e-9 of the optimum even
    # at high budgets where the chosen errors are tiny next to the 2-bit ones).
    scale = 1000.0 / upper
    solve = _milp_solver(problem, keep, scale, time_limit, start)
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
        xs = np.full(problem.w.shape, -1.0)
        xs[keep] = res.x
        found = np.argmax(xs, axis=1)
        over = problem.used(found) - budget
        if over > SOLVER_TOL:
            # HiGHS counts x within 1e-6 of 0/1 as integral, so x = 1 - 1e-9 can hide up to
            # 1e-6 of a weight from the budget row; rounded, the allocation is over. This only
            # bites for solutions within ~1e-6 * max weight of the budget (never seen on real
            # models, whose sums sit on a coarser lattice). Repair greedily, then re-solve once
            # with the row tightened by what HiGHS can hide, in case that finds better.
            found = repair(problem, found, budget)
            notes.append("HiGHS's solution exceeded the budget within its tolerance and was repaired")
        found_cost = problem.cost_of(found)
        if found_cost < cost:
            pos, cost = found, found_cost
        if over <= SOLVER_TOL or attempt == 1:
            break
        res = solve(budget - 2 * over - 1e-6 * float(problem.w[keep].max()))
    optimal = proven(cost, bound)
    note = "" if optimal else "; ".join(dict.fromkeys(notes)) or "not proven optimal"
    return problem.result(pos, budget, "exact", start, bound, optimal, note)


@contextlib.contextmanager
def drop_highs_stray_output() -> Iterator[None]:
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
            kept = b"".join(line for line in tmp if line.rstrip(b"\r\n") != HIGHS_STRAY)
            if kept:
                os.write(1, kept)
