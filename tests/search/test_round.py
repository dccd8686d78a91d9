"""The Pareto-based configuration search: encodings, reference point, valid proposals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, FIELD_SIZES, QuantConfig
from coalora.search.round import (
    SearchSettings,
    avg_bits,
    coordinate_ascent,
    decode_bits,
    encode,
    matrix_bits,
    propose,
)

NUMELS = [4096, 1024, 1024, 8192]


def _synthetic_pool(n=12, seed=0):
    """Configs with a loss that falls with each matrix's bits, weighted by matrix size."""
    rng = np.random.default_rng(seed)
    idx = np.stack([np.array([ALL_CONFIGS[rng.integers(432)].index for _ in NUMELS]) for _ in range(n)])
    bits = avg_bits(torch.as_tensor(idx), torch.tensor(NUMELS, dtype=torch.float64)).numpy()
    mb = matrix_bits(torch.as_tensor(idx)).numpy()
    loss = (np.exp(-mb) * np.array(NUMELS) / 1000).sum(1) + 2.0
    return idx, bits, loss


def test_matrix_bits_matches_config_formula():
    for c in ALL_CONFIGS[::7]:
        assert matrix_bits(torch.tensor([c.index]))[0].item() == pytest.approx(c.bits, abs=1e-12)


@pytest.mark.parametrize("encoding", ["index", "bits"])
def test_encodings_in_unit_range_and_decode_bits(encoding):
    idx, _, _ = _synthetic_pool()
    x = encode(torch.as_tensor(idx), encoding)
    assert x.min() >= 0 and x.max() <= 1
    assert x.shape[-1] == (5 * len(NUMELS) if encoding == "index" else len(NUMELS))
    assert torch.allclose(decode_bits(x, encoding, len(NUMELS)), matrix_bits(torch.as_tensor(idx)))


def test_coordinate_ascent_climbs_a_known_objective():
    """On a separable objective the ascent moves towards its optimum and stays in the lattice."""
    target = torch.tensor([[3, 0, 2, 1, 2]] * 2)

    def acq(x):  # [b, 1, 10] -> [b]
        return -(x[:, 0, :] - target.reshape(-1).double()).abs().sum(-1)

    start = torch.zeros(2, 5, dtype=torch.long)
    best, val = coordinate_ascent(acq, start, steps=50, exclude=set())
    assert torch.equal(best, target) and val == 0.0


def test_coordinate_ascent_respects_exclusions_and_bounds():
    def acq(x):
        return x[:, 0, :].sum(-1)  # wants every index at its maximum

    start = torch.zeros(1, 5, dtype=torch.long)
    best, _ = coordinate_ascent(acq, start, steps=100, exclude=set())
    assert best.tolist() == [[s - 1 for s in FIELD_SIZES]]


def test_propose_returns_new_valid_configs_and_reports_encodings():
    idx, bits, loss = _synthetic_pool()
    r = propose(idx, bits, loss, NUMELS, SearchSettings(candidates=3, steps=8, mc_samples=32, seed=1))
    assert 1 <= len(r.candidates) <= 3
    pooled = {m.tobytes() for m in idx.astype(np.int64)}
    for c in r.candidates:
        assert c.shape == (len(NUMELS), 5)
        assert c.tobytes() not in pooled
        for row in c:
            QuantConfig.from_index(tuple(int(v) for v in row))  # inside the space, or raises
    assert set(r.loo_rmse) == {"index", "bits"} and r.encoding in r.loo_rmse
    # reference point is worse than every pool point in the (-bits, -loss) maximisation frame
    assert r.ref_point[0] < -bits.max() and r.ref_point[1] < -loss.max()
    assert all(np.isfinite(r.acquisition))


def test_propose_needs_a_pool():
    idx, bits, loss = _synthetic_pool(n=2)
    with pytest.raises(CoaloraError, match="at least 3"):
        propose(idx, bits, loss, NUMELS)


def test_choose_encoding_picks_the_lower_loo_error_and_both_predict():
    """Both encodings predict a bits-driven loss far better than its spread; the lower LOO error wins."""
    from coalora.search.round import choose_encoding

    idx, _, loss = _synthetic_pool(n=30, seed=3)
    enc, scores = choose_encoding(torch.as_tensor(idx), torch.as_tensor(loss))
    assert enc == min(scores, key=scores.get)
    assert all(v < 0.5 * loss.std() for v in scores.values()), (scores, loss.std())
    forced, _ = choose_encoding(torch.as_tensor(idx), torch.as_tensor(loss), "bits")
    assert forced == "bits"
