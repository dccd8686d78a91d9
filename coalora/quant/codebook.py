"""NF-k codebooks and the nearest-code search (method.md section 1.4, LQ-LoRA).

The NF-k codebook has 2^k levels, the quantiles of a normal distribution rescaled to [-1, 1] with
exact -1, 0 and 1 (``nf_codebook(4)`` is QLoRA's NF4). A weight normalized by its block's scale,
y = x / s^ in [-1, 1], is stored as the index of the nearest level.

The nearest-code search uses a lookup table on a uniform grid of [-1, 1] (``LUT_CELLS`` cells) fine
enough that each cell holds at most one decision boundary, so a table read and one comparison per
weight give exactly ``torch.bucketize(y, midpoints)``, several times faster than its binary search.
:func:`stacked_code_tables` stacks the tables of several k so that one cell index serves them all
(the error table's inner loop, :mod:`coalora.lqlora.error_table`).
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor

from coalora.errors import CoaloraError

#: The NF4 quantile constant: the largest level's quantile, so that code[-1] == 1.
NF_DELTA = 0.9677083

#: Lookup-table resolution over [-1, 1]: a cell is 2/1024 ~ 0.002 wide, narrower than the smallest
#: gap between NF8 midpoints (~0.005), so each cell (plus rounding slack) holds <= 1 boundary.
LUT_CELLS = 1024
_LUT_SLACK = 1e-6  # > float32 rounding of a cell coordinate in units of y (half an ulp at 1024, / 512: 6e-8)


@cache
def _codebook(k: int) -> Tensor:
    if k not in (2, 3, 4, 5, 6, 7, 8):
        raise CoaloraError(f"NF codebooks exist for 2..8 bits, got k={k!r}")
    # float64 throughout, cast once at the end, so the k=4 table matches bitsandbytes' NF4 to float32 precision.
    delta = torch.tensor(NF_DELTA, dtype=torch.float64)
    sigma = -1.0 / (math.sqrt(2.0) * torch.erfinv(1.0 - 2.0 * delta))
    half = 2 ** (k - 1)
    levels = torch.cat(
        [
            torch.linspace(1.0 - NF_DELTA, 0.5, half, dtype=torch.float64),
            torch.linspace(0.5, NF_DELTA, half + 1, dtype=torch.float64)[1:],  # drop the duplicate 0.5
        ]
    )
    code = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), sigma).icdf(levels)
    code[half - 1] = 0.0  # icdf(0.5) is 0 up to rounding; the zero code must be exact (padding, zeros)
    code = code / code.max()  # the max is 1 up to rounding of erfinv; make it exact, like bitsandbytes
    return code.to(torch.float32)


def nf_codebook(k: int) -> Tensor:
    """The NF-k codebook: float32 ``[2**k]``, ascending, in [-1, 1] with exact -1, 0 and 1.

    ``2**(k-1) - 1`` values are negative and ``2**(k-1)`` positive; ``nf_codebook(4)`` is QLoRA's NF4.
    """
    return _codebook(k).clone()


def zero_code(k: int) -> int:
    """Index of the exact 0 in the NF-k codebook (where padding and all-zero blocks land)."""
    return 2 ** (k - 1) - 1


@cache
def _midpoints(k: int) -> Tensor:
    code = _codebook(k)
    return (code[:-1] + code[1:]) / 2


@cache
def _nearest_lut(k: int) -> tuple[Tensor, Tensor]:
    """Tables that turn ``y in [-1, 1]`` into ``bucketize(y, midpoints(k))`` with one comparison.

    Cell ``i = int(y * L/2 + L/2)`` covers ``[-1 + 2i/L, -1 + 2(i+1)/L)``. Returns ``below [L+1]``
    int32, the number of midpoints left of the cell, and ``table [L+1, 3]`` float32 with columns
    (threshold, code if y <= threshold, code if y > threshold); the threshold is the cell's single
    midpoint or +inf. Row L serves y == 1 exactly.
    """
    code, mids = _codebook(k).double(), _midpoints(k).double()
    edges = torch.linspace(-1.0, 1.0, LUT_CELLS + 1, dtype=torch.float64)
    below = torch.searchsorted(mids, edges[:-1] - _LUT_SLACK)  # midpoints surely < every y in the cell
    upto = torch.searchsorted(mids, edges[1:] + _LUT_SLACK, right=True)  # midpoints possibly < some y
    if int((upto - below).max()) > 1:
        raise AssertionError(f"NF{k} lookup table too coarse: a cell holds two decision boundaries")
    threshold = torch.where(
        upto > below, mids[below.clamp(max=len(mids) - 1)], torch.tensor(math.inf, dtype=torch.float64)
    )
    table = torch.stack([threshold, code[below], code[(below + 1).clamp(max=len(code) - 1)]], dim=1)
    below, table = torch.cat([below, below[-1:]]), torch.cat([table, table[-1:]])
    return below.to(torch.int32), table.to(torch.float32)


def lut_cells(y: Tensor) -> Tensor:
    """Flat int32 cell indices of ``y``, which must already be clamped to [-1, 1]."""
    half = LUT_CELLS / 2
    return y.reshape(-1).mul(half).add_(half).to(torch.int32)


def nearest_code_index(y: Tensor, k: int) -> Tensor:
    """Index (uint8, shape of ``y``) of the NF-k entry nearest to each ``y``; ties go to the lower entry.

    Equal to ``torch.bucketize(y, midpoints)``; values outside [-1, 1] map to the end codes.
    """
    y = y.clamp(-1.0, 1.0)
    cells = lut_cells(y)
    below, table = _nearest_lut(k)
    idx = below.to(y.device).index_select(0, cells) + (y.reshape(-1) > table[:, 0].to(y.device).index_select(0, cells))
    return idx.to(torch.uint8).view(y.shape)


def nearest_code_value(y: Tensor, k: int) -> Tensor:
    """The NF-k entry nearest to each ``y`` (float32, shape of ``y``); ``y`` is clamped to [-1, 1] in place."""
    y = y.clamp_(-1.0, 1.0)
    rows = _nearest_lut(k)[1].to(y.device).index_select(0, lut_cells(y))
    return torch.where(y.reshape(-1) > rows[:, 0], rows[:, 2], rows[:, 1]).view(y.shape)


@cache
def stacked_code_tables(ks: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest-code tables of several NF-k at once, for one shared lookup cell per weight.

    ``ks`` is a tuple of K code widths. Returns thresholds float32 ``[K, L+1]``, codes float32
    ``[K * 2(L+1)]`` and offsets int32 ``[K, 1]`` (L = ``LUT_CELLS``) such that the NF-``ks[k]``
    code nearest to ``y`` in cell ``i = lut_cells(y)`` is ``codes[offsets[k] + 2i + (y > thresholds[k, i])]``.
    Every read is a flat gather and every elementwise op runs along a contiguous axis.
    """
    luts = [_nearest_lut(k)[1] for k in ks]  # [L+1, 3]: threshold, low code, high code
    thresholds = torch.stack([t[:, 0] for t in luts]).contiguous()
    codes = torch.cat([t[:, 1:].reshape(-1) for t in luts])
    offsets = torch.arange(len(luts), dtype=torch.int32)[:, None] * (2 * luts[0].shape[0])
    return thresholds, codes, offsets
