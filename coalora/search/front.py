"""The GP-predicted Pareto front of average bits vs. perplexity (or KL divergence), from stored evaluations.

For one (model, method, eval set, seqlen, windows, eval spec, metric) the service

1. fits a botorch ``SingleTaskGP`` to the stored log-perplexities (= mean token NLL, the quantity
   the search's probe loss measures) on a two-number encoding of each configuration (``ENCODING``,
   :func:`_encode`), through a floored-log outcome transform (:class:`FloorLog`);
2. scores a candidate set: the allocator's solutions on a dense budget grid (2.05..8.6 bits),
   random neighbours of each (a few matrices moved by one weight-bit step) and every measured
   configuration;
   With ``metric="kld"`` the modelled outcome is log KL(p_unquantized || p_model) per token
   (floored at :data:`KLD_FLOOR`) instead of log ppl, the same way; evaluations without a KL are
   left out. Only evaluations of the query's eval spec enter (:mod:`coalora.evaluation.spec`): numbers
   measured on other windows are never fitted together;
3. returns the measured points, the non-dominated set of the *predicted* means with a +-2 sigma
   band, hypervolumes (measured and predicted, one recorded reference point), EHVI proposals
   (a batch of unmeasured candidates whose evaluation would most grow the front: greedy expected
   hypervolume improvement with a Kriging believer, so the batch spreads out instead of repeating
   one region), and for a budget the best predicted configuration within it.

Refits are incremental: a few new evaluations only condition the GP on them (hyperparameters
kept); many new ones refit from the previous hyperparameters (a warm start).

Why this surrogate. The stored evaluations are few (tens) and span ~2.1 to 8.6 average bits, where
log ppl is flat near its floor above ~4 bits and explodes below ~3 (SmolLM2 with CoA-LoRA: 3.46 at
7.25 bits, 11.05 at 2.25). The first version (the search's ``bits`` encoding: 210 per-matrix bits,
ARD RBF, constant mean, standardised log ppl) was under-determined (210 lengthscales from 45
points) and its standardised outcome was dominated by the low-bit tail. Three changes:

* inputs (``ENCODING``): the numel-weighted average bits and the log of the allocator's objective,
  the summed error-table entries ``sum_i e[i, c_i]``, both scaled to [0, 1] over the whole space.
  The second separates configurations of equal size the way the allocator does; neither is fitted
  to evaluations. Fewer dims also make the front cheaper;
* outcome: ``log(y - floor)`` before standardising, the floor a little below the training minimum
  (:class:`FloorLog`): the flat high-bit region and the exploding tail become one smooth trend
  (nearly linear in the log objective). Predictions are the shifted log-normal's mean and sd;
* a linear mean: beyond the measured bits (the candidates reach 8.6) a constant mean reverts, so
  8-bit configurations were predicted worse than 7-bit ones; the linear mean keeps the trend. Its
  slopes have fixed signs (:class:`SignedLinearMean`): left free, a fit during the seed search gave
  bits a positive slope and predicted ppl 360 at 7.4 bits, where 31 is measured.

Held-out accuracy on the shipped SmolLM2-135M evaluations (``coalora front --validate``, fold seed
0; Spearman / RMSE of log ppl). The RMSE is set by one point, the 2.25-bit one, which held out is an
extrapolation (none: 21.2, predicted 22 to 35 with sd 5 to 6.5), so the RMSE over the points of
>= 3 bits is given too:

=====================  ===========================  ===========================
method (n), folds      before (bits, const. mean)   now
=====================  ===========================  ===========================
coalora (45), 5        0.779 / 0.945 (>=3: 0.110)   0.991 / 0.826 (>=3: 0.018)
coalora (45), LOO      0.783 / 0.946 (>=3: 0.128)   0.990 / 0.809 (>=3: 0.012)
none (33), 5           0.612 / 1.863 (>=3: 0.291)   0.996 / 0.282 (>=3: 0.026)
none (33), LOO         0.415 / 2.437 (>=3: 0.630)   0.998 / 1.370 (>=3: 0.026)
=====================  ===========================  ===========================

Over fold seeds 1-4 the means are 0.989 / 0.830 (coalora) and 0.998 / 1.93 (none; before 0.715 /
1.00 and 0.599 / 2.98). Tried and not kept: per-module-type (7) and per-block-group (3) average
bits as extra inputs (no gain on either method), average bits alone (cannot tell equal-size
configurations apart), Matern 5/2 (no gain), log(log ppl), -1 / log ppl and Box-Cox outcomes
(worse; Box-Cox degenerates on this tail), fitting to convergence (no gain). The 210-dim encoding
with the floored log alone reaches Spearman 0.97 / 0.99: most of the gain is the outcome transform.
The floor's gap (``FLOOR_GAP``) was not tuned: 0.01 to 3 all give Spearman >= 0.97 on both.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.models.transforms.utils import norm_to_lognorm_mean, norm_to_lognorm_variance
from botorch.posteriors import Posterior, TransformedPosterior
from gpytorch.means import Mean

from coalora.errors import CoaloraError, short
from coalora.evaluation.spec import DEFAULT_SPEC
from coalora.quant.config import ALL_CONFIGS, FIELD_VALUES, MAX_BITS, MIN_BITS, ModelQuantConfig

CONFIG_BITS = np.array([c.bits for c in ALL_CONFIGS])
CONFIG_B0 = np.array([FIELD_VALUES[0].index(c.b0) for c in ALL_CONFIGS])
HV_BITS_REF = 8.75
"""Reference point of every front hypervolume: (8.75 bits, ppl 1000) in (avg bits, log ppl)."""
HV_PPL_REF = 1000.0
HV_KLD_REF = 5.0
"""Reference of a KL front's hypervolume: (8.75 bits, 5 nats per token) in (avg bits, log KL). At
5 nats the quantized model's next-token distribution has little left of the unquantized one's."""
KLD_FLOOR = 1e-5
"""KL values below this (nats per token) are modelled, and shown, as this. The cached reference's
uint16 rounding (:mod:`coalora.evaluation.reference`: at most ~3e-4 nats per vocabulary entry, of either
sign) leaves a mean per-token KL uncertain by roughly 1e-5 over a few thousand tokens, so smaller
values (and rounding's small negative ones) are noise; without a floor their logs would span the
fit. Real SmolLM2 configurations measure far above it (the bare quantized model at the 7.25-bit
allocator configuration: 0.017 nats; data/seed)."""
METRICS = ("ppl", "kld")
"""What a front's second objective is: perplexity (modelled as log ppl = mean NLL) or KL (log KL)."""
TASK_PREFIX = "task:"
"""A front metric ``task:<lm-eval task>/<metric>`` (e.g. ``task:shakespeare_nextline/acc``) models a
stored lm-eval accuracy (:mod:`coalora.evaluation.tasks`) as its error rate ``1 - acc`` in log space (floored
at :data:`TASK_ERR_FLOOR`), so that, like perplexity, lower is better; the points' values are that
error rate. Rows of one document limit and task version are fitted together (the largest such
group of the query's model, method and adapter)."""
TASK_ERR_FLOOR = 1e-3
HV_TASK_REF = 1.0
"""Reference of a task front's hypervolume: error rate 1 (every answer wrong)."""
FIT_MAXITER = 50
MAX_LOG_PPL = 100.0
"""Shown perplexities are capped at exp(100) ~ 3e43: a GP fitted on a few points can predict a log
ppl (or a +2 sigma edge) beyond what a float's exp holds, and any such value just means "useless"."""


def _ppl(log_ppl: float) -> float:
    """exp of a (predicted) log perplexity, capped at exp(MAX_LOG_PPL) instead of overflowing."""
    return math.exp(min(float(log_ppl), MAX_LOG_PPL)) if math.isfinite(log_ppl) else float(log_ppl)
ENCODING = "avg_bits+log_table_error"
"""The GP's input encoding (:func:`_encode`), named in every :class:`FrontResult`."""
FLOOR_GAP = 0.5
""":class:`FloorLog`'s floor lies this fraction of (median - minimum) below the training minimum."""
PROPOSAL_SHORTLIST = 256
"""Candidates re-scored after each pick of an EHVI batch (``FrontService._proposals``)."""
ENCODING_SIGNS = (-1, 1)
"""Signs of the GP's linear mean per ``ENCODING`` column: log ppl does not rise with bits and does
not fall with the allocator's error (:class:`SignedLinearMean`)."""


@dataclass(frozen=True)
class FrontSettings:
    budget_lo: float = 2.05
    budget_hi: float = 8.6
    grid: int = 132
    """Allocator budgets spread over [budget_lo, budget_hi]."""
    neighbours: int = 22
    """Random neighbours per allocator solution (132 x 23 = 3,036 candidates)."""
    moves: int = 3
    """Matrices changed per neighbour."""
    proposals: int = 8
    """EHVI proposals returned (0 skips the acquisition)."""
    refit_fraction: float = 0.1
    """Refit hyperparameters only when more than this fraction of the points is new."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (MIN_BITS <= self.budget_lo < self.budget_hi <= MAX_BITS):
            raise CoaloraError(f"front budget range must lie in [{MIN_BITS:.3f}, {MAX_BITS:.3f}] bits")
        if self.grid < 2 or self.neighbours < 0 or self.moves < 1 or self.proposals < 0:
            raise CoaloraError("front grid must be >= 2; neighbours and proposals >= 0; moves >= 1")


@dataclass(frozen=True)
class FrontQuery:
    """Which stored evaluations a front is fitted on (one perplexity convention)."""

    model: str
    method: str = "coalora"
    eval_set: str | None = None
    """None: the eval set with the most stored evaluations for this model and method."""
    seqlen: int = 256
    windows: int = 8
    adapter_id: str | None = None
    metric: str = "ppl"
    """``ppl`` or ``kld`` (:data:`METRICS`): the front's second objective."""
    eval_spec: str = DEFAULT_SPEC
    """Only evaluations of this spec are fitted."""

    def __post_init__(self) -> None:
        check_metric(self.metric)


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS` or ``task:<task>/<metric>``, else one clear error."""
    if metric not in METRICS and task_metric(metric) is None:
        raise CoaloraError(f"unknown front metric {short(metric)}; use ppl (perplexity), kld (KL divergence to the "
                           "unquantized model) or task:<lm-eval task>/<metric>, e.g. task:shakespeare_nextline/acc")
    return metric


def task_metric(metric: str) -> tuple[str, str] | None:
    """``(task, metric)`` of a ``task:<task>/<metric>`` front metric, else None."""
    if not isinstance(metric, str) or not metric.startswith(TASK_PREFIX):
        return None
    task, _, name = metric[len(TASK_PREFIX):].partition("/")
    ok = task and name and all(ch.isalnum() or ch in "_-." for ch in task + name)
    return (task, name) if ok else None


@dataclass
class FrontPoint:
    """One configuration on a front. The ``ppl`` fields hold the front's metric: perplexity, or KL
    in nats per token for a ``kld`` front (:attr:`FrontResult.metric`)."""

    config_hash: str
    avg_bits: float
    ppl: float | None = None
    """Measured value (perplexity or KL), when stored."""
    pred_ppl: float | None = None
    """exp of the GP's posterior mean of log ppl (log KL)."""
    pred_lo: float | None = None
    """exp(mean - 2 sigma)."""
    pred_hi: float | None = None
    source: str = "measured"
    """``measured``, ``allocator``, ``neighbour`` or ``ehvi``."""


@dataclass
class FrontResult:
    query: dict[str, Any]
    measured: list[FrontPoint]
    front: list[FrontPoint]
    """Predicted non-dominated set over the candidates, by increasing bits."""
    hypervolume: dict[str, float]
    hv_reference: dict[str, float]
    best: FrontPoint | None = None
    budget: float | None = None
    proposals: list[FrontPoint] = field(default_factory=list)
    n_candidates: int = 0
    encoding: str = ENCODING
    refit: str = ""
    """``full``, ``warm``, ``condition`` or ``cached``: what the last fit did."""
    seconds: float = 0.0
    metric: str = "ppl"
    """What the points' ``ppl`` fields hold: ``ppl`` or ``kld`` (nats per token)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _encode(ids: np.ndarray, numels: np.ndarray, table: np.ndarray) -> torch.Tensor:
    """GP inputs ``[c, 2]`` in [0, 1] from config ids ``[c, N]`` (``ENCODING``).

    Column 0: the average bits per weight (weighted by ``numels [N]``), scaled from
    [MIN_BITS, MAX_BITS]; column 1: log of the allocator's objective ``sum_i table[i, c_i]``
    (``table [N, 432]``, the error table), scaled from [log sum of row minima, log sum of row maxima].
    Two numbers instead of the 210 per-matrix bits: ARD on 210 dims from tens of points is
    under-determined, while these two rank the SmolLM2 evaluations almost alone (module docstring).
    """
    ids = np.asarray(ids)
    bits = CONFIG_BITS[ids] @ numels / numels.sum()
    tiny = np.finfo(np.float64).tiny
    err = np.log(np.maximum(table[np.arange(ids.shape[-1]), ids].sum(-1), tiny))
    lo = math.log(max(table.min(1).sum(), tiny))
    hi = math.log(max(table.max(1).sum(), tiny))
    x = np.stack([(bits - MIN_BITS) / (MAX_BITS - MIN_BITS), (err - lo) / max(hi - lo, 1e-12)], -1)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


class FrontService:
    """Front queries for one model (see the module docstring).

    ``table`` is the model's ``[N, 432]`` error table (for the allocator's candidates), ``targets``
    its target matrices in model order. Thread-safe for reads if the store is.
    """

    def __init__(self, store, model: str, targets, table: np.ndarray | torch.Tensor,
                 settings: FrontSettings | None = None) -> None:
        self.store = store
        self.model = model
        self.targets = tuple(targets)
        self.table = np.asarray(table, dtype=np.float64)
        if self.table.shape != (len(self.targets), len(ALL_CONFIGS)):
            raise CoaloraError(f"error table shape {self.table.shape} does not match {len(self.targets)} targets")
        self.settings = settings or FrontSettings()
        self.numels = np.array([t.numel for t in self.targets], dtype=np.float64)
        self._cand: tuple[np.ndarray, np.ndarray, list[str]] | None = None
        self._fits: dict[tuple, tuple[frozenset, Any]] = {}

    # ---- candidates

    def avg_bits(self, ids: np.ndarray) -> np.ndarray:
        return CONFIG_BITS[ids] @ self.numels / self.numels.sum()

    def encode(self, ids: np.ndarray) -> torch.Tensor:
        """GP inputs ``[c, 2]`` of config ids ``[c, N]``: :func:`_encode` with this model's sizes and table."""
        return _encode(ids, self.numels, self.table)

    def candidates(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(ids ``[c, N]``, avg bits ``[c]``, source per row), computed once per service."""
        if self._cand is None:
            from coalora.lqlora.allocate import allocate_many

            s = self.settings
            budgets = np.linspace(s.budget_lo, s.budget_hi, s.grid).tolist()
            sols = np.array([a.choice for a in allocate_many(self.table, self.numels, CONFIG_BITS, budgets, method="fast")])
            rng = np.random.default_rng(s.seed)
            rows, src = [sols], ["allocator"] * len(sols)
            for base in sols:
                nb = np.repeat(base[None], s.neighbours, 0)
                for r in range(s.neighbours):
                    for m in rng.choice(len(base), size=min(s.moves, len(base)), replace=False):
                        b0 = CONFIG_B0[nb[r, m]] + rng.choice((-1, 1))
                        b0 = min(max(b0, 0), CONFIG_B0.max())
                        nb[r, m] = rng.choice(np.flatnonzero(CONFIG_B0 == b0))
                rows.append(nb)
                src += ["neighbour"] * s.neighbours
            ids = np.concatenate(rows)
            _, first = np.unique(ids, axis=0, return_index=True)
            first.sort()
            self._cand = (ids[first], self.avg_bits(ids[first]), [src[i] for i in first])
        return self._cand

    # ---- data and fit

    def _resolve(self, q: FrontQuery) -> FrontQuery:
        if q.model != self.model:
            raise CoaloraError(f"this front service is for {self.model}, not {q.model}")
        if q.eval_set is not None or task_metric(q.metric) is not None:
            return q
        evs = self._evaluations(q, None)
        sets: dict[str, int] = {}
        for e in evs:
            if _outcome(e, q.metric) is not None:
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
        for h, y in self._task_outcomes(q):
            if h in configs and len(configs[h]) == len(self.targets):
                by_hash.setdefault(h, []).append(y)
        for e in evs:
            y = _outcome(e, q.metric)
            if e.config_hash in configs and len(configs[e.config_hash]) == len(self.targets) and y is not None:
                by_hash.setdefault(e.config_hash, []).append(y)
        hashes = sorted(by_hash)
        ids = np.array([configs[h] for h in hashes], dtype=np.int64).reshape(len(hashes), len(self.targets))
        return hashes, ids, np.array([float(np.mean(by_hash[h])) for h in hashes])

    def _task_outcomes(self, q: FrontQuery) -> list[tuple[str, float]]:
        """(config hash, log error rate) of the stored task metric of a ``task:`` query (else [])."""
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
        best = max(groups.values(), key=lambda g: (len({r["config_hash"] for r in g}), g[-1]["created_at"]))
        return [(r["config_hash"], math.log(max(1.0 - r["value"], TASK_ERR_FLOOR))) for r in best]

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
        log_ref = _log_ref(q.metric)
        ref = {"bits": HV_BITS_REF, q.metric: float(math.exp(log_ref)), "space": f"(avg bits, log {q.metric})"}
        hv = {"measured": _hv(bits_m, y, log_ref)}
        gp, how = self.fit(q, data)
        res = FrontResult(asdict(q), measured, [], hv, ref, budget=budget, refit=how, metric=q.metric)
        if gp is None:
            res.refit = "none: " + how
            res.seconds = time.perf_counter() - t0
            return res

        cids, cbits, csrc = self.candidates()
        # Measured configurations enter with their measured value and no uncertainty (the GP smooths
        # them by its noise estimate); candidates that were measured are dropped as duplicates.
        done = {row.tobytes() for row in ids}
        fresh = np.array([row.tobytes() not in done for row in cids], dtype=bool)
        cids, cbits, csrc = cids[fresh], cbits[fresh], [s for s, f in zip(csrc, fresh) if f]
        all_ids = np.concatenate([cids, ids]) if len(ids) else cids
        all_bits = np.concatenate([cbits, bits_m])
        all_src = csrc + ["measured"] * len(ids)
        mean, std = posterior(gp, self.encode(all_ids))
        mean[len(cids):], std[len(cids):] = y, 0.0
        res.n_candidates = len(all_ids)
        mask = _pareto(all_bits, mean)
        order = np.flatnonzero(mask)[np.argsort(all_bits[mask])]
        meas = dict(zip(hashes, y))
        hash_of = self._hasher(all_ids)
        res.front = [self._point(hash_of(i), all_bits[i], mean[i], std[i], all_src[i], meas) for i in order]
        hv["predicted"] = _hv(all_bits[mask], mean[mask], log_ref)
        if budget is not None:
            ok = np.flatnonzero(all_bits <= budget + 1e-9)
            if len(ok):
                # mean + 1 sigma, not the mean: among thousands of candidates the lowest mean is
                # mostly the most optimistic guess (the winner's curse); this picks a likely-good one.
                i = ok[np.argmin(mean[ok] + std[ok])]
                res.best = self._point(hash_of(i), all_bits[i], mean[i], std[i], all_src[i], meas)
        if self.settings.proposals:
            n = len(cids)
            res.proposals = self._proposals(gp, cids, cbits, mean[:n], std[:n], bits_m, y, hash_of, log_ref)
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
        mean, std = posterior(gp, self.encode(ids))
        if config.hash in meas:
            mean, std = np.array([meas[config.hash]]), np.zeros(1)
        return self._point(config.hash, float(self.avg_bits(ids)[0]), mean[0], std[0], "candidate", meas)

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

    def validate(self, query: FrontQuery, folds: int = 5, seed: int = 0) -> dict[str, float]:
        """K-fold predictive accuracy on stored evaluations: Spearman, RMSE and median absolute error of log ppl.

        ``folds`` = the number of evaluations is leave-one-out. Each fold is a full fit on the rest
        (encoding, outcome transform and hyperparameters see no held-out point). The RMSE is set by
        the worst extrapolation (the lowest-bit point held out); the median error shows the bulk.
        """
        from scipy.stats import spearmanr

        q = self._resolve(query)
        hashes, ids, y = self.measured(q)
        if len(hashes) < max(folds, 6):
            what = "evaluations" if q.metric == "ppl" else "evaluations with a KL"
            raise CoaloraError(f"{len(hashes)} stored {what} for {q.model}/{q.method} on {q.eval_set} "
                               f"({q.eval_spec}); validation needs at least {max(folds, 6)}")
        x = self.encode(ids)
        perm = np.random.default_rng(seed).permutation(len(y))
        pred = np.empty(len(y))
        for k in range(folds):
            test = perm[k::folds]
            train = np.setdiff1d(perm, test)
            gp = fit_gp(x[train], torch.from_numpy(y[train]), signs=ENCODING_SIGNS)
            pred[test] = posterior(gp, x[test])[0]
        rho = float(spearmanr(pred, y).statistic)
        return {"n": len(y), "folds": folds, "spearman": rho, "rmse_log_ppl": float(np.sqrt(np.mean((pred - y) ** 2))),
                "median_abs_err_log_ppl": float(np.median(np.abs(pred - y))), "eval_set": q.eval_set,
                "method": q.method, "encoding": ENCODING, "metric": q.metric, "eval_spec": q.eval_spec}

    # ---- helpers

    def _hasher(self, ids: np.ndarray):
        cache: dict[int, str] = {}

        def hash_of(i: int) -> str:
            if i not in cache:
                cache[i] = ModelQuantConfig.from_ids(self.model, self.targets, ids[i].tolist()).hash
            return cache[i]
        return hash_of

    @staticmethod
    def _point(h: str, bits: float, mu: float, sd: float, src: str, meas: dict[str, float]) -> FrontPoint:
        m = meas.get(h)
        return FrontPoint(h, float(bits), _ppl(m) if m is not None else None, _ppl(mu), _ppl(mu - 2 * sd),
                          _ppl(mu + 2 * sd), "measured" if m is not None else src)

    def _proposals(self, gp, cids, cbits, mean, std, bits_m, y, hash_of,
                   log_ref: float = math.log(HV_PPL_REF)) -> list[FrontPoint]:
        """A batch of the (unmeasured) candidates that together would most grow the measured front.

        Greedy by expected hypervolume improvement, Kriging believer (Ginsbourger et al., 2010):
        after each pick the front gains the pick at its predicted mean and the GP is conditioned on
        that value (hyperparameters kept), so the next pick counts the first as done and its
        near-copies lose their uncertainty. Ranking every candidate by its own EHVI instead returned
        six almost identical 2.05-bit configurations in one round of the seed search (data/seed).
        Candidates ``[c]``: ids ``cids [c, N]``, exact bits, and the GP's mean and sd of log ppl.

        Lazy and exact: a pick only lowers the others' EHVI (the front improves; the sd shrinks and
        the improvement is convex in the loss, so less spread means less expected gain; the believed
        value sits at or above the latent mean), so only the ``PROPOSAL_SHORTLIST`` best candidates
        are re-scored, and all of them only if the best of those falls below the rest's bound.
        """
        ref = (HV_BITS_REF, log_ref)
        front = _pareto(bits_m, y)
        fb, fl = bits_m[front], y[front]
        ehvi = expected_hvi(cbits, mean, std, fb, fl, ref, seed=self.settings.seed)
        order = np.argsort(-ehvi)
        short = order[:PROPOSAL_SHORTLIST]
        bound = float(ehvi[order[PROPOSAL_SHORTLIST]]) if len(order) > PROPOSAL_SHORTLIST else 0.0
        x = self.encode(cids)
        believed: list[int] = []  # picks, conditioned on at their predicted log ppl when picked
        believed_y: list[float] = []
        out: list[FrontPoint] = []
        while len(out) < self.settings.proposals:
            if believed:
                extra = (x[believed], torch.tensor(believed_y, dtype=x.dtype))
                m, sd = posterior(gp, x[short], extra=extra)
                e = expected_hvi(cbits[short], m, sd, fb, fl, ref, seed=self.settings.seed)
                if e.max() < bound:  # the shortlist no longer holds the best: score everything
                    short, bound = order, 0.0
                    m, sd = posterior(gp, x[short], extra=extra)
                    e = expected_hvi(cbits[short], m, sd, fb, fl, ref, seed=self.settings.seed)
            else:
                m, sd, e = mean[short], std[short], ehvi[short]
            e = np.where(np.isin(short, believed), 0.0, e)
            k = int(np.argmax(e))
            if e[k] <= 0:
                break
            i = int(short[k])
            believed.append(i)
            believed_y.append(float(m[k]))
            out.append(self._point(hash_of(i), cbits[i], m[k], sd[k], "ehvi", {}))
            keep = _pareto(np.append(fb, cbits[i]), np.append(fl, m[k]))
            fb, fl = np.append(fb, cbits[i])[keep], np.append(fl, m[k])[keep]
        return out


class FloorLog(OutcomeTransform):
    """Outcome transform ``y -> log(y - floor)`` for one output; the floor is set from the training data.

    ``floor = min(y) - FLOOR_GAP * (median(y) - min(y))`` (at least 1e-3 below the minimum), so the
    many evaluations near the high-bit floor are spread out and the exploding low-bit tail is
    compressed; the GP then sees one smooth trend (module docstring). The posterior in ``y`` is a
    shifted log-normal: :meth:`untransform_posterior` gives its exact mean and variance. Known
    observation noise ``Yvar`` (the front infers its noise, but botorch models may pass it) maps by
    the first-order delta method: ``Var[log(Y - floor)] ~ Yvar / (Y - floor)^2``.
    """

    def __init__(self, gap: float = FLOOR_GAP) -> None:
        super().__init__()
        self.gap = gap
        self.register_buffer("floor", torch.zeros((), dtype=torch.float64))

    def forward(self, Y: torch.Tensor, Yvar: torch.Tensor | None = None,  # noqa: N803 (botorch's names)
                X: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: N803
        """``Y [n, 1]`` -> ``log(Y - floor)``; in training mode the floor is first set from ``Y``."""
        if self.training:
            lo, med = Y.min(), Y.median()
            self.floor = (lo - torch.clamp(self.gap * (med - lo), min=1e-3)).detach().to(self.floor)
        shifted = (Y - self.floor).clamp_min(1e-12)
        return torch.log(shifted), None if Yvar is None else Yvar / shifted.pow(2)

    def untransform(self, Y: torch.Tensor, Yvar: torch.Tensor | None = None,  # noqa: N803
                    X: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: N803
        shifted = torch.exp(Y)
        return self.floor + shifted, None if Yvar is None else Yvar * shifted.pow(2)

    def untransform_posterior(self, posterior: Posterior, X: torch.Tensor | None = None) -> TransformedPosterior:  # noqa: N803
        floor = self.floor
        return TransformedPosterior(posterior, sample_transform=lambda s: floor + torch.exp(s),
                                    mean_transform=lambda m, v: floor + norm_to_lognorm_mean(m, v),
                                    variance_transform=norm_to_lognorm_variance)


class SignedLinearMean(Mean):
    """A linear mean ``x @ w + b`` whose weights have fixed signs: ``w_j = sign_j * softplus(raw_j)``.

    Why: beyond the measured points the GP reverts to its mean, so the mean's slope decides every
    extrapolation. Left free, the marginal likelihood sometimes buys a slightly better fit of the
    low-bit tail with a *positive* slope in bits; then high-bit candidates (up to 8.6 bits, measured
    only to ~7.3) were predicted at ppl 360 where 31 is measured (seed replay, data/seed). Quantizing
    more finely never hurts on average, so the sign is known; only the size is learned. Inputs
    ``[..., n, d]`` -> ``[..., n]``; ``signs`` has one entry (+1 or -1) per input column.
    """

    def __init__(self, signs: tuple[int, ...]) -> None:
        super().__init__()
        if not signs or any(s not in (-1, 1) for s in signs):
            raise CoaloraError(f"linear mean signs must be +1 or -1 per input column, got {signs!r}")
        self.register_buffer("signs", torch.tensor(signs, dtype=torch.float64))
        # Start at slope 1 (standardised log ppl per unit of the [0, 1]-scaled input), the right way.
        # The fit stops after FIT_MAXITER steps, so the start matters: from flat (raw -7) the gradient
        # is sigmoid(-7) ~ 1e-3 and the slope never grows; from 0.69 a synthetic fit (tests) stopped
        # at half the converged slope and rose again beyond the measured bits.
        raw = math.log(math.e - 1.0)  # softplus(raw) = 1
        self.register_parameter("raw_weights", torch.nn.Parameter(torch.full((len(signs),), raw, dtype=torch.float64)))
        self.register_parameter("bias", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))

    @property
    def weights(self) -> torch.Tensor:
        """The signed slopes ``[d]``."""
        return self.signs * torch.nn.functional.softplus(self.raw_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weights + self.bias


def fit_gp(x: torch.Tensor, y: torch.Tensor, warm=None, optimize: bool = True, maxiter: int = FIT_MAXITER,
           signs: tuple[int, ...] | None = None):
    """A ``SingleTaskGP`` (ARD RBF, linear mean) on inputs ``[n, d]`` and log ppl ``[n]``.

    The outcome is transformed by :class:`FloorLog` then standardised; ``gp.posterior`` (and
    :func:`posterior`) answer in log ppl. ``warm``: a previous GP whose hyperparameters start the fit
    (or are kept, with ``optimize=False``); the outcome transform is always set from ``y`` anew.
    L-BFGS stops after ``maxiter`` iterations (enough on the 2-dim encoding; on the former 210-dim
    one, fitting to convergence cost ~25x more for no better held-out accuracy). ``signs``: the
    linear mean's slope signs per column (:class:`SignedLinearMean`); None leaves them free.
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import ChainedOutcomeTransform, Standardize
    from gpytorch.means import LinearMean
    from gpytorch.mlls import ExactMarginalLogLikelihood

    transform = ChainedOutcomeTransform(log=FloorLog(), standardize=Standardize(m=1))
    if signs is not None:
        if len(signs) != x.shape[-1]:
            raise CoaloraError(f"{len(signs)} mean signs for {x.shape[-1]} input columns")
        mean = SignedLinearMean(signs).to(x)
    else:
        mean = LinearMean(x.shape[-1]).to(x)
        with torch.no_grad():  # gpytorch draws the initial weights at random; start flat, deterministically
            mean.weights.zero_()
            mean.bias.zero_()
    gp = SingleTaskGP(x, y[:, None], outcome_transform=transform, mean_module=mean)
    if warm is not None:
        gp.load_state_dict({k: v for k, v in warm.state_dict().items() if not k.startswith("outcome_transform")},
                           strict=False)
    if optimize:
        import warnings

        from botorch.exceptions.warnings import OptimizationWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizationWarning)  # stopping at maxiter is intended
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp),
                             optimizer_kwargs={"options": {"maxiter": maxiter}})
    gp.eval()
    return gp


def check_budget(budget: float) -> float:
    """A budget in average bits per weight, or one clear error."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise CoaloraError(f"budget must be a number of bits per weight, got {short(budget)}") from None
    if not math.isfinite(b) or not (MIN_BITS <= b <= MAX_BITS):
        raise CoaloraError(f"budget {short(budget)} bits is outside the feasible range [{MIN_BITS:.3f}, {MAX_BITS:.3f}] "
                           "(the cheapest and the most precise configuration)")
    return b


def posterior(gp, x: torch.Tensor, chunk: int = 4096,
               extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of log ppl ``[c]`` at inputs ``[c, d]`` (observation noise excluded).

    ``extra``: more observations to condition on, hyperparameters kept: inputs ``[k, d]`` and
    log ppl ``[k]`` (botorch's ``condition_on_observations``, without its per-call model copy).

    The marginals only, computed directly from the Cholesky factor of the training covariance:
    ``gp.posterior`` builds the joint ``c x c`` covariance (or, batched per point, is ~100x
    slower), and the front needs neither. Any mean module (``fit_gp``'s is linear); the latent
    Gaussian is mapped back through the outcome transforms (:func:`_untransform`) as
    ``gp.posterior`` does.
    """
    with torch.no_grad():
        xt, yt = gp.train_inputs[0], gp.train_targets  # yt: in the outcome transforms' space
        if extra is not None:
            xt = torch.cat([xt, extra[0]])
            yt = torch.cat([yt, gp.outcome_transform(extra[1][:, None].to(yt))[0][:, 0]])
        k = gp.covar_module(xt).to_dense()
        k = k + gp.likelihood.noise * torch.eye(len(xt), dtype=k.dtype)
        chol, info = torch.linalg.cholesky_ex(k)
        if info:
            chol = torch.linalg.cholesky(k + 1e-6 * torch.eye(len(xt), dtype=k.dtype))
        alpha = torch.cholesky_solve((yt - gp.mean_module(xt))[:, None], chol)[:, 0]
        mus, variances = [], []
        for i in range(0, len(x), chunk):
            xc = x[i:i + chunk]
            ks = gp.covar_module(xc, xt).to_dense()  # [c, n]
            mus.append(gp.mean_module(xc) + ks @ alpha)
            v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
            variances.append((gp.covar_module(xc, diag=True) - v.pow(2).sum(0)).clamp_min(0))
        mu, var = _untransform(gp.outcome_transform, torch.cat(mus), torch.cat(variances))
    return mu.numpy(), var.sqrt().numpy()


def _untransform(ot, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal mean and variance ``[c]`` of a Gaussian ``(mu, var) [c]`` mapped back through ``ot``.

    Handles :func:`fit_gp`'s chain: ``Standardize`` (affine) and :class:`FloorLog` (a shifted
    log-normal, exact moments), innermost first, as ``ChainedOutcomeTransform`` does.
    """
    from botorch.models.transforms.outcome import ChainedOutcomeTransform, Standardize

    if isinstance(ot, ChainedOutcomeTransform):
        for t in reversed(list(ot.values())):
            mu, var = _untransform(t, mu, var)
        return mu, var
    if isinstance(ot, Standardize):
        return mu * ot.stdvs[0, 0] + ot.means[0, 0], var * ot.stdvs[0, 0] ** 2
    if isinstance(ot, FloorLog):
        return ot.floor + norm_to_lognorm_mean(mu, var), norm_to_lognorm_variance(mu, var)
    raise CoaloraError(f"posterior cannot map back through outcome transform {type(ot).__name__}")


def expected_hvi(bits: np.ndarray, mean: np.ndarray, sd: np.ndarray, front_bits: np.ndarray, front_loss: np.ndarray,
                 ref: tuple[float, float], samples: int = 64, seed: int = 0) -> np.ndarray:
    """Expected hypervolume improvement ``[c]`` of candidates with exact bits and Gaussian loss.

    2-D minimisation with a deterministic first objective: for a sampled loss y, the improvement is
    the integral over heights t in [y, ref_loss) of the width ``min(ref_bits, g(t)) - bits`` (>= 0),
    where g(t) is the fewest bits of a front point with loss <= t: a step function, so the
    integral is exact per sample; the expectation is a mean over ``samples`` quasi-random normals.
    """
    from scipy.stats import norm

    order = np.argsort(front_loss)
    fl, fb = front_loss[order], np.minimum.accumulate(front_bits[order])  # g on [fl[k], fl[k+1])
    edges = np.concatenate([fl, [ref[1]]])
    edges = np.minimum(edges, ref[1])
    z = norm.ppf((np.arange(samples) + 0.5) / samples)[None, :]
    y = np.minimum(mean[:, None] + sd[:, None] * z, ref[1])  # [c, s]
    # below the best front loss nothing is dominated: width ref_bits - bits
    total = np.clip(ref[0] - bits, 0, None)[:, None] * np.clip(fl[0] - y, 0, None) if len(fl) else \
        np.clip(ref[0] - bits, 0, None)[:, None] * (ref[1] - y)
    for k in range(len(fl)):
        lo, hi = edges[k], edges[k + 1]
        width = np.clip(min(ref[0], fb[k]) - bits, 0, None)[:, None]
        total = total + width * np.clip(hi - np.maximum(y, lo), 0, None)
    return total.mean(1)


def _pareto(bits: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Non-dominated mask by a sort (O(n log n)); ties in bits keep the lowest loss."""
    order = np.lexsort((loss, bits))
    mask = np.zeros(len(bits), dtype=bool)
    best = math.inf
    for i in order:
        if loss[i] < best:
            mask[i] = True
            best = loss[i]
    return mask


def _hv(bits: np.ndarray, log_value: np.ndarray, log_ref: float = math.log(HV_PPL_REF)) -> float:
    """Hypervolume of points (bits, log ppl or log KL) up to (HV_BITS_REF, ``log_ref``)."""
    from coalora.search.pareto import hypervolume_2d

    pts = [(float(b), float(v)) for b, v in zip(bits, log_value) if math.isfinite(v)]
    return float(hypervolume_2d(pts, (HV_BITS_REF, log_ref))) if pts else 0.0


def _log_ref(metric: str) -> float:
    """log of the hypervolume reference of ``metric``'s axis."""
    if task_metric(metric) is not None:
        return math.log(HV_TASK_REF)
    return math.log(HV_PPL_REF if metric == "ppl" else HV_KLD_REF)


def _outcome(ev, metric: str) -> float | None:
    """The modelled value of one stored evaluation: its mean NLL (log ppl), or log of its KL
    floored at :data:`KLD_FLOOR`; None when it has none (no KL measured, or not finite)."""
    if metric == "kld":
        return None if ev.kld is None or not math.isfinite(ev.kld) else math.log(max(ev.kld, KLD_FLOOR))
    return ev.nll if math.isfinite(ev.nll) else None
