"""Expected hypervolume improvement (EHVI) on (average bits, loss), both minimised (method.md 5.1, 5.2).

The bits of a candidate are exact and only its loss is uncertain (the GP's latent Gaussian), so the 2-D
EHVI has a closed form. For a loss y the improvement over a front is the integral, over heights t in
[y, ref_loss), of the width ``min(ref_bits, g(t)) - bits`` (>= 0), with g(t) the fewest bits of a front
point with loss <= t: a step function of t. With the front's losses sorted into edges e_0 < ... < e_K
(e_K = ref_loss) and the widths w_{-1} >= w_0 >= ... (w_K = 0),

    HVI(y) = sum_j (w_{j-1} - w_j) * (e_j - y)^+,   E[(e - y)^+] = sd * h((e - mean) / sd),

with ``h(u) = phi(u) + u Phi(u)`` (the expected-improvement function). Every coefficient is >= 0, so
``log EHVI`` is a log-sum-exp of ``log h`` terms, finite far inside the dominated region: the training
search's coordinate ascent (:mod:`coalora.search.round`) needs that gradient signal where EHVI itself
rounds to 0. This is exact where botorch's ``qLogExpectedHypervolumeImprovement`` is a Monte Carlo
estimate over a box decomposition of a general front, and costs O(c K) for c candidates.

:func:`believer_batch` spreads a batch: greedy EHVI with a Kriging believer (Ginsbourger et al., 2010).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import erfcx, ndtr

from coalora.search.pareto import pareto_mask

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def _log_h(u: np.ndarray) -> np.ndarray:
    """``log(phi(u) + u Phi(u))`` without cancellation for very negative u (Mills-ratio form)."""
    u = np.asarray(u, dtype=np.float64)
    out = np.empty_like(u)
    big = u > -1.0
    ub = u[big]
    out[big] = np.log(np.exp(-0.5 * ub**2 - _LOG_SQRT_2PI) + ub * ndtr(ub))
    us = np.maximum(u[~big], -1e6)
    # h(u) = phi(u) * (1 + u * Phi(u) / phi(u)), Phi(u) / phi(u) = sqrt(pi / 2) * erfcx(-u / sqrt 2)
    ratio = np.sqrt(np.pi / 2.0) * erfcx(-us / np.sqrt(2.0))
    out[~big] = -0.5 * us**2 - _LOG_SQRT_2PI + np.log(np.maximum(1.0 + us * ratio, 1e-300))
    return out


def _terms(bits: np.ndarray, front_bits: np.ndarray, front_loss: np.ndarray,
           ref: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``[K+1]`` and their coefficients ``[c, K+1]`` (``w_{j-1} - w_j`` >= 0) of the closed form."""
    keep = front_loss < ref[1]
    fl, fb = front_loss[keep], front_bits[keep]
    order = np.argsort(fl)
    fl, fb = fl[order], np.minimum.accumulate(fb[order])  # g on [fl[k], fl[k+1])
    edges = np.concatenate([fl, [ref[1]]])
    widths = np.clip(np.minimum(ref[0], np.concatenate([[np.inf], fb]))[None, :] - bits[:, None], 0, None)  # w_{-1..K-1}
    coef = widths - np.concatenate([widths[:, 1:], np.zeros((len(bits), 1))], axis=1)
    return edges, np.clip(coef, 0, None)


