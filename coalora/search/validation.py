"""Held-out accuracy of the section-5 surrogate: k-fold Spearman, errors and predictive-band coverage.

Each fold is a full fit on the rest (encoding inputs are fixed; outcome transform, hyperparameters and
the band's calibration see no held-out point), so the figures are what a new evaluation would meet.
The RMSE is set by the worst extrapolation (the lowest-bit point held out); the median error shows the
bulk; ``coverage_2sigma`` is the share of held-out values inside :func:`coalora.search.gp.predictive_band`,
which is calibrated to hold :data:`coalora.search.gp.BAND_COVERAGE` of them.
"""

from __future__ import annotations

import numpy as np
import torch

from coalora.search.encoding import ENCODING_SIGNS
from coalora.search.gp import BAND_COVERAGE, BAND_Z, fit_gp, predict


def kfold(x: torch.Tensor, y: np.ndarray, folds: int, seed: int = 0) -> dict[str, float | str]:
    """K-fold figures of the GP on inputs ``[n, d]`` and outcomes ``[n]`` (log metric); ``folds = n`` is
    leave-one-out. Folds are every ``folds``-th point of a ``seed`` permutation. Keys: ``spearman``,
    ``rmse_log_ppl`` and ``median_abs_err_log`` (of the log metric, whichever it is), ``coverage_2sigma``,
    ``band_target``, ``band`` (what the band is, in words) and ``fold_seed``."""
    from scipy.stats import spearmanr

    perm = np.random.default_rng(seed).permutation(len(y))
    pred, lo, hi = (np.empty(len(y)) for _ in range(3))
    for k in range(folds):
        test = perm[k::folds]
        train = np.setdiff1d(perm, test)
        gp = fit_gp(x[train], torch.from_numpy(y[train]), signs=ENCODING_SIGNS)
        pred[test], _, lo[test], hi[test] = predict(gp, x[test])
    err = pred - y
    return {"spearman": float(spearmanr(pred, y).statistic), "rmse_log_ppl": float(np.sqrt(np.mean(err ** 2))),
            "median_abs_err_log": float(np.median(np.abs(err))),
            "coverage_2sigma": float(np.mean((y >= lo) & (y <= hi))), "band_target": BAND_COVERAGE,
            "band": f"+-{BAND_Z:g} sigma predictive band (GP noise included, leave-one-out calibrated)",
            "fold_seed": seed}
