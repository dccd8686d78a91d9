"""Tests for coalora.lqlora.allocate: LQ-LoRA's bit-allocation ILP (method.md section 2.3)."""

from __future__ import annotations

import itertools
import math
import os
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coalora.errors import CoaloraError
from coalora.lqlora.allocate import (
    BUDGET_TOL,
    Allocation,
    allocate,
    allocate_many,
    optimality_gap,
    synthetic_instance,
)
from coalora.lqlora.knapsack import Problem
from coalora.lqlora.milp import HIGHS_STRAY, drop_highs_stray_output
from coalora.quant.config import ALL_CONFIGS, MAX_BITS, MIN_BITS

METHODS = ("exact", "fast")


def avg_bits(choice, numels, bits) -> float:
    numels = np.asarray(numels, dtype=np.float64)
    return float(np.dot(np.asarray(bits, dtype=np.float64)[list(choice)], numels) / numels.sum())


def brute_force(costs, numels, bits, budget) -> float:
    """Optimal cost by enumerating all K^N allocations."""
    costs, numels, bits = (np.asarray(a, dtype=np.float64) for a in (costs, numels, bits))
    n, k = costs.shape
    grid = np.array(list(itertools.product(range(k), repeat=n)))  # K^N x N
    used = (bits[grid] * numels).sum(axis=1) / numels.sum()
    total = costs[np.arange(n), grid].sum(axis=1)
    return float(total[used <= budget + BUDGET_TOL].min())


def check_consistent(a: Allocation, costs, numels, bits, budget) -> None:
    """The reported numbers match the choice, and the choice fits the budget."""
    costs = np.asarray(costs, dtype=np.float64)
    assert len(a.choice) == costs.shape[0]
    assert a.avg_bits == pytest.approx(avg_bits(a.choice, numels, bits), rel=1e-14)
    assert a.avg_bits <= budget + BUDGET_TOL
    assert a.cost == pytest.approx(costs[np.arange(len(a.choice)), list(a.choice)].sum(), rel=1e-12)
    assert a.lower_bound is not None and a.lower_bound <= a.cost * (1 + 1e-12) + 1e-12
    assert a.seconds >= 0


# ---------------------------------------------------------------- hand-checkable fixtures
def test_two_matrices_picks_the_bigger_saving():
    costs = [[10.0, 1.0], [5.0, 4.0]]  # upgrading matrix 0 saves 9, matrix 1 saves only 1
    for method in METHODS:
        assert allocate(costs, [1, 1], [2.0, 4.0], 3.0, method).choice == (1, 0)
        assert allocate(costs, [1, 1], [2.0, 4.0], 2.0, method).choice == (0, 0)
        full = allocate(costs, [1, 1], [2.0, 4.0], 4.0, method)
        assert full.choice == (1, 1) and full.cost == 5.0 and full.avg_bits == 4.0


def test_numels_weight_the_budget():
    # 3 + 1 params, base 2 bits -> 8 bit-params; budget 2.5 allows 10: only the small matrix can
    # move, and its best move is the full +2 bits.
    costs = [[9.0, 5.0, 4.0], [8.0, 2.0, 1.0]]
    for method in METHODS:
        a = allocate(costs, [3, 1], [2.0, 3.0, 4.0], 2.5, method)
        assert a.choice == (0, 2) and a.cost == 10.0 and a.avg_bits == 2.5


def test_knapsack_trap_exact_beats_greedy_and_bounds_hold():
    # Matrix A: +1 bit saves 3 (best ratio); matrix B: +2 bits saves 5 (3-bit step is nearly useless).
    # With 2 spare bits greedy takes A first and can no longer afford B: 16.9 vs the optimum 15.
    costs = [[10.0, 7.0, 6.9], [10.0, 9.9, 5.0]]
    numels, bits = [1, 1], [2.0, 3.0, 4.0]
    exact = allocate(costs, numels, bits, 3.0, "exact")
    fast = allocate(costs, numels, bits, 3.0, "fast")
    assert exact.choice == (0, 2) and exact.cost == 15.0 and exact.optimal
    assert fast.cost == pytest.approx(16.9) and not fast.optimal
    # Lagrangian dual at lam = 5 per average bit: (14.5 + 15) - 5 * 3 = 14.5.
    assert fast.lower_bound == pytest.approx(14.5)
    assert optimality_gap(fast, exact) == pytest.approx(1.9 / 15)
    assert fast.gap == pytest.approx((16.9 - 14.5) / 16.9)
    assert exact.gap == pytest.approx(0.0, abs=1e-9)


def test_dominated_configs_are_never_chosen():
    # Config 1 has more bits and more cost than config 0: it must never be picked, whatever the budget.
    costs = [[5.0, 6.0, 1.0], [5.0, 7.0, 4.0]]
    for method, budget in itertools.product(METHODS, (2.0, 2.9, 3.0, 3.5, 4.0)):
        assert 1 not in allocate(costs, [1, 1], [2.0, 3.0, 4.0], budget, method).choice