def expected_hvi(bits: np.ndarray, mean: np.ndarray, sd: np.ndarray, front_bits: np.ndarray, front_loss: np.ndarray,
                 ref: tuple[float, float]) -> np.ndarray:
    """Exact EHVI ``[c]`` of candidates with bits ``[c]`` and Gaussian loss (``mean``, ``sd`` ``[c]``) over a
    front ``(front_bits, front_loss) [K]`` up to ``ref = (ref_bits, ref_loss)``; sd 0 gives the plain HVI."""
    bits, mean, sd = (np.asarray(a, dtype=np.float64) for a in (bits, mean, sd))
    edges, coef = _terms(bits, np.asarray(front_bits, float), np.asarray(front_loss, float), ref)
    gap = edges[None, :] - mean[:, None]  # [c, K+1]
    s = sd[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = gap / s
        expect = np.where(s > 0, s * (np.exp(-0.5 * u**2 - _LOG_SQRT_2PI) + u * ndtr(u)), np.clip(gap, 0, None))
    return (coef * np.nan_to_num(expect, nan=0.0)).sum(1)


def log_expected_hvi(bits: np.ndarray, mean: np.ndarray, sd: np.ndarray, front_bits: np.ndarray,
                     front_loss: np.ndarray, ref: tuple[float, float]) -> np.ndarray:
    """``log`` of :func:`expected_hvi` ``[c]``, finite wherever a candidate could improve at all (sd > 0 and
    fewer bits than ``ref_bits``); -inf where it cannot."""
    bits, mean = np.asarray(bits, dtype=np.float64), np.asarray(mean, dtype=np.float64)
    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-12)
    edges, coef = _terms(bits, np.asarray(front_bits, float), np.asarray(front_loss, float), ref)
    u = (edges[None, :] - mean[:, None]) / sd[:, None]
    with np.errstate(divide="ignore"):
        terms = np.log(coef) + np.log(sd)[:, None] + _log_h(u)
    top = terms.max(1, keepdims=True)
    finite = np.isfinite(top[:, 0])
    out = np.full(len(bits), -np.inf)
    out[finite] = top[finite, 0] + np.log(np.exp(terms[finite] - top[finite]).sum(1))
    return out


Scorer = Callable[[np.ndarray, list[int], list[float]], tuple[np.ndarray, np.ndarray]]
"""``(candidate rows [s], believed rows, believed losses) -> (mean [s], sd [s])``: the GP's latent moments
of the loss at candidate rows, conditioned on the believed picks at their believed losses."""


def believer_batch(score: Scorer, bits: np.ndarray, mean: np.ndarray, sd: np.ndarray, front_bits: np.ndarray,
                   front_loss: np.ndarray, ref: tuple[float, float], size: int,
                   shortlist: int = 256) -> list[tuple[int, float, float]]:
    """Up to ``size`` candidate rows that together would most grow the front: ``(row, mean, sd)`` per pick.

    Greedy by EHVI with a Kriging believer: after each pick the front gains the pick at its predicted
    mean and the GP is conditioned on that value (``score``), so the next pick counts the first as done
    and its near-copies lose their uncertainty. Candidates ``[c]``: exact ``bits``, the GP's ``mean`` and
    ``sd``. Lazy and exact: a pick only lowers the others' EHVI (the front improves and the sd shrinks),
    so only the ``shortlist`` best are re-scored, and all of them only if the best of those falls below
    the rest's bound.
    """
    fb, fl = np.asarray(front_bits, float), np.asarray(front_loss, float)
    ehvi = expected_hvi(bits, mean, sd, fb, fl, ref)
    order = np.argsort(-ehvi)
    short = order[:shortlist]
    bound = float(ehvi[order[shortlist]]) if len(order) > shortlist else 0.0
    believed: list[int] = []
    believed_y: list[float] = []
    out: list[tuple[int, float, float]] = []
    while len(out) < size:
        if believed:
            m, s = score(short, believed, believed_y)
            e = expected_hvi(bits[short], m, s, fb, fl, ref)
            if e.max() < bound:  # the shortlist no longer holds the best: score everything
                short, bound = order, 0.0
                m, s = score(short, believed, believed_y)
                e = expected_hvi(bits[short], m, s, fb, fl, ref)
        else:
            m, s, e = mean[short], sd[short], ehvi[short]
        e = np.where(np.isin(short, believed), 0.0, e)
        k = int(np.argmax(e))
        if e[k] <= 0:
            break
        i = int(short[k])
        believed.append(i)
        believed_y.append(float(m[k]))
        out.append((i, float(m[k]), float(s[k])))
        fb, fl = np.append(fb, bits[i]), np.append(fl, m[k])
        keep = pareto_mask(np.stack([fb, fl], 1))
        fb, fl = fb[keep], fl[keep]
    return out
