"""The explorer's tables as data: the front's candidates, the stored evaluations and one
configuration's per-layer table, each as CSV and Parquet.

* **front** (:func:`front_table`): every candidate the GP scored (the allocator's solutions, their
  neighbours, every measured configuration) with its hash, average bits, size in MB, the GP's
  posterior mean with its +-2 sigma interval and the log-space sigma, whether it is on the
  predicted front, and its measured perplexity / KL when stored; one row per (method, candidate);
* **evaluations** (:func:`evaluations_table`): the model's stored evaluations (per-window values
  left out);
* **layers** (:func:`layer_table`): per target matrix its module, shape, (b0, b1, b2, B0, B1), its
  bits per weight including scales and its error-table entry (the allocator's cost of that choice).

Files are written into a fresh directory under the export directory and renamed into place, so a
served file is always complete (:func:`write`).
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

LAYER_COLUMNS = ["module", "block", "type", "shape", "b0", "b1", "b2", "B0", "B1", "bits", "error"]
"""The per-layer table's columns (the page's sortable table and the downloads)."""


def layer_table(ex: Any, cfg: Any) -> pd.DataFrame:
    """One row per target matrix of ``cfg`` (:data:`LAYER_COLUMNS`); ``error`` is the error table's
    entry ``table[i, c_i]`` (:mod:`coalora.lqlora.sensitivity`, the allocator's objective term)."""
    table = ex.front_service().table
    rows = []
    for i, t in enumerate(cfg.targets):
        q = cfg[t.name]
        rows.append([t.name, t.block, t.module_type, "x".join(map(str, t.shape)), q.b0, q.b1, q.b2, q.B0, q.B1,
                     round(q.bits, 5), float(table[i, cfg.ids[i]])])
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def evaluations_table(ex: Any) -> pd.DataFrame:
    """The model's stored evaluations, one row each (window lists dropped)."""
    from dataclasses import asdict

    rows = [{k: v for k, v in asdict(e).items() if not k.startswith("window_")}
            for e in ex.store.evaluations(model=ex.model_name)]
    return pd.DataFrame(rows)


def front_table(ex: Any, methods: list[str], cv: Any, sizes: Any, fronts: dict) -> pd.DataFrame:
    """Every scored candidate per method (module docstring); ``fronts``: method -> the shown
    :class:`coalora.search.front.FrontResult` (which candidates are on the predicted front)."""
    import numpy as np

    from coalora.quant.config import ModelQuantConfig
    from coalora.search.gp import predict

    svc = ex.front_service()
    cids, cbits, csrc = svc.candidates()
    index = {tuple(ids): h for h, ids in ex.candidate_index().items()}
    parts = []
    for method in methods:
        q = ex.query(method, cv.seqlen, cv.windows, cv.corpus, "ppl")
        hashes, ids, y = svc.measured(q)
        gp, _ = svc.fit(q, (hashes, ids, y))
        all_ids = np.concatenate([cids, ids]) if len(ids) else cids
        src = list(csrc) + ["measured"] * len(ids)
        bits = np.concatenate([cbits, svc.avg_bits(ids)]) if len(ids) else cbits
        nan = np.full(len(all_ids), np.nan)
        mean, sd, lo, hi = predict(gp, svc.encode(all_ids)) if gp is not None else (nan,) * 4
        kq = ex.query(method, cv.seqlen, cv.windows, cv.corpus, "kld")
        kld = {e.config_hash: e.kld for e in ex.store.evaluations(
            model=ex.model_name, method=method, eval_set=q.eval_set, seqlen=cv.seqlen, windows=cv.windows,
            adapter_id=kq.adapter_id, eval_spec=ex.eval_spec)}
        meas = dict(zip(hashes, y))
        on_front = {p.config_hash for p in fronts[method].front} if method in fronts else set()
        seen: set[str] = set()
        for i, row in enumerate(all_ids):
            h = index.get(tuple(int(v) for v in row)) or ModelQuantConfig.from_ids(ex.model_name, ex.targets,
                                                                                   row.tolist()).hash
            if h in seen:
                continue
            seen.add(h)
            mu, s = float(mean[i]), float(sd[i])
            parts.append({"config_hash": h, "method": method, "avg_bits": float(bits[i]),
                          "size_mb": sizes.mb(float(bits[i])), "source": "measured" if h in meas else src[i],
                          "predicted_ppl": _exp(mu), "predicted_lo": _exp(float(lo[i])), "predicted_hi": _exp(float(hi[i])),
                          "log_sigma": s, "on_predicted_front": h in on_front,
                          "measured_ppl": _exp(meas[h]) if h in meas else None, "measured_kld": kld.get(h)})
    return pd.DataFrame(parts)


def _exp(v: float) -> float:
    return math.exp(min(v, 100.0)) if math.isfinite(v) else float("nan")


def write(root: Path, stem: str, df: pd.DataFrame) -> list[str]:
    """``df`` as ``stem.csv`` and ``stem.parquet`` in a fresh directory under ``root`` (written in a
    hidden sibling, then renamed: a served file is complete); returns the two paths."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"tables-{uuid.uuid4().hex[:12]}"
    staging = root / f".staging-{name}"
    staging.mkdir()
    df.to_csv(staging / f"{stem}.csv", index=False)
    df.to_parquet(staging / f"{stem}.parquet", index=False)
    os.replace(staging, root / name)
    return [str(root / name / f"{stem}.csv"), str(root / name / f"{stem}.parquet")]


def as_rows(df: pd.DataFrame) -> list[list[Any]]:
    """A DataFrame as the page's table rows."""
    return df.astype(object).where(df.notna(), None).values.tolist()