def test_ties_are_handled():
    # Identical configs and an all-zero cost row.
    costs = [[3.0, 3.0, 1.0], [0.0, 0.0, 0.0]]
    for method in METHODS:
        a = allocate(costs, [1, 1], [2.0, 2.0, 3.0], 2.5, method)
        assert a.cost == 1.0 and a.avg_bits == 2.5


def test_torch_input_matches_numpy():
    costs, numels, bits = synthetic_instance(0, blocks=2)
    a = allocate(costs, numels, bits, 3.0, "exact")
    b = allocate(torch.tensor(costs, dtype=torch.float32).double(), torch.tensor(numels), torch.tensor(bits), 3.0)
    assert a.choice == b.choice


# ---------------------------------------------------------------- brute force on random instances
def random_instance(rng: np.random.Generator, n: int, k: int):
    # Bits from a small grid so that ties and exactly-representable budgets occur.
    bits = rng.choice([2.0, 2.5, 3.0, 3.125, 4.0, 4.5, 8.0], size=k)
    numels = rng.integers(1, 1000, size=n)
    costs = rng.gamma(1.0, 10.0, size=(n, k)) * rng.integers(0, 2, size=(n, k))  # many exact zeros
    lo, hi = bits.min(), bits.max()
    budget = float(rng.choice([lo, hi, lo + rng.random() * (hi - lo)]))
    return costs, numels, bits, budget


def check_against_brute_force(costs, numels, bits, budget) -> None:
    best = brute_force(costs, numels, bits, budget)
    exact = allocate(costs, numels, bits, budget, "exact")
    fast = allocate(costs, numels, bits, budget, "fast")
    for a in (exact, fast):
        check_consistent(a, costs, numels, bits, budget)
    tol = 1e-9 * max(best, 1.0)
    assert exact.cost == pytest.approx(best, abs=tol)
    assert exact.optimal
    assert fast.cost >= exact.cost - tol
    assert fast.lower_bound <= exact.cost + tol  # the dual bound is a true lower bound
    assert exact.lower_bound <= exact.cost + tol


@pytest.mark.parametrize("seed", range(40))
def test_random_small_instances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    check_against_brute_force(*random_instance(rng, n, k))


@st.composite
def instances(draw):
    n = draw(st.integers(1, 4))
    k = draw(st.integers(1, 5))
    bits = draw(st.lists(st.sampled_from([2.0, 2.0322265625, 3.0, 3.125, 4.0, 8.625]), min_size=k, max_size=k))
    numels = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    cost = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
    costs = draw(st.lists(st.lists(cost, min_size=k, max_size=k), min_size=n, max_size=n))
    u = draw(st.floats(0.0, 1.0))
    budget = min(bits) + u * (max(bits) - min(bits))
    return np.array(costs), np.array(numels), np.array(bits), min(max(budget, min(bits)), max(bits))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_property_exact_is_optimal_and_fast_is_bounded(instance):
    check_against_brute_force(*instance)


def test_allocation_a_hair_over_the_budget_is_never_returned():
    # Allocation (3, 3) uses 5.8e-13 bits more than the budget: HiGHS's integrality tolerance lets
    # it pass the budget row. allocate must still stay within BUDGET_TOL and find the true optimum
    # among allocations that fit, (2, 3) at 5.3601.
    costs = [
        [0.00041149147887640283, 0.005694208725026168, 5.293548219808691, 0.0],
        [0.3148472483675749, 0.0, 26.7596195602605, 0.06655484627860643],
    ]
    numels = [787364, 5932902]
    bits = [7.144101911887578, 6.0373909234493945, 4.649104551070917, 5.817409928635161]
    budget = 5.81740992863458
    strict = brute_force(costs, numels, bits, budget - BUDGET_TOL)
    exact = allocate(costs, numels, bits, budget, "exact")
    check_consistent(exact, costs, numels, bits, budget)
    assert exact.cost == pytest.approx(strict, rel=1e-12)
    assert exact.optimal == (exact.note == "")
    check_consistent(allocate(costs, numels, bits, budget, "fast"), costs, numels, bits, budget)


# ---------------------------------------------------------------- full size (SmolLM2, 210 x 432)
FULL_BUDGETS = (2.5, 3.0, 4.0, 6.0)


@pytest.fixture(scope="module")
def full():
    costs, numels, bits = synthetic_instance(0)
    exact = allocate_many(costs, numels, bits, FULL_BUDGETS, "exact")
    fast = allocate_many(costs, numels, bits, FULL_BUDGETS, "fast")
    return costs, numels, bits, exact, fast


