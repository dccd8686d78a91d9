"""The configuration -> GP input encoding: index matrices to config ids, the two columns, the stand-in table."""

from __future__ import annotations

import numpy as np
import pytest

from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, MAX_BITS, MIN_BITS
from coalora.search.encoding import BITS, avg_bits, check_table, config_ids, encode, weight_free_table


def test_config_ids_invert_the_value_indices():
    idx = np.array([[c.index for c in ALL_CONFIGS]])  # [1, 432, 5]
    assert (config_ids(idx)[0] == np.arange(432)).all()
    with pytest.raises(CoaloraError, match="5 fields"):
        config_ids(np.zeros((3, 4)))


def test_columns_are_scaled_bits_and_log_objective():
    numels = np.array([100.0, 300.0])
    table = weight_free_table(numels)
    lo, hi = int(np.argmin(BITS)), int(np.argmax(BITS))  # the cheapest and the most precise configuration
    ids = np.array([[lo, hi], [hi, lo], [hi, hi], [lo, lo]])
    x = encode(ids, numels, table).numpy()
    np.testing.assert_allclose(x[:, 0], (avg_bits(ids, numels) - MIN_BITS) / (MAX_BITS - MIN_BITS), rtol=1e-12)
    assert x[2, 1] == pytest.approx(0.0, abs=1e-12) and x[3, 1] == pytest.approx(1.0, abs=1e-12)  # least / most error
    assert x[1, 1] > x[0, 1]  # the larger matrix at 2 bits costs more error
    assert BITS[0] == ALL_CONFIGS[0].bits
    with pytest.raises(CoaloraError, match="error table shape"):
        check_table(table[:, :10], 2)
