"""Pareto filter, segment-wise filter and hypervolume on hand-checkable fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalora.errors import CoaloraError
from coalora.search.pareto import hypervolume_2d, pareto_mask, segment_pareto_filter


def test_pareto_mask_by_hand():
    pts = [(2.0, 5.0), (3.0, 4.0), (3.0, 6.0), (4.0, 4.0), (5.0, 1.0), (5.0, 1.0)]
    # (3,6) is dominated by (2,5) and (3,4); (4,4) by (3,4); duplicates (5,1) both stay.
    assert pareto_mask(pts).tolist() == [True, True, False, False, True, True]


def test_segment_filter_keeps_each_segments_front():
    bits = [2.3, 2.4, 2.45, 3.1, 3.2, 7.25, 8.0, 2.0]
    loss = [5.0, 4.0, 4.5, 3.0, 3.5, 1.0, 0.5, 9.0]
    # U = 5 over [2.25, 7.25]: width 1. Segment 0 = [2.25, 3.25): points 0..4 -> front {1 (2.4, 4), 0 (2.3, 5), 3 (3.1, 3)};
    # point 5 (7.25) falls in the last segment; 8.0 and 2.0 are outside and dropped.
    kept = segment_pareto_filter(bits, loss, 2.25, 7.25, segments=5)
    assert kept.tolist() == [0, 1, 3, 5]


def test_segment_filter_is_more_inclusive_than_global_front():
    rng = np.random.default_rng(0)
    bits = rng.uniform(2.25, 7.25, 200)
    loss = 10 / bits + rng.normal(0, 0.3, 200)
    glob = np.flatnonzero(pareto_mask(np.stack([bits, loss], 1)))
    seg = segment_pareto_filter(bits, loss, segments=40)
    assert set(glob) <= set(seg) and len(seg) > len(glob)
    # every one of the 40 segments that holds a point keeps at least one
    occupied = len(np.unique(np.minimum(((bits - 2.25) / 5 * 40).astype(int), 39)))
    assert len(seg) >= occupied


def test_hypervolume_by_hand():
    # Staircase of (1,3), (2,2), (3,1) up to ref (4,4): 3*1 + 2*1 + 1*1 ... area = 1*3 + 1*2 + 1*1 = 6
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1)], ref=(4, 4)) == pytest.approx(6.0)
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1), (3, 3)], ref=(4, 4)) == pytest.approx(6.0)  # dominated point adds nothing
    assert hypervolume_2d([(5, 1)], ref=(4, 4)) == 0.0  # beyond the reference
    assert hypervolume_2d([], ref=(4, 4)) == 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=1, max_size=30))
def test_hypervolume_matches_grid_count(points):
    """HV equals a Monte-Carlo-free grid count of the dominated region (within grid resolution)."""
    ref = (10.0, 10.0)
    hv = hypervolume_2d(points, ref)
    g = np.linspace(0, 10, 401)[:-1] + 0.0125  # cell centres
    xx, yy = np.meshgrid(g, g, indexing="ij")
    p = np.asarray(points)
    dominated = ((p[:, 0][:, None, None] <= xx) & (p[:, 1][:, None, None] <= yy)).any(0)
    approx = dominated.mean() * 100
    assert abs(hv - approx) <= 0.025 * 10 * 2 * len(points) + 1e-9


def test_bad_points_rejected():
    with pytest.raises(CoaloraError, match="shape"):
        pareto_mask([[1, 2, 3]])
    with pytest.raises(CoaloraError, match="finite"):
        pareto_mask([[1, float("nan")]])
    with pytest.raises(CoaloraError, match="segments"):
        segment_pareto_filter([3.0], [1.0], segments=0)


def test_sorted_mask_equals_the_pairwise_definition():
    """The O(n log n) mask against q-dominates-p checked for every pair, ties and duplicates included."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(0, 6, (int(rng.integers(1, 30)), 2)).astype(float)
        le = (p[None, :, :] <= p[:, None, :]).all(-1)
        lt = (p[None, :, :] < p[:, None, :]).any(-1)
        np.testing.assert_array_equal(pareto_mask(p), ~(le & lt).any(1))
    assert pareto_mask(np.zeros((0, 2))).shape == (0,)