def test_full_instance_shape_uses_real_configs():
    costs, numels, bits = synthetic_instance(0)
    assert costs.shape == (210, 432) and numels.shape == (210,)
    assert numels[:7].tolist() == [576 * 576, 192 * 576, 192 * 576, 576 * 576, 1536 * 576, 1536 * 576, 576 * 1536]
    assert bits.tolist() == [c.bits for c in ALL_CONFIGS]
    # Pruning dominated configs leaves well under a quarter of the 432 per matrix.
    assert Problem(costs, numels, bits).lengths.max() < 432 // 4


def test_full_instance_both_methods_meet_budget(full):
    costs, numels, bits, exact, fast = full
    for budget, e, f in zip(FULL_BUDGETS, exact, fast):
        check_consistent(e, costs, numels, bits, budget)
        check_consistent(f, costs, numels, bits, budget)
        # The allocation's bits, recomputed from the configs themselves.
        assert e.avg_bits == pytest.approx(
            sum(ALL_CONFIGS[c].bits * n for c, n in zip(e.choice, numels)) / numels.sum(), rel=1e-12
        )
        assert e.avg_bits > budget - 0.01  # a tight budget is (nearly) used up
        assert e.optimal and e.note == ""
        assert e.seconds < 10.0, f"exact took {e.seconds:.2f} s at {budget} bits"


def test_full_instance_fast_is_near_exact(full):
    _, _, _, exact, fast = full
    gaps = {b: optimality_gap(f, e) for b, e, f in zip(FULL_BUDGETS, exact, fast)}
    print("fast vs exact relative gaps:", {b: f"{g:.2e}" for b, g in gaps.items()})
    for (b, g), e, f in zip(gaps.items(), exact, fast):
        assert -1e-12 <= g < 2e-3, f"fast is {g:.2e} above exact at {b} bits"
        assert f.lower_bound <= e.cost * (1 + 1e-12)
        assert f.gap < 2e-3  # the certificate alone already says fast is within 0.2%


def test_full_instance_fast_is_fast():
    costs, numels, bits = synthetic_instance(0)
    # Best of a few runs, so a busy machine does not make this flaky.
    best = min(allocate(costs, numels, bits, 3.0, "fast").seconds for _ in range(5))
    assert best < 0.05, f"fast took {best * 1e3:.1f} ms"


def test_allocate_many_matches_allocate(full):
    costs, numels, bits, exact, fast = full
    assert [a.choice for a in fast] == [allocate(costs, numels, bits, b, "fast").choice for b in FULL_BUDGETS]
    assert allocate(costs, numels, bits, 3.0, "exact").cost == pytest.approx(exact[1].cost, rel=1e-9)


def test_time_limit_returns_a_feasible_allocation():
    costs, numels, bits = synthetic_instance(1)
    fast = allocate(costs, numels, bits, 7.25, "fast")
    a = allocate(costs, numels, bits, 7.25, "exact", time_limit=1e-3)
    check_consistent(a, costs, numels, bits, 7.25)
    assert a.cost <= fast.cost  # never worse than the heuristic it starts from
    assert a.optimal == (a.note == "")  # a stop short of optimal always says why
    if not a.optimal:
        assert a.gap is not None and a.lower_bound <= a.cost


# ---------------------------------------------------------------- budget edge cases
@pytest.mark.parametrize("method", METHODS)
def test_budget_at_the_extremes(method):
    costs, numels, bits = synthetic_instance(0, blocks=2)
    low = allocate(costs, numels, bits, MIN_BITS, method)
    assert low.avg_bits == MIN_BITS and all(bits[c] == MIN_BITS for c in low.choice)
    cheapest = np.where(bits == MIN_BITS, costs, np.inf).min(axis=1).sum()
    assert low.cost == pytest.approx(cheapest, rel=1e-12)  # the better of the two 2.03-bit configs
    # At the top the budget binds nothing: every matrix gets its least-error config...
    high = allocate(costs, numels, bits, MAX_BITS, method)
    assert high.cost == pytest.approx(costs.min(axis=1).sum(), rel=1e-12)
    # ... which is the most expensive one when error strictly falls with bits.
    monotone = numels[:, None] * 2.0 ** -bits[None, :]
    top = allocate(monotone, numels, bits, MAX_BITS, method)
    assert top.avg_bits == MAX_BITS and all(bits[c] == MAX_BITS for c in top.choice)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "budget",
    [MIN_BITS - 1e-9, MAX_BITS + 1e-9, 1.5, 9.0, -3.0, 0.0, math.nan, math.inf, -math.inf],
)
def test_budget_outside_range_names_the_range(method, budget):
    costs, numels, bits = synthetic_instance(0, blocks=1)
    with pytest.raises(CoaloraError, match=r"outside the feasible range 2\.0322265625\.\.8\.625 average bits"):
        allocate(costs, numels, bits, budget, method)


