"""The protocol report's intervals: a paired bootstrap over seeds and held-out windows (method.md 6).

Each resample draws the held-out windows with replacement once (shared by every method, budget and
configuration, so method-vs-method ratios are paired on the same text) and, per method, its seeds
with replacement. A cell's perplexity is ``exp(sum of resampled window NLLs / their tokens)``; its
KL the same mean of window KLs. Intervals are the 2.5 and 97.5 percentiles of the resamples.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

RESAMPLES = 2000
"""Bootstrap resamples of every interval."""


def _method_rng(rng_seed: int, method: str) -> np.random.Generator:
    """The generator of ``method``'s seed draws: seeded by ``rng_seed`` and a stable hash of the name."""
    return np.random.default_rng([rng_seed, int.from_bytes(hashlib.sha256(method.encode()).digest()[:8], "little")])


class Bootstrap:
    """Paired resamples of windows (shared) and seeds (per method).

    ``windows`` ``[R, W]`` are window indices drawn once for all methods from a generator seeded
    ``rng_seed``; ``seeds[m]`` ``[R, S_m]`` are method ``m``'s seeds drawn with replacement from a
    generator seeded by ``rng_seed`` and the method's name, so a method's intervals do not move
    when another method (an ablation arm) joins the report.
    """

    def __init__(self, n_windows: int, seeds: dict[str, list[int]], resamples: int = RESAMPLES, rng_seed: int = 0):
        self.windows = np.random.default_rng(rng_seed).integers(0, n_windows, size=(resamples, n_windows))
        self.seeds = {m: np.asarray(s)[_method_rng(rng_seed, m).integers(0, len(s), size=(resamples, len(s)))]
                      for m, s in seeds.items()}
        self.n = resamples

    def cell(self, rows, column: str = "window_nll") -> tuple[float, np.ndarray] | None:
        """(point estimate, resampled values ``[R]``) of exp(mean NLL) (or mean KL for window_kld)."""
        if len(rows) == 0:
            return None
        by_seed = {int(s): np.asarray(v, dtype=np.float64) for s, v in zip(rows["seed"], rows[column])}
        tokens = int(rows["tokens"].iloc[0]) / int(rows["windows"].iloc[0])
        x = np.stack(list(by_seed.values()))  # [S, W]
        est = x.mean() / tokens
        method = rows["method"].iloc[0]
        seeds = self.seeds.get(method)
        idx = {s: i for i, s in enumerate(by_seed)}
        if seeds is None or len(by_seed) == 1:
            draws = np.zeros((self.n, 1), dtype=int)
        else:
            draws = np.vectorize(lambda s: idx.get(int(s), 0))(seeds)
        # mean over drawn seeds and drawn windows: x[draws][:, :, windows]
        per = x[draws]  # [R, S', W]
        vals = np.take_along_axis(per, self.windows[:, None, :].repeat(per.shape[1], 1), axis=2).mean(axis=(1, 2)) / tokens
        if column == "window_nll":
            return math.exp(est), np.exp(vals)
        return est, vals


def ci(vals: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of resampled values ``[R]``."""
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def interval(est: float, vals: np.ndarray, digits: int = 2) -> str:
    """``est [lo, hi]`` with ``digits`` decimals, as the report's cells write it."""
    lo, hi = ci(vals)
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
