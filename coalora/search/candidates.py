"""The candidate configurations a front scores (method.md 5: the search space the GP is queried on).

432^N configurations cannot be enumerated, so a front scores a set that covers the bit range densely
and around the places that matter: the allocator's solutions on a budget grid (the best configuration
it knows at each size) and random neighbours of each (a few matrices moved one weight-bit step, same
or adjacent b0, any other fields), so the GP can find configurations the allocator's error table
ranks wrongly.
"""

from __future__ import annotations

import numpy as np

from coalora.quant.config import ALL_CONFIGS, FIELD_VALUES
from coalora.search.encoding import BITS, avg_bits
from coalora.search.front_query import FrontSettings

CONFIG_B0 = np.array([FIELD_VALUES[0].index(c.b0) for c in ALL_CONFIGS])
"""Index of each configuration's weight bits b0 in (2, 3, 4, 8), ``[432]``."""


def front_candidates(table: np.ndarray, numels: np.ndarray, settings: FrontSettings) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(config ids ``[c, N]``, avg bits ``[c]``, source per row: ``allocator`` or ``neighbour``), unique rows.

    ``table [N, 432]`` is the model's error table, ``numels [N]`` its matrix sizes; ``settings.grid``
    budgets over ``[budget_lo, budget_hi]``, ``settings.neighbours`` neighbours per solution with
    ``settings.moves`` matrices moved each, drawn from ``settings.seed``.
    """
    from coalora.lqlora.allocate import allocate_many

    s = settings
    budgets = np.linspace(s.budget_lo, s.budget_hi, s.grid).tolist()
    sols = np.array([a.choice for a in allocate_many(table, numels, BITS, budgets, method="fast")])
    rng = np.random.default_rng(s.seed)
    rows, src = [sols], ["allocator"] * len(sols)
    for base in sols:
        nb = np.repeat(base[None], s.neighbours, 0)
        for r in range(s.neighbours):
            for m in rng.choice(len(base), size=min(s.moves, len(base)), replace=False):
                b0 = CONFIG_B0[nb[r, m]] + rng.choice((-1, 1))
                b0 = min(max(b0, 0), CONFIG_B0.max())
                nb[r, m] = rng.choice(np.flatnonzero(CONFIG_B0 == b0))
        rows.append(nb)
        src += ["neighbour"] * s.neighbours
    ids = np.concatenate(rows)
    _, first = np.unique(ids, axis=0, return_index=True)
    first.sort()
    return ids[first], avg_bits(ids[first], numels), [src[i] for i in first]
