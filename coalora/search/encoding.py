"""The configuration -> GP input encoding shared by the training-time search and the app's front (method.md 5).

A model-level configuration is N per-matrix choices out of the 432 of :data:`coalora.quant.config.ALL_CONFIGS`
(config ids ``[..., N]``, or value-index matrices ``[..., N, 5]`` as the training search moves them). The
surrogate sees two numbers per configuration (:data:`ENCODING`), both in [0, 1] over the whole space:

* the numel-weighted average bits per weight, scaled from [MIN_BITS, MAX_BITS];
* the log of the allocator's objective ``sum_i table[i, c_i]`` (``table [N, 432]``, the model's error
  table: :mod:`coalora.lqlora.sensitivity`), scaled from [log of the sum of row minima, log of the sum of
  row maxima]. It separates configurations of equal size the way the allocator ranks them.

Why two numbers and not the 5N value indices or the N per-matrix bits: an ARD kernel over 210 (SmolLM2)
or 1,050 dimensions is under-determined from the tens of evaluations a front or a search pool holds,
while these two order the stored SmolLM2 evaluations almost alone (``coalora front --validate``). Neither
is fitted to evaluations, so held-out validation is honest.

Without a measured error table (a caller that has only the matrix sizes) :func:`weight_free_table`
stands in: ``numel_i * 4^-bits(c)``, the rate-distortion scaling of a b-bit code's squared error,
which keeps the second column's meaning (summed squared error, larger matrices weighing more).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from coalora.errors import CoaloraError
from coalora.quant.config import CONFIG_BITS, FIELD_SIZES, MAX_BITS, MIN_BITS

ENCODING = "avg_bits+log_table_error"
"""The name of the GP's input encoding, recorded with every front and search round."""
ENCODING_SIGNS = (-1, 1)
"""Signs of the GP's linear mean per encoding column: the loss does not rise with bits and does not
fall with the allocator's error (:class:`coalora.search.gp.SignedLinearMean`)."""

BITS = np.asarray(CONFIG_BITS, dtype=np.float64)
"""Bits per weight of each of the 432 configurations, ``[432]`` (a numpy view of ``CONFIG_BITS``)."""
_RADIX = np.cumprod((1,) + FIELD_SIZES[:0:-1])[::-1].copy()  # mixed-radix weights of the 5 index fields


def config_ids(index: np.ndarray | torch.Tensor) -> np.ndarray:
    """Config ids ``[..., N]`` (positions in ``ALL_CONFIGS``) of value-index matrices ``[..., N, 5]``."""
    idx = np.asarray(index, dtype=np.int64)
    if idx.shape[-1:] != (5,):
        raise CoaloraError(f"value-index matrices end in 5 fields (b0, b1, b2, B0, B1), got shape {idx.shape}")
    return idx @ _RADIX


def avg_bits(ids: np.ndarray, numels: np.ndarray) -> np.ndarray:
    """Numel-weighted average bits ``[...]`` of config ids ``[..., N]`` (``numels [N]``)."""
    numels = np.asarray(numels, dtype=np.float64)
    return BITS[np.asarray(ids)] @ numels / numels.sum()


def weight_free_table(numels: np.ndarray) -> np.ndarray:
    """A stand-in error table ``[N, 432]``: ``numel_i * 4^-bits(c)`` (module docstring)."""
    numels = np.asarray(numels, dtype=np.float64)
    return numels[:, None] * np.power(4.0, -BITS)[None, :]


def check_table(table: np.ndarray, n: int) -> np.ndarray:
    """``table`` as float64 ``[n, 432]``, or one clear error."""
    t = np.asarray(table, dtype=np.float64)
    if t.shape != (n, len(BITS)):
        raise CoaloraError(f"error table shape {t.shape} does not match {n} matrices x {len(BITS)} configurations")
    return t


def encode(ids: np.ndarray, numels: np.ndarray, table: np.ndarray) -> torch.Tensor:
    """GP inputs ``[c, 2]`` in [0, 1] from config ids ``[c, N]`` (:data:`ENCODING`).

    ``numels [N]`` weigh the average bits; ``table [N, 432]`` is the error table of the allocator's objective.
    """
    ids = np.asarray(ids)
    numels = np.asarray(numels, dtype=np.float64)
    bits = BITS[ids] @ numels / numels.sum()
    tiny = np.finfo(np.float64).tiny
    err = np.log(np.maximum(table[np.arange(ids.shape[-1]), ids].sum(-1), tiny))
    lo = math.log(max(table.min(1).sum(), tiny))
    hi = math.log(max(table.max(1).sum(), tiny))
    x = np.stack([(bits - MIN_BITS) / (MAX_BITS - MIN_BITS), (err - lo) / max(hi - lo, 1e-12)], -1)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
