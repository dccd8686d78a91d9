"""The GP-predicted front: a synthetic problem with a known front, budget queries, incremental
refits, the EHVI on hand-checkable fixtures, and the direct GP marginals against botorch's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coalora.allocate import allocate
from coalora.config import MAX_BITS, MIN_BITS, ModelQuantConfig
from coalora.errors import CoaloraError
from coalora.front import (
    CONFIG_BITS,
    FrontQuery,
    FrontService,
    FrontSettings,
    _predict,
    check_budget,
    expected_hvi,
    fit_gp,
)
from coalora.models import find_targets, tiny_llama
from coalora.store import Evaluation, Store

MODEL = "tiny-llama"
SET = "synthetic:eval@00000000"


@pytest.fixture(scope="module")
def problem():
    """14 tiny-llama matrices; an error table; the truth log ppl = log 20 + 3 * (mean table error)."""
    targets = find_targets(tiny_llama())
    rng = np.random.default_rng(0)
    sens = rng.lognormal(0, 0.5, size=(len(targets), 1))
    table = sens * 4.0 ** (-(CONFIG_BITS[None, :] - 2.0))  # error falls ~4x per bit, per-matrix sensitivity
    return targets, table


def truth(table: np.ndarray, ids) -> float:
    return math.log(20.0) + 3.0 * float(table[np.arange(len(ids)), np.asarray(ids)].mean())


def _service(problem, store, **kw) -> FrontService:
    targets, table = problem
    return FrontService(store, MODEL, targets, table, FrontSettings(grid=40, neighbours=6, **kw))


def _add(store, problem, ids) -> ModelQuantConfig:
    targets, table = problem
    c = ModelQuantConfig.from_ids(MODEL, targets, list(ids))
    y = truth(table, ids)
    store.add_evaluation(Evaluation(MODEL, c.hash, "coalora", "a", SET, 256, 8, 2040, math.exp(y), y, c.avg_bits), config=c)
    return c


@pytest.fixture
def filled(problem):
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, _, _ = svc.candidates()
    pick = np.random.default_rng(1).choice(len(cids), 60, replace=False)
    for i in pick:
        _add(store, problem, cids[i])
    yield svc, store
    store.close()


def test_candidates_span_the_budget_grid_and_are_unique(problem):
    svc = _service(problem, Store(":memory:", seed_dir=None))
    ids, bits, src = svc.candidates()
    assert len(np.unique(ids, axis=0)) == len(ids)
    assert bits.min() < 2.2 and bits.max() > 8.0
    assert {"allocator", "neighbour"} <= set(src)
    assert ((ids >= 0) & (ids < 432)).all()


def test_front_is_sorted_non_dominated_and_brackets_the_truth(filled, problem):
    svc, _ = filled
    res = svc.front(FrontQuery(MODEL))
    assert res.query["eval_set"] == SET  # resolved to the only stored set
    assert len(res.measured) == 60 and res.refit == "full"
    bits = [p.avg_bits for p in res.front]
    preds = [p.pred_ppl for p in res.front]
    assert bits == sorted(bits)
    assert all(a > b for a, b in zip(preds, preds[1:]))  # more bits, lower predicted ppl: non-dominated
    assert all(p.pred_lo <= p.pred_ppl <= p.pred_hi for p in res.front)
    # Measured configurations are shown at their measured value, without a band.
    for p in res.front:
        if p.ppl is not None:
            assert p.pred_ppl == pytest.approx(p.ppl, rel=1e-9) and p.pred_lo == pytest.approx(p.ppl, rel=1e-9)
    assert res.hypervolume["predicted"] >= res.hypervolume["measured"] * 0.98 > 0


@pytest.mark.parametrize("budget", [3.0, 4.0, 5.5])
def test_budget_query_is_within_budget_and_near_the_true_optimum(filled, problem, budget):
    svc, _ = filled
    targets, table = problem
    res = svc.front(FrontQuery(MODEL), budget=budget)
    assert res.best is not None and res.best.avg_bits <= budget + 1e-9
    best = svc.config(res.best.config_hash)
    opt = allocate(table, [t.numel for t in targets], CONFIG_BITS, budget, method="exact")
    # The allocator's exact solution is the true optimum of this synthetic problem. From 60 noisy-free
    # points in 14 dimensions the GP need not find it, but it must land near it (0.2 nats of log ppl).
    assert truth(table, best.ids) <= truth(table, opt.choice) + 0.2


def test_budget_outside_the_space_is_one_clear_error(filled):
    svc, _ = filled
    for bad in (1.5, 9.0, float("nan"), float("inf"), -3, "x"):
        with pytest.raises(CoaloraError, match="budget"):
            svc.front(FrontQuery(MODEL), budget=bad)
    assert check_budget(MIN_BITS) == MIN_BITS and check_budget(MAX_BITS) == MAX_BITS


def test_refits_are_incremental(filled, problem):
    svc, store = filled
    q = FrontQuery(MODEL)
    assert svc.front(q).refit == "full"
    assert svc.front(q).refit == "cached"
    cids, _, _ = svc.candidates()
    seen = {c for c in store.configs(MODEL)}
    fresh = [row for row in cids if ModelQuantConfig.from_ids(MODEL, problem[0], row.tolist()).hash not in seen]
    _add(store, problem, fresh[0])
    assert svc.front(q).refit == "condition"  # 1 new of 60: hyperparameters kept
    for row in fresh[1:20]:
        _add(store, problem, row)
    res = svc.front(q)
    assert res.refit == "warm" and len(res.measured) == 80


def test_too_few_evaluations_give_measured_points_and_no_prediction(problem):
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, _, _ = svc.candidates()
    _add(store, problem, cids[0])
    res = svc.front(FrontQuery(MODEL))
    assert len(res.measured) == 1 and res.front == [] and res.refit.startswith("none")
    with pytest.raises(CoaloraError, match="evaluate a few"):
        svc.best_config(FrontQuery(MODEL), 4.0)


def test_proposals_are_unmeasured_candidates(filled):
    svc, store = filled
    res = svc.front(FrontQuery(MODEL))
    measured = set(store.configs(MODEL))
    assert 0 < len(res.proposals) <= svc.settings.proposals
    assert all(p.config_hash not in measured and p.source == "ehvi" for p in res.proposals)


def test_validation_on_smooth_synthetic_data_ranks_well(filled):
    svc, _ = filled
    v = svc.validate(FrontQuery(MODEL), folds=5)
    assert v["n"] == 60 and v["spearman"] > 0.9 and v["rmse_log_ppl"] < 0.2


def test_unknown_hash_and_wrong_model_are_clear_errors(filled):
    svc, _ = filled
    with pytest.raises(CoaloraError, match="unknown configuration"):
        svc.config("0123456789abcdef")
    with pytest.raises(CoaloraError, match="front service is for"):
        svc.front(FrontQuery("smollm2-135m"))


def test_expected_hvi_hand_checked():
    # One front point (2, 2), reference (4, 4); deterministic candidates (sd 0).
    fb, fl = np.array([2.0]), np.array([2.0])
    bits = np.array([1.0, 3.0, 3.0, 1.0])
    mean = np.array([1.0, 3.0, 1.0, 5.0])
    e = expected_hvi(bits, mean, np.zeros(4), fb, fl, (4.0, 4.0))
    # (1,1): 3*3 - 2*2 = 5; (3,3): dominated, 0; (3,1): 1*3 - 1*2 = 1; (1,5): beyond the reference, 0
    np.testing.assert_allclose(e, [5.0, 0.0, 1.0, 0.0])
    # Uncertainty only adds expected improvement for a point on the front's edge (convexity).
    e_unc = expected_hvi(np.array([2.0]), np.array([2.0]), np.array([0.5]), fb, fl, (4.0, 4.0))
    assert e_unc[0] > 0


def test_direct_marginals_match_botorch_posterior():
    torch.manual_seed(0)
    x = torch.rand(30, 5, dtype=torch.float64)
    y = x.sum(1) + 0.05 * torch.randn(30, dtype=torch.float64)
    gp = fit_gp(x, y)
    xc = torch.rand(9, 5, dtype=torch.float64)
    mean, sd = _predict(gp, xc)
    with torch.no_grad():
        post = gp.posterior(xc)
    np.testing.assert_allclose(mean, post.mean[:, 0].numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sd, post.variance[:, 0].sqrt().numpy(), rtol=1e-6, atol=1e-9)
