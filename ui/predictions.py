"""Predictions kept next to measurements, so a user sees how wrong the GP was.

:meth:`coalora.search.front.FrontService.predict` answers a measured configuration with its measured value
(the front is drawn through its measurements). The app keeps, per measured configuration, the
prediction made without its own measurement instead:

* **before measuring**: the GP's prediction recorded by Quick eval just before it measures
  (:func:`record`), kept for this process's lifetime;
* **held out**: for configurations measured earlier (the seed, the CLI), the GP with the front's
  hyperparameters conditioned on every *other* stored evaluation of the query (leave-one-out; the
  hyperparameters were fitted with the point, so this is slightly optimistic). Computed once per
  set of stored evaluations (:func:`heldout`).

:class:`Residuals` is the page's history of Quick evals since it was opened (predicted vs
measured), per browser session.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

from ui.figures import Prior

BEFORE = "before measuring"
HELD_OUT = "held out"
_MAX_LOG = 100.0


def _exp(v: float) -> float:
    return math.exp(min(float(v), _MAX_LOG))


def _qkey(ex, method: str, cv, metric: str) -> tuple:
    return (ex.model_name, ex.adapter_id if method == "coalora" else "", method, ex.eval_corpus(cv.corpus).id,
            cv.seqlen, cv.windows, ex.eval_spec, metric)


class _Store:
    """Recorded pre-measurement predictions and held-out tables (thread-safe, bounded)."""

    def __init__(self, max_records: int = 20_000) -> None:
        self.records: dict[tuple, Prior] = {}
        self.heldout: dict[tuple, tuple[tuple[str, ...], dict[str, Prior]]] = {}
        self.max_records = max_records
        self.lock = threading.Lock()


STORE = _Store()


def predict(ex: Any, cfg: Any, method: str, cv: Any, metric: str) -> Any:
    """The GP's :class:`~coalora.search.front.FrontPoint` for ``cfg`` (its measured value when stored), or None."""
    return ex.front_service().predict(ex.query(method, cv.seqlen, cv.windows, cv.corpus, metric), cfg)


def record(ex: Any, cfg: Any, method: str, cv: Any, metrics: tuple[str, ...] = ("ppl", "kld")) -> dict[str, Prior]:
    """Record the GP's predictions of ``cfg`` on each of ``metrics`` before it is measured (an
    already measured ``cfg`` records nothing); returns metric -> the prediction kept."""
    out: dict[str, Prior] = {}
    for metric in metrics:
        key = (*_qkey(ex, method, cv, metric), cfg.hash)
        with STORE.lock:
            if key in STORE.records:
                out[metric] = STORE.records[key]
                continue
        p = predict(ex, cfg, method, cv, metric)
        if p is None or p.ppl is not None:
            continue
        prior = (p.pred_ppl, p.pred_lo, p.pred_hi, BEFORE)
        with STORE.lock:
            if len(STORE.records) >= STORE.max_records:
                STORE.records.clear()
            STORE.records[key] = prior
        out[metric] = prior
    return out


def heldout(ex: Any, method: str, cv: Any, metric: str) -> dict[str, Prior]:
    """hash -> the held-out prediction of every measured configuration of the query (module
    docstring); empty without a GP (fewer than 4 evaluations: 3 left to condition on)."""
    import torch

    from coalora.search.front import ENCODING_SIGNS, fit_gp
    from coalora.search.gp import predict

    if method not in ex.methods:
        return {}
    svc = ex.front_service()
    q = ex.query(method, cv.seqlen, cv.windows, cv.corpus, metric)
    hashes, ids, y = svc.measured(q)
    key = _qkey(ex, method, cv, metric)
    with STORE.lock:
        hit = STORE.heldout.get(key)
    if hit is not None and hit[0] == tuple(hashes):
        return hit[1]
    out: dict[str, Prior] = {}
    gp, _ = svc.fit(q, (hashes, ids, y))
    if gp is not None and len(hashes) >= 4:
        x, yt = svc.encode(ids), torch.from_numpy(y)
        for i, h in enumerate(hashes):
            keep = torch.ones(len(hashes), dtype=torch.bool)
            keep[i] = False
            g = fit_gp(x[keep], yt[keep], warm=gp, optimize=False, signs=ENCODING_SIGNS)
            mu, _, lo, hi = predict(g, x[i:i + 1])  # the front's calibrated predictive band
            out[h] = (_exp(mu[0]), _exp(lo[0]), _exp(hi[0]), HELD_OUT)
    with STORE.lock:
        STORE.heldout[key] = (tuple(hashes), out)
    return out


def priors(ex: Any, method: str, cv: Any, metric: str) -> dict[str, Prior]:
    """hash -> the prediction kept for each measured configuration: the one recorded before
    measuring where there is one, else the held-out one."""
    out = dict(heldout(ex, method, cv, metric))
    key = _qkey(ex, method, cv, metric)
    with STORE.lock:
        for k, v in STORE.records.items():
            if k[:-1] == key and k[-1] in out:
                out[k[-1]] = v
    return out


def prior_of(ex: Any, cfg: Any, method: str, cv: Any, metric: str) -> Prior | None:
    """The prediction kept for a measured ``cfg`` (:func:`priors`), or None."""
    key = (*_qkey(ex, method, cv, metric), cfg.hash)
    with STORE.lock:
        if key in STORE.records:
            return STORE.records[key]
    return heldout(ex, method, cv, metric).get(cfg.hash)


class Residuals:
    """Per browser session (Gradio's session hash), the Quick evals made since the page was opened:
    dicts with hash, bits, method, metric, predicted (mean, lo, hi) and measured. Bounded: the
    newest :attr:`max_sessions` sessions, :attr:`max_rows` rows each."""

    def __init__(self, max_sessions: int = 256, max_rows: int = 200) -> None:
        self._d: OrderedDict[str, list[dict]] = OrderedDict()
        self.max_sessions, self.max_rows = max_sessions, max_rows
        self._lock = threading.Lock()

    def add(self, session: str, row: dict) -> list[dict]:
        with self._lock:
            rows = self._d.pop(session, [])
            rows = [r for r in rows if (r["hash"], r["method"], r["metric"]) != (row["hash"], row["method"],
                                                                                 row["metric"])]
            rows = (rows + [row])[-self.max_rows:]
            self._d[session] = rows
            while len(self._d) > self.max_sessions:
                self._d.popitem(last=False)
            return list(rows)

    def get(self, session: str) -> list[dict]:
        with self._lock:
            return list(self._d.get(session, []))


RESIDUALS = Residuals()
