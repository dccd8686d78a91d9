"""The front service: the GP-predicted Pareto front of average bits vs. a loss, from stored evaluations.

For one :class:`FrontQuery` the service

1. fits the section-5 surrogate (:mod:`coalora.search.gp` on :mod:`coalora.search.encoding`) to the
   stored outcomes: log ppl (= mean token NLL, the quantity the training search's probe loss
   measures), log KL (``metric="kld"``) or a task's log error rate; only evaluations of the query's
   eval spec enter (:mod:`coalora.evaluation.spec`), so numbers measured on other windows are never
   fitted together;
2. scores the candidates (:mod:`coalora.search.candidates`) and every measured configuration;
3. returns the measured points, the non-dominated set of the predicted means with the calibrated
   predictive band (:func:`coalora.search.gp.predictive_band`), hypervolumes (measured and predicted,
   one recorded reference point), a batch of EHVI proposals (:func:`coalora.search.acquisition.believer_batch`)
   and, for a budget, the best predicted configuration within it.

Refits are incremental: a few new evaluations only condition the GP on them (hyperparameters kept);
many new ones refit from the previous hyperparameters (a warm start). :meth:`FrontService.validate`
measures the surrogate's held-out accuracy and the band's coverage (``coalora front --validate``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from coalora.errors import CoaloraError, short
from coalora.quant.config import CONFIG_BITS, ModelQuantConfig, check_budget  # noqa: F401 (re-exported)
from coalora.search.acquisition import believer_batch, expected_hvi  # noqa: F401 (expected_hvi re-exported)
from coalora.search.candidates import front_candidates
from coalora.search.encoding import ENCODING, ENCODING_SIGNS, avg_bits, check_table, encode
from coalora.search.front_query import (  # noqa: F401 (the front's public names, importable from here)
    HV_BITS_REF,
    HV_KLD_REF,
    HV_PPL_REF,
    HV_TASK_REF,
    KLD_FLOOR,
    MAX_LOG_PPL,
    METRICS,
    TASK_ERR_FLOOR,
    TASK_PREFIX,
    FrontPoint,
    FrontQuery,
    FrontResult,
    FrontSettings,
    check_metric,
    log_ref,
    outcome,
    shown,
    task_metric,
)
from coalora.search.gp import (  # noqa: F401 (FloorLog, SignedLinearMean, posterior re-exported)
    FloorLog,
    SignedLinearMean,
    fit_gp,
    posterior,
    predict,
    predictive_band,
)
from coalora.search.pareto import hypervolume_2d, pareto_mask
from coalora.search.validation import kfold

PROPOSAL_SHORTLIST = 256
"""Candidates re-scored after each pick of an EHVI batch (:func:`coalora.search.acquisition.believer_batch`)."""


def _hv(bits: np.ndarray, log_value: np.ndarray, log_reference: float = math.log(HV_PPL_REF)) -> float:
    """Hypervolume of points (bits, log metric) up to (HV_BITS_REF, ``log_reference``)."""
    pts = [(float(b), float(v)) for b, v in zip(bits, log_value) if math.isfinite(v)]
    return float(hypervolume_2d(pts, (HV_BITS_REF, log_reference))) if pts else 0.0


class FrontService:
    """Front queries for one model (see the module docstring).

    ``table`` is the model's ``[N, 432]`` error table (the encoding's and the allocator's), ``targets``
    its target matrices in model order. Thread-safe for reads if the store is.
    """

    def __init__(self, store, model: str, targets, table: np.ndarray | torch.Tensor,
                 settings: FrontSettings | None = None) -> None:
        self.store = store
        self.model = model
        self.targets = tuple(targets)
        self.table = check_table(np.asarray(table, dtype=np.float64), len(self.targets))
        self.settings = settings or FrontSettings()
        self.numels = np.array([t.numel for t in self.targets], dtype=np.float64)
        self._cand: tuple[np.ndarray, np.ndarray, list[str]] | None = None
        self._fits: dict[tuple, tuple[frozenset, Any]] = {}

    # ---- candidates

    def avg_bits(self, ids: np.ndarray) -> np.ndarray:
        """Average bits ``[c]`` of config ids ``[c, N]``."""
        return avg_bits(ids, self.numels)

    def encode(self, ids: np.ndarray) -> torch.Tensor:
        """GP inputs ``[c, 2]`` of config ids ``[c, N]`` (:func:`coalora.search.encoding.encode`)."""
        return encode(ids, self.numels, self.table)

    def candidates(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(ids ``[c, N]``, avg bits ``[c]``, source per row), computed once per service."""
        if self._cand is None:
            self._cand = front_candidates(self.table, self.numels, self.settings)
        return self._cand

    # ---- data and fit

    def _resolve(self, q: FrontQuery) -> FrontQuery:
        if q.model != self.model:
            raise CoaloraError(f"this front service is for {self.model}, not {q.model}")
        if q.eval_set is not None or task_metric(q.metric) is not None:
            return q
        sets: dict[str, int] = {}
        for e in self._evaluations(q, None):
            if outcome(e, q.metric) is not None:
                sets[e.eval_set] = sets.get(e.eval_set, 0) + 1
        return replace(q, eval_set=max(sets, key=sets.get)) if sets else q

    def _evaluations(self, q: FrontQuery, eval_set: str | None) -> list:
        return self.store.evaluations(model=q.model, method=q.method, eval_set=eval_set, seqlen=q.seqlen,
                                      windows=q.windows, adapter_id=q.adapter_id, eval_spec=q.eval_spec)

    def measured(self, q: FrontQuery) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Stored (config hashes, ids ``[n, N]``, outcome ``[n]``) for a resolved query; the outcome
        is log ppl (= mean NLL), or log KL for ``metric="kld"`` (evaluations without KL skipped).

        Several adapters' evaluations of one configuration (without ``adapter_id``) are averaged in
        log space; configurations of another target layout are skipped.
        """
        configs = self.store.configs(q.model)
        by_hash: dict[str, list[float]] = {}
        evs = self._evaluations(q, q.eval_set) if task_metric(q.metric) is None else []
        pairs = self._task_outcomes(q) + [(e.config_hash, outcome(e, q.metric)) for e in evs]
        for h, y in pairs:
            if h in configs and len(configs[h]) == len(self.targets) and y is not None:
                by_hash.setdefault(h, []).append(y)
        hashes = sorted(by_hash)
        ids = np.array([configs[h] for h in hashes], dtype=np.int64).reshape(len(hashes), len(self.targets))
        return hashes, ids, np.array([float(np.mean(by_hash[h])) for h in hashes])

    def task_group(self, q: FrontQuery) -> list[dict]:
        """The stored task rows a ``task:`` query's front is fitted on (else []): of the groups of one
        (document limit, lm-eval version, task version), the one with the most configurations
        (the newest on a tie); rows of other limits measure other documents, so they never mix."""
        tm = task_metric(q.metric)
        if tm is None:
            return []
        rows = self.store.task_metrics(model=q.model, method=q.method, adapter_id=q.adapter_id, task=tm[0],
                                       metric=tm[1])
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault((r["doc_limit"], r["lm_eval_version"], r["task_version"]), []).append(r)
        if not groups:
            return []
        return max(groups.values(), key=lambda g: (len({r["config_hash"] for r in g}), g[-1]["created_at"]))

    def _task_outcomes(self, q: FrontQuery) -> list[tuple[str, float]]:
        """(config hash, log error rate) of the rows :meth:`task_group` picks."""
        return [(r["config_hash"], math.log(max(1.0 - r["value"], TASK_ERR_FLOOR))) for r in self.task_group(q)]

    def fit(self, q: FrontQuery, data: tuple[list[str], np.ndarray, np.ndarray] | None = None):
        """The GP for a resolved query, refitted incrementally; returns (gp, how) or (None, reason).

        ``data``: the query's :meth:`measured` result, when the caller already has it.
        """
        hashes, ids, y = data if data is not None else self.measured(q)
        if len(hashes) < 3:
            return None, f"{len(hashes)} stored evaluations (a GP needs at least 3)"
        key = (q.model, q.method, q.eval_set, q.seqlen, q.windows, q.adapter_id, q.metric, q.eval_spec)
        have = frozenset(hashes)
        prev = self._fits.get(key)
        if prev is not None and prev[0] == have:
            return prev[1], "cached"
        x, yt = self.encode(ids), torch.from_numpy(y)
        if prev is not None and prev[0] <= have:
            # A few new points: keep the hyperparameters and only condition on the data; many: warm refit.
            refit = len(have - prev[0]) > self.settings.refit_fraction * len(prev[0])
            gp, how = fit_gp(x, yt, warm=prev[1], optimize=refit, signs=ENCODING_SIGNS), ("warm" if refit else "condition")
        else:
            gp, how = fit_gp(x, yt, signs=ENCODING_SIGNS), "full"
        self._fits[key] = (have, gp)
        return gp, how

    # ---- queries

    def front(self, query: FrontQuery, budget: float | None = None) -> FrontResult:
        """The front for ``query``; with ``budget``, also the best predicted configuration within it."""
        t0 = time.perf_counter()
        if budget is not None:
            check_budget(budget)
        q = self._resolve(query)
        data = self.measured(q)
        hashes, ids, y = data
        bits_m = self.avg_bits(ids) if len(ids) else np.zeros(0)
        measured = [FrontPoint(h, float(b), float(math.exp(v))) for h, b, v in zip(hashes, bits_m, y)]
        lref = log_ref(q.metric)
        ref = {"bits": HV_BITS_REF, q.metric: float(math.exp(lref)), "space": f"(avg bits, log {q.metric})"}
        hv = {"measured": _hv(bits_m, y, lref)}
        gp, how = self.fit(q, data)
        res = FrontResult(asdict(q), measured, [], hv, ref, budget=budget, refit=how, metric=q.metric)
        if gp is None:
            res.refit = "none: " + how
            res.seconds = time.perf_counter() - t0
            return res
        cids, cbits, csrc = self.candidates()
        # Measured configurations enter with their measured value and no uncertainty; candidates that
        # were measured are dropped as duplicates.
        done = {row.tobytes() for row in ids}
        fresh = np.array([row.tobytes() not in done for row in cids], dtype=bool)
        cids, cbits, csrc = cids[fresh], cbits[fresh], [s for s, f in zip(csrc, fresh) if f]
        all_ids = np.concatenate([cids, ids]) if len(ids) else cids
        all_bits = np.concatenate([cbits, bits_m])
        all_src = csrc + ["measured"] * len(ids)
        mean, std, lo, hi = predict(gp, self.encode(all_ids))
        n = len(cids)
        mean[n:], std[n:], lo[n:], hi[n:] = y, 0.0, y, y
        res.n_candidates = len(all_ids)
        mask = pareto_mask(np.stack([all_bits, mean], 1))
        order = np.flatnonzero(mask)[np.argsort(all_bits[mask], kind="stable")]
        meas = dict(zip(hashes, y))
        hash_of = self._hasher(all_ids)

        def point(i: int, src: str) -> FrontPoint:
            return self._point(hash_of(i), all_bits[i], mean[i], lo[i], hi[i], src, meas)
        res.front = [point(i, all_src[i]) for i in order]
        hv["predicted"] = _hv(all_bits[mask], mean[mask], lref)
        if budget is not None:
            ok = np.flatnonzero(all_bits <= budget + 1e-9)
            if len(ok):
                # mean + 1 sigma, not the mean: among thousands of candidates the lowest mean is
                # mostly the most optimistic guess (the winner's curse); this picks a likely-good one.
                i = ok[np.argmin(mean[ok] + std[ok])]
                res.best = point(i, all_src[i])
        if self.settings.proposals:
            res.proposals = [point(i, "ehvi") for i in self._proposals(gp, cids, cbits, mean[:n], std[:n], bits_m, y, lref)]
        res.seconds = time.perf_counter() - t0
        return res

    def predict(self, query: FrontQuery, config: ModelQuantConfig) -> FrontPoint | None:
        """The GP's prediction for one configuration (its measured value if stored), or None without a GP."""
        q = self._resolve(query)
        data = self.measured(q)
        gp, _ = self.fit(q, data)
        if gp is None:
            return None
        ids = np.array([config.ids])
        meas = dict(zip(data[0], data[2]))
        mean, _, lo, hi = predict(gp, self.encode(ids))
        if config.hash in meas:
            mean = lo = hi = np.array([meas[config.hash]])
        return self._point(config.hash, float(self.avg_bits(ids)[0]), mean[0], lo[0], hi[0], "candidate", meas)

    def best_config(self, query: FrontQuery, budget: float) -> tuple[ModelQuantConfig, FrontPoint]:
        """The best predicted configuration within ``budget`` (the app's budget marker)."""
        res = self.front(query, budget)
        if res.best is None:
            raise CoaloraError(f"no front for {query.model}/{query.method} yet: {res.refit}; evaluate a few "
                               "configurations first (coalora eval, or Quick eval in the app)")
        return self.config(res.best.config_hash), res.best

    def config(self, config_hash: str) -> ModelQuantConfig:
        """A configuration by hash: a stored one, or a candidate of this service."""
        stored = self.store.config_ids(config_hash)
        if stored is not None:
            return ModelQuantConfig.from_ids(self.model, self.targets, stored[1])
        cids, _, _ = self.candidates()
        for row in cids:
            c = ModelQuantConfig.from_ids(self.model, self.targets, row.tolist())
            if c.hash == config_hash:
                return c
        raise CoaloraError(f"unknown configuration {short(config_hash)} for {self.model}: not stored and not a front candidate")

    def validate(self, query: FrontQuery, folds: int = 5, seed: int = 0) -> dict[str, Any]:
        """K-fold held-out accuracy on stored evaluations (:func:`coalora.search.validation.kfold`):
        Spearman, RMSE and median absolute error of the log metric, and the share of held-out
        evaluations inside the calibrated predictive band (``coverage_2sigma``, aimed at ``band_target``)."""
        q = self._resolve(query)
        hashes, ids, y = self.measured(q)
        if len(hashes) < max(folds, 6):
            what = "evaluations" if q.metric == "ppl" else "evaluations with a KL"
            raise CoaloraError(f"{len(hashes)} stored {what} for {q.model}/{q.method} on {q.eval_set} "
                               f"({q.eval_spec}); validation needs at least {max(folds, 6)}")
        out: dict[str, Any] = {"n": len(y), "folds": folds}
        out.update(kfold(self.encode(ids), y, folds, seed))
        out.update({"eval_set": q.eval_set, "method": q.method, "encoding": ENCODING, "metric": q.metric,
                    "eval_spec": q.eval_spec})
        return out

    # ---- helpers

    def _hasher(self, ids: np.ndarray):
        cache: dict[int, str] = {}

        def hash_of(i: int) -> str:
            if i not in cache:
                cache[i] = ModelQuantConfig.from_ids(self.model, self.targets, ids[i].tolist()).hash
            return cache[i]
        return hash_of

    @staticmethod
    def _point(h: str, bits: float, mu: float, lo: float, hi: float, src: str, meas: dict[str, float]) -> FrontPoint:
        """A front point from the GP's mean and band edges (log metric); measured when ``h`` is in ``meas``."""
        m = meas.get(h)
        return FrontPoint(h, float(bits), shown(m) if m is not None else None, shown(mu), shown(lo), shown(hi),
                          "measured" if m is not None else src)

    def _proposals(self, gp, cids: np.ndarray, cbits: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   bits_m: np.ndarray, y: np.ndarray, lref: float = math.log(HV_PPL_REF)) -> list[int]:
        """Rows of the (unmeasured) candidates ``cids [c, N]`` that together would most grow the measured
        front (:func:`coalora.search.acquisition.believer_batch`); ``mean``, ``std`` ``[c]``: the GP's
        latent moments of the log metric; ``bits_m``, ``y`` ``[n]``: the measured points."""
        front = pareto_mask(np.stack([bits_m, y], 1))
        x = self.encode(cids)

        def score(rows: np.ndarray, believed: list[int], believed_y: list[float]):
            extra = (x[believed], torch.tensor(believed_y, dtype=x.dtype))
            return posterior(gp, x[rows], extra=extra)

        picks = believer_batch(score, cbits, mean, std, bits_m[front], y[front], (HV_BITS_REF, lref),
                               self.settings.proposals, PROPOSAL_SHORTLIST)
        return [i for i, _, _ in picks]
