"""The training-time search: the front's surrogate and encoding, valid proposals, the coordinate ascent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, FIELD_SIZES, QuantConfig
from coalora.search.encoding import ENCODING
from coalora.search.round import SearchSettings, avg_bits, coordinate_ascent, matrix_bits, propose

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


def test_coordinate_ascent_climbs_a_known_objective():
    """On a separable objective the ascent moves towards its optimum and stays in the lattice."""
    target = torch.tensor([[3, 0, 2, 1, 2]] * 2)

    def acq(x):  # [b, 2, 5] -> [b]
        return -(x - target).abs().sum((-1, -2)).double()

    start = torch.zeros(2, 5, dtype=torch.long)
    best, val = coordinate_ascent(acq, start, steps=50, exclude=set())
    assert torch.equal(best, target) and val == 0.0


def test_coordinate_ascent_respects_exclusions_and_bounds():
    def acq(x):
        return x.sum((-1, -2)).double()  # wants every index at its maximum

    start = torch.zeros(1, 5, dtype=torch.long)
    best, _ = coordinate_ascent(acq, start, steps=100, exclude=set())
    assert best.tolist() == [[s - 1 for s in FIELD_SIZES]]


@pytest.mark.parametrize("with_table", [False, True])
def test_propose_returns_new_valid_configs_on_the_fronts_encoding(with_table):
    idx, bits, loss = _synthetic_pool()
    table = None
    if with_table:
        rng = np.random.default_rng(5)
        table = np.array(NUMELS, float)[:, None] * rng.lognormal(0, 0.5, (len(NUMELS), 1)) * 4.0 ** -np.array(
            [c.bits for c in ALL_CONFIGS])[None, :]
    r = propose(idx, bits, loss, NUMELS, SearchSettings(candidates=3, steps=8, seed=1), table=table)
    assert 1 <= len(r.candidates) <= 3
    pooled = {m.tobytes() for m in idx.astype(np.int64)}
    for c in r.candidates:
        assert c.shape == (len(NUMELS), 5)
        assert c.tobytes() not in pooled
        for row in c:
            QuantConfig.from_index(tuple(int(v) for v in row))  # inside the space, or raises
    assert len({c.tobytes() for c in r.candidates}) == len(r.candidates)  # the believer spreads the starts
    assert r.encoding == ENCODING and set(r.loo_rmse) == {ENCODING} and 0 <= r.loo_rmse[ENCODING] < loss.std()
    # the reference point is worse than every pool point, in (bits, loss), both minimised
    assert r.ref_point[0] > bits.max() and r.ref_point[1] > loss.max()
    assert all(np.isfinite(r.acquisition))


def test_training_and_front_share_one_surrogate(monkeypatch):
    """propose fits the front's GP (same function, same mean signs) on the front's encoding of its pool."""
    import coalora.search.front as front
    import coalora.search.gp as gp_module
    import coalora.search.round as rnd
    from coalora.search.encoding import config_ids, encode, weight_free_table
    from coalora.search.gp import SignedLinearMean

    assert rnd.fit_gp is front.fit_gp is gp_module.fit_gp and rnd.encode is encode
    seen = []
    real = gp_module.fit_gp

    def spy(x, y, **kw):
        gp = real(x, y, **kw)
        seen.append((x, gp))
        return gp

    monkeypatch.setattr(rnd, "fit_gp", spy)
    idx, bits, loss = _synthetic_pool()
    propose(idx, bits, loss, NUMELS, SearchSettings(candidates=1, steps=2))
    (x, gp), = seen
    sizes = np.array(NUMELS, float)
    assert torch.equal(x, encode(config_ids(idx), sizes, weight_free_table(sizes)))
    assert isinstance(gp.mean_module, SignedLinearMean) and tuple(gp.mean_module.signs.tolist()) == front.ENCODING_SIGNS


def test_propose_needs_a_pool():
    idx, bits, loss = _synthetic_pool(n=2)
    with pytest.raises(CoaloraError, match="at least 3"):
        propose(idx, bits, loss, NUMELS)
    with pytest.raises(CoaloraError, match="positive"):
        SearchSettings(candidates=0)
