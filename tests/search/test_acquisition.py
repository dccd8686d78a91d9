"""EHVI on (bits, loss): hand-checked values, the closed form against Monte Carlo hypervolumes, its log
form far inside the dominated region, and the Kriging-believer batch."""

from __future__ import annotations

import numpy as np

from coalora.search.acquisition import believer_batch, expected_hvi, log_expected_hvi
from coalora.search.pareto import hypervolume_2d

FB, FL, REF = np.array([3.0, 5.0, 7.0]), np.array([4.5, 3.8, 3.5]), (8.75, 6.9)


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

def test_closed_form_equals_the_mean_hypervolume_gain_of_samples():
    rng = np.random.default_rng(0)
    bits, mean, sd = rng.uniform(2, 8, 6), rng.uniform(3.3, 5, 6), rng.uniform(0.05, 0.5, 6)
    e = expected_hvi(bits, mean, sd, FB, FL, REF)
    base = hypervolume_2d(np.stack([FB, FL], 1), REF)
    z = rng.standard_normal(4000)
    for b, m, s, got in zip(bits, mean, sd, e):
        gains = [hypervolume_2d(np.vstack([np.stack([FB, FL], 1), [[b, y]]]), REF) - base for y in m + s * z]
        assert abs(got - np.mean(gains)) <= 4 * np.std(gains) / np.sqrt(len(z)) + 1e-9, (got, np.mean(gains))


def test_log_form_matches_and_stays_finite_where_ehvi_rounds_to_zero():
    bits, mean, sd = np.array([4.0, 6.0, 8.0]), np.array([3.9, 3.6, 60.0]), np.array([0.2, 0.1, 0.1])
    e, le = expected_hvi(bits, mean, sd, FB, FL, REF), log_expected_hvi(bits, mean, sd, FB, FL, REF)
    np.testing.assert_allclose(np.exp(le[:2]), e[:2], rtol=1e-9)
    assert e[2] == 0.0 and np.isfinite(le[2]) and le[2] < -1000  # 560 sd above the reference: tiny, not -inf
    # a worse mean never scores higher (the ascent's signal points the right way)
    ladder = log_expected_hvi(np.full(5, 6.0), np.linspace(3.6, 30, 5), np.full(5, 0.1), FB, FL, REF)
    assert (np.diff(ladder) < 0).all()


def test_believer_batch_skips_picks_and_stops_without_improvement():
    bits = np.array([2.5, 2.5, 6.5, 9.0])
    mean, sd = np.array([4.0, 4.0, 3.0, 3.0]), np.array([0.1, 0.1, 0.1, 0.1])

    def score(rows, believed, believed_y):  # believed rows lose their uncertainty; others unchanged
        s = sd[rows].copy()
        s[np.isin(rows, believed)] = 0.0
        return mean[rows], s

    picks = believer_batch(score, bits, mean, sd, FB, FL, REF, size=4)
    rows = [i for i, _, _ in picks]
    assert len(rows) == len(set(rows)) and 3 not in rows  # 9 bits lies beyond the reference
    assert rows[0] in (0, 1) and 2 in rows