@pytest.mark.parametrize("method", METHODS)
def test_budget_a_rounding_error_outside_is_clamped(method):
    # E.g. an allocation's avg_bits fed back as a budget: off by an ulp, it still means the extreme.
    costs, numels, bits = synthetic_instance(0, blocks=1)
    low = allocate(costs, numels, bits, np.nextafter(MIN_BITS, 0), method)
    high = allocate(costs, numels, bits, np.nextafter(MAX_BITS, 9), method)
    assert low.avg_bits == MIN_BITS and high.cost == pytest.approx(costs.min(axis=1).sum(), rel=1e-12)


@pytest.mark.parametrize("budget", ["3", None, True, [3.0], b"3"])
def test_budget_not_a_number(budget):
    costs, numels, bits = synthetic_instance(0, blocks=1)
    with pytest.raises(CoaloraError, match="budget must be a number"):
        allocate(costs, numels, bits, budget)


def test_budget_range_follows_the_given_bits():
    with pytest.raises(CoaloraError, match=r"budget 5\.0 bits is outside the feasible range 2\.0\.\.4\.0"):
        allocate([[1.0, 0.0]], [10], [2.0, 4.0], 5)


def test_numpy_number_budgets_work():
    for budget in (np.float32(3.0), np.float64(3.0), np.int64(3)):
        assert allocate([[1.0, 0.0]], [10], [2.0, 4.0], budget, "exact").avg_bits == 2.0


# ---------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "costs, numels, bits, match",
    [
        ([[1.0, math.nan]], [1], [2.0, 3.0], "finite and non-negative"),
        ([[1.0, math.inf]], [1], [2.0, 3.0], "finite and non-negative"),
        ([[1.0, -1e-9]], [1], [2.0, 3.0], "finite and non-negative"),
        ([1.0, 2.0], [1], [2.0, 3.0], "N x K"),
        (np.zeros((0, 2)), [], [2.0, 3.0], "N x K"),
        ([[1.0, 2.0]], [1, 2], [2.0, 3.0], "numels must have one entry per matrix"),
        ([[1.0, 2.0]], [1], [2.0], "bits must have one entry per config"),
        ([[1.0, 2.0]], [0], [2.0, 3.0], "numels must be positive"),
        ([[1.0, 2.0]], [1], [2.0, math.nan], "bits must be positive"),
        ([[1.0, 2.0], [1.0]], [1, 1], [2.0, 3.0], "costs must be numeric"),
        ([["a", "b"]], [1], [2.0, 3.0], "costs must be numeric"),
    ],
)
def test_bad_inputs(costs, numels, bits, match):
    with pytest.raises(CoaloraError, match=match):
        allocate(costs, numels, bits, 2.5)


def test_bad_method_and_time_limit():
    with pytest.raises(CoaloraError, match="unknown allocation method 'ilp'"):
        allocate([[1.0, 0.0]], [1], [2.0, 3.0], 2.5, "ilp")
    for limit in (0, -1.0, math.nan, "60", True):
        with pytest.raises(CoaloraError, match="time_limit must be a positive number"):
            allocate([[1.0, 0.0]], [1], [2.0, 3.0], 2.5, "exact", time_limit=limit)
    with pytest.raises(CoaloraError, match="budgets must be a list"):
        allocate_many([[1.0, 0.0]], [1], [2.0, 3.0], 2.5)


# ---------------------------------------------------------------- small helpers
def test_optimality_gap_and_gap_edge_cases():
    def alloc(cost, bound=None):
        return Allocation((0,), 2.0, cost, "fast", 0.0, bound, False)

    assert optimality_gap(alloc(0.0), alloc(0.0)) == 0.0
    assert optimality_gap(alloc(1.0), alloc(0.0)) == math.inf
    assert optimality_gap(alloc(1.1), alloc(1.0)) == pytest.approx(0.1)
    assert alloc(1.0).gap is None
    assert alloc(0.0, 0.0).gap == 0.0
    assert alloc(2.0, 1.5).gap == pytest.approx(0.25)


def test_highs_stray_line_is_dropped_and_other_output_kept(capfd):
    with drop_highs_stray_output():
        os.write(1, HIGHS_STRAY + b"\n")
        print("python output", flush=True)
        os.write(1, b"other C output\n")
    out = capfd.readouterr().out
    assert "HighsMipSolverData" not in out
    assert "python output" in out and "other C output" in out


def test_exact_solve_prints_nothing(capfd):
    costs, numels, bits = synthetic_instance(5)  # an instance where HiGHS emitted its debug line
    start = time.perf_counter()
    allocate(costs, numels, bits, 2.75, "exact")
    assert time.perf_counter() - start < 10
    assert capfd.readouterr().out == ""
