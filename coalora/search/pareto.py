"""Pareto utilities on (average bits, loss) points, both minimised (method.md sections 5.1 and 6).

* :func:`pareto_mask`: the non-dominated points;
* :func:`segment_pareto_filter`: CoA-LoRA's segment-wise filter (U equal segments of the bit range,
  the non-dominated set of each), which keeps good training configurations across the whole range
  instead of only the global front;
* :func:`hypervolume_2d`: the area dominated by a point set up to a reference point;
* :func:`normalised_hv`: that area over the box :data:`HV_DEFINITION` states (the one the app reports).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from coalora.errors import CoaloraError, short
from coalora.search.front_query import HV_KLD_REF, HV_PPL_REF, HV_TASK_REF, KLD_FLOOR, TASK_ERR_FLOOR, task_metric


def _points(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return p.reshape(0, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise CoaloraError(f"expected points of shape [n, 2] (bits, loss), got {p.shape}")
    if not np.isfinite(p).all():
        raise CoaloraError("points must be finite")
    return p


def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask ``[n]`` of the points no other point dominates (both coordinates minimised).

    q dominates p when q <= p in both coordinates and q < p in at least one. Exact duplicates do
    not dominate each other, so both are kept. By a sort, O(n log n): a point survives when its loss
    is the lowest among equal bits and below every loss at fewer bits.
    """
    p = _points(points)
    mask = np.zeros(len(p), dtype=bool)
    if len(p) == 0:
        return mask
    order = np.lexsort((p[:, 1], p[:, 0]))  # bits ascending, then loss ascending
    b, loss = p[order, 0], p[order, 1]
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    group = np.cumsum(np.r_[True, b[1:] != b[:-1]]) - 1
    group_min = loss[starts]
    before = np.r_[np.inf, np.minimum.accumulate(group_min)[:-1]]  # lowest loss at fewer bits
    mask[order] = (loss == group_min[group]) & (loss < before[group])
    return mask


def segment_pareto_filter(
    bits: Sequence[float] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    lo: float = 2.25,
    hi: float = 7.25,
    segments: int = 40,
) -> np.ndarray:
    """Indices kept by the segment-wise Pareto filter (method.md 5.1, U segments over [lo, hi]).

    Segment u covers ``[lo + u*w, lo + (u+1)*w)`` with ``w = (hi - lo)/U``; the last one includes
    ``hi``. Points outside ``[lo, hi]`` are dropped: they lie outside the bit range being trained.
    Returns sorted indices into the inputs.
    """
    if segments < 1 or not hi > lo:
        raise CoaloraError(f"need segments >= 1 and hi > lo, got segments={segments}, range [{lo}, {hi}]")
    pts = _points(np.stack([np.asarray(bits, float), np.asarray(losses, float)], axis=1) if len(bits) else [])
    inside = (pts[:, 0] >= lo) & (pts[:, 0] <= hi)
    seg = np.minimum(((pts[:, 0] - lo) / (hi - lo) * segments).astype(int), segments - 1)
    keep: list[int] = []
    for u in np.unique(seg[inside]):
        idx = np.flatnonzero(inside & (seg == u))
        keep.extend(idx[pareto_mask(pts[idx])].tolist())
    return np.array(sorted(keep), dtype=int)


def hypervolume_2d(points: Sequence[Sequence[float]] | np.ndarray, ref: Sequence[float]) -> float:
    """Area dominated by ``points`` (minimised) and bounded by ``ref`` (points beyond it count for nothing)."""
    p = _points(points)
    r = np.asarray(ref, dtype=np.float64)
    p = p[(p[:, 0] < r[0]) & (p[:, 1] < r[1])]
    if len(p) == 0:
        return 0.0
    p = p[pareto_mask(p)]
    p = p[np.argsort(p[:, 0])]  # bits ascending; on the front, loss then descends
    area, prev_loss = 0.0, r[1]
    for x, y in p:
        if y < prev_loss:
            area += (r[0] - x) * (prev_loss - y)
            prev_loss = y
    return float(area)


HV_LOG_FLOOR = {"ppl": 0.0, "kld": math.log(KLD_FLOOR), "task": math.log(TASK_ERR_FLOOR)}
"""The lower edge of the normalising box per metric, in log units: log ppl >= 0 (ppl >= 1), log KL >=
log :data:`~coalora.search.front_query.KLD_FLOOR`, and a task's log error rate >= log
:data:`~coalora.search.front_query.TASK_ERR_FLOOR` (the floors the fronts model values at)."""
HV_REF = {"ppl": HV_PPL_REF, "kld": HV_KLD_REF, "task": HV_TASK_REF}
"""The reference value per metric (a ``task:`` metric's error rate under ``"task"``)."""
HV_BITS = (2.0322265625, 8.75)
"""The bits edges of the normalising box: the cheapest configuration and the fronts' reference."""
_AXIS = {"ppl": "ppl", "kld": "kld", "task": "task error rate"}
HV_DEFINITION = {m: (f"normalised hypervolume: area dominated in (avg bits, log {_AXIS[m]}) up to the reference "
                     f"({HV_BITS[1]} bits, {_AXIS[m]} {HV_REF[m]:g}), divided by the box from "
                     f"({HV_BITS[0]:.3f} bits, {_AXIS[m]} {math.exp(HV_LOG_FLOOR[m]):g}); 1 is the unreachable ideal")
                 for m in HV_REF}
"""The one hypervolume the app reports, per metric kind (:func:`hv_kind`), stated in words next to every value."""


def hv_kind(metric: str) -> str:
    """The key of ``metric`` in :data:`HV_REF` and :data:`HV_DEFINITION`: ``ppl``, ``kld``, or ``task``
    for every ``task:<task>/<metric>`` front metric; one clear error for anything else."""
    if metric in HV_REF and metric != "task":
        return metric
    if task_metric(metric) is not None:
        return "task"
    raise CoaloraError(f"unknown metric {short(metric)}; use ppl, kld or task:<lm-eval task>/<metric>")


def normalised_hv(area: float, bits_ref: float = HV_BITS[1], metric: str = "ppl") -> float:
    """``area`` (a :func:`hypervolume_2d` in (avg bits, log metric) with reference ``bits_ref`` and
    :data:`HV_REF`) divided by the box :data:`HV_DEFINITION` states, so it lies in [0, 1]."""
    k = hv_kind(metric)
    box = (bits_ref - HV_BITS[0]) * (math.log(HV_REF[k]) - HV_LOG_FLOOR[k])
    return float(area) / box
