"""The front service: a synthetic problem with a known front, budget queries, incremental refits, the
EHVI batch against a brute-force one, the encoding as the service uses it, and held-out validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coalora.errors import CoaloraError
from coalora.lqlora.allocate import allocate
from coalora.models import find_targets, tiny_llama
from coalora.quant.config import MAX_BITS, MIN_BITS, ModelQuantConfig
from coalora.search.encoding import BITS as CONFIG_BITS
from coalora.search.encoding import encode
from coalora.search.front import (
    ENCODING,
    FrontQuery,
    FrontService,
    FrontSettings,
    check_budget,
    expected_hvi,
    posterior,
)
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


def test_kld_front_fits_log_kl_and_never_mixes_specs(problem):
    """metric="kld": the measured points are the stored KLs (rows without one skipped), the front
    falls with bits; a prefix-v0 row of the same configuration enters neither front."""
    targets, table = problem
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, _, _ = svc.candidates()
    klds = {}
    for n, i in enumerate(np.random.default_rng(2).choice(len(cids), 24, replace=False)):
        c = ModelQuantConfig.from_ids(MODEL, targets, cids[i].tolist())
        y = truth(table, cids[i])
        kld = None if n % 4 == 3 else 0.3 * (y - math.log(20.0)) + 2e-3  # every 4th without KL
        store.add_evaluation(Evaluation(MODEL, c.hash, "coalora", "a", SET, 256, 8, 2040, math.exp(y), y, c.avg_bits,
                                        kld=kld), config=c)
        if kld is not None:
            klds[c.hash] = kld
        if n == 0:  # the same configuration under the old spec, far off: must not be fitted
            store.add_evaluation(Evaluation(MODEL, c.hash, "coalora", "a", SET, 256, 8, 2040, 1e6, math.log(1e6),
                                            c.avg_bits, eval_spec="prefix-v0", kld=50.0))
    res = svc.front(FrontQuery(MODEL, metric="kld"))
    assert res.metric == "kld" and res.query["metric"] == "kld" and "kld" in res.hv_reference
    assert {p.config_hash: p.ppl for p in res.measured} == pytest.approx(klds, rel=1e-9)
    preds = [p.pred_ppl for p in res.front]
    assert preds and all(a > b for a, b in zip(preds, preds[1:])) and all(0 < v < 5 for v in preds)
    assert res.hypervolume["measured"] > 0 and res.proposals
    ppl = svc.front(FrontQuery(MODEL))
    assert len(ppl.measured) == 24 and max(p.ppl for p in ppl.measured) < 1e3  # the prefix-v0 row is not in it
    assert len(svc.front(FrontQuery(MODEL, eval_spec="prefix-v0")).measured) == 1
    with pytest.raises(CoaloraError, match="unknown front metric"):
        FrontQuery(MODEL, metric="loss")
    store.close()


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


def test_proposals_spread_over_an_unmeasured_region(problem):
    # Only allocator points above 3 bits are measured, so everything below is uncertain. Ranked by
    # their own EHVI the proposals all sat within 0.25 bits of each other (near-copies); the
    # Kriging-believer batch must spread them over the gap.
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, bits, src = svc.candidates()
    for i in np.flatnonzero((np.array(src) == "allocator") & (bits > 3.0))[::3]:
        _add(store, problem, cids[i])
    res = svc.front(FrontQuery(MODEL))
    got = np.array([p.avg_bits for p in res.proposals])
    assert len(got) == svc.settings.proposals
    assert len({p.config_hash for p in res.proposals}) == len(got)
    assert got.max() - got.min() > 1.0 and len(np.unique(np.round(got, 1))) >= 6, got


def _brute_force_batch(svc, q, k):
    """The Kriging-believer batch with every candidate re-scored after every pick (no shortlist)."""
    from coalora.search.front import HV_BITS_REF, HV_PPL_REF
    from coalora.search.pareto import pareto_mask

    def _pareto(b, v):
        return pareto_mask(np.stack([b, v], 1))

    hashes, ids, y = svc.measured(q)
    gp, _ = svc.fit(q)
    cids, cbits, _ = svc.candidates()
    done = {row.tobytes() for row in ids}
    fresh = np.array([row.tobytes() not in done for row in cids])
    cids, cbits = cids[fresh], cbits[fresh]
    x = svc.encode(cids)
    bm = svc.avg_bits(ids)
    f = _pareto(bm, y)
    fb, fl = bm[f], y[f]
    picks, vals = [], []
    for _ in range(k):
        extra = (x[picks], torch.tensor(vals, dtype=x.dtype)) if picks else None
        m, sd = posterior(gp, x, extra=extra)
        e = expected_hvi(cbits, m, sd, fb, fl, (HV_BITS_REF, math.log(HV_PPL_REF)))
        e[picks] = 0.0
        i = int(np.argmax(e))
        picks.append(i)
        vals.append(float(m[i]))
        keep = _pareto(np.append(fb, cbits[i]), np.append(fl, m[i]))
        fb, fl = np.append(fb, cbits[i])[keep], np.append(fl, m[i])[keep]
    return [ModelQuantConfig.from_ids(MODEL, svc.targets, cids[i].tolist()).hash for i in picks]


@pytest.mark.parametrize("shortlist", [256, 3])
def test_lazy_proposals_equal_the_brute_force_batch(filled, monkeypatch, shortlist):
    # Re-scoring only a shortlist is exact (a pick only lowers the others' EHVI); a shortlist of 3
    # runs out after the first picks and must fall back to scoring everything, with the same result.
    import coalora.search.front as front

    svc, _ = filled
    monkeypatch.setattr(front, "PROPOSAL_SHORTLIST", shortlist)
    q = svc._resolve(FrontQuery(MODEL))
    res = svc.front(q)
    assert [p.config_hash for p in res.proposals] == _brute_force_batch(svc, q, svc.settings.proposals)


def test_validation_on_smooth_synthetic_data_ranks_well(filled):
    svc, _ = filled
    v = svc.validate(FrontQuery(MODEL), folds=5)
    assert v["n"] == 60 and v["spearman"] > 0.9 and v["rmse_log_ppl"] < 0.2
    # Noise-free data: the band may be generous, but it must hold most held-out points.
    assert 0.85 <= v["coverage_2sigma"] <= 1.0 and v["median_abs_err_log"] < 0.1
    assert v["band_target"] == pytest.approx(0.9545, abs=1e-4)


def test_unknown_hash_and_wrong_model_are_clear_errors(filled):
    svc, _ = filled
    with pytest.raises(CoaloraError, match="unknown configuration"):
        svc.config("0123456789abcdef")
    with pytest.raises(CoaloraError, match="front service is for"):
        svc.front(FrontQuery("smollm2-135m"))


def test_encoding_is_average_bits_and_the_allocators_objective(problem):
    targets, table = problem
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, cbits, _ = svc.candidates()
    x = svc.encode(cids).numpy()
    assert x.shape == (len(cids), 2) and (x >= 0).all() and (x <= 1).all()
    np.testing.assert_allclose(x[:, 0], (cbits - MIN_BITS) / (MAX_BITS - MIN_BITS), rtol=1e-12)
    objective = table[np.arange(len(targets)), cids].sum(1)
    assert (np.diff(x[np.argsort(objective), 1]) >= 0).all()  # monotone in the allocator's objective
    # The ends of the space: the least and the most error a configuration can have.
    best, worst = table.argmin(1), table.argmax(1)
    np.testing.assert_allclose(encode(np.stack([best, worst]), svc.numels, table)[:, 1].numpy(), [0.0, 1.0],
                               atol=1e-12)
    assert svc.front(FrontQuery(MODEL)).encoding == ENCODING
    store.close()


def test_prediction_beyond_the_measured_bits_keeps_falling(problem):
    # Measured only between 3 and 6 bits: the front's candidates up to 8.6 bits are extrapolations,
    # where a constant-mean GP reverts upwards; the linear mean keeps more bits at least as good.
    targets, table = problem
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, cbits, _ = svc.candidates()
    inside = np.flatnonzero((cbits > 3.0) & (cbits < 6.0))
    for i in np.random.default_rng(2).choice(inside, 40, replace=False):
        _add(store, problem, cids[i])
    q = svc._resolve(FrontQuery(MODEL))
    gp, _ = svc.fit(q)
    budgets = [6.0, 7.0, 8.0, 8.6]
    sols = np.array([allocate(table, svc.numels, CONFIG_BITS, b, method="fast").choice for b in budgets])
    mean, _ = posterior(gp, svc.encode(sols))
    assert (np.diff(mean) <= 1e-3).all(), mean
    store.close()


def test_points_with_huge_predicted_log_ppl_do_not_overflow():
    """A GP fitted on a few points can predict log ppl far beyond exp's range (a load-test failure)."""
    import math

    from coalora.search.front import MAX_LOG_PPL, FrontService

    p = FrontService._point("0" * 16, 6.25, 650.0, 40.0, 800.0, "allocator", {})
    assert p.pred_ppl == math.exp(MAX_LOG_PPL) and p.pred_hi == math.exp(MAX_LOG_PPL)
    assert math.isfinite(p.pred_lo) and p.ppl is None
    q = FrontService._point("1" * 16, 3.0, 4.0, 3.8, 4.2, "allocator", {"1" * 16: 3.9})
    assert q.ppl == math.exp(3.9) and q.pred_ppl == math.exp(4.0)
