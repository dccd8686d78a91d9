"""Per-matrix bit allocation under an average-bits budget: LQ-LoRA's ILP (method.md section 2.3).

Given N weight matrices, a cost ``e[i, c]`` (quantization error of matrix i under config c) for each
of K configs, the configs' storage ``bits[c]`` and the matrices' sizes ``numels[i]``, pick one config
per matrix to

    minimise  sum_i e[i, x_i]    subject to    sum_i bits[x_i] * numels[i] <= budget * sum_i numels[i].

This is a multiple-choice knapsack (:mod:`coalora.lqlora.knapsack`: validation and the pruning of
dominated configs, shared by both solvers). The solvers:

* ``method="exact"``: the MILP, solved by HiGHS through :func:`scipy.optimize.milp`
  (:mod:`coalora.lqlora.milp`);
* ``method="fast"``: the Lagrangian relaxation of the budget (method.md section 10 S2) solved exactly
  on each matrix's lower convex hull, then a greedy pass that spends the leftover budget
  (:mod:`coalora.lqlora.lagrangian`). It comes with the dual lower bound, so its distance from
  optimal is known without the MILP.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError
from coalora.lqlora.knapsack import BUDGET_TOL, Allocation, Problem
from coalora.lqlora.lagrangian import solve_fast
from coalora.lqlora.milp import solve_exact
from coalora.lqlora.synthetic import SMOLLM2_SHAPES, synthetic_instance

if TYPE_CHECKING:
    from coalora.lqlora.knapsack import ArrayLike
    from coalora.models import Target
    from coalora.quant.config import ModelQuantConfig

__all__ = [
    "BUDGET_TOL", "METHODS", "SMOLLM2_SHAPES", "Allocation", "allocate", "allocate_config", "allocate_many",
    "optimality_gap", "synthetic_instance",
]

METHODS: tuple[str, ...] = ("exact", "fast")


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
        bits: ``K`` storage bits per parameter of each config (e.g. :data:`~coalora.quant.config.CONFIG_BITS`).
        budget: target average bits per parameter; must lie in ``[min(bits), max(bits)]`` (up to
            BUDGET_TOL, e.g. ``[MIN_BITS, MAX_BITS]`` for the full 432-config space).
        method: ``"exact"`` (MILP, HiGHS) or ``"fast"`` (Lagrangian + greedy, milliseconds).
        time_limit: seconds HiGHS may spend (exact only); past it the best solution found is returned
            with ``optimal=False``.
    """
    start = time.perf_counter()
    return _solve(Problem(costs, numels, bits), budget, method, time_limit, start)


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
    problem = Problem(costs, numels, bits)
    return [_solve(problem, b, method, time_limit, time.perf_counter()) for b in budgets]


def _solve(problem: Problem, budget: object, method: str, time_limit: float, start: float) -> Allocation:
    value = problem.check_budget(budget)
    if method not in METHODS:
        raise CoaloraError(f"unknown allocation method {method!r}; use one of {', '.join(METHODS)}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, numbers.Real) or not time_limit > 0:
        raise CoaloraError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if method == "fast":
        return solve_fast(problem, value, start)
    return solve_exact(problem, value, float(time_limit), start)
