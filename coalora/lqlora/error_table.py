"""Quantization error of every weight matrix under every one of the 432 configurations.

``error_table(weights)[i, c.id] = || w_i - fake_quantize(w_i, c) ||_F^2`` (optionally weighted by an
importance, e.g. a diagonal Fisher, as in LQ-LoRA's data-aware ILP, method.md sections 2.2-2.3 and S2).

Doing 432 full quantizations per matrix is too slow for a whole model, so the table uses the
structure of method.md 1.4:

* the first-level absmax depends only on B0, and the B0 = 32 and 64 absmax are max-pools of the
  B0 = 16 one (3 cheap variants);
* the dequantized scales s^ depend only on (b1, b2, B0, B1): 108 variants, each a vector of
  numel/B0 values, computed *exactly* over the whole matrix (offset and group maxima included);
* only the weight codes depend on b0, and they are where the time goes. The four codebooks share
  one lookup-table cell per normalized weight x/s^ (:func:`coalora.quant.codebook.stacked_code_tables`), so each (scale
  variant, b0) costs two table reads, a comparison and a squared difference per weight, computed
  in the normalized domain (s^2 * ||x/s^ - code||^2 per block) in L2-sized chunks;
* matrices are spread over ``torch.get_num_threads()`` worker threads with one intra-op thread each.

Exact mode (``sample_fraction=1``) equals ``||w - fake_quantize(w, c)||^2`` to float rounding
(relative difference < 1e-6) and takes ~72 s for SmolLM2-135M's 210 matrices (106 M weights) on
2 CPU cores; the default sampled mode takes ~28 s (``bench/bench_quant.py``).

**Sampling.** With ``sample_fraction = 1/K < 1`` the weight error is evaluated on a stratified
random sample of 64-weight segments (64 is a multiple of every B0, so a segment holds whole blocks
under every config, and its dequantized scales are the exact full-matrix ones): the segments are
split into runs of K consecutive ones and one per run is drawn (fixed seed) and counted K times.
Matrices whose sample would hold fewer than 256 segments (16 Ki weights) are computed exactly.
Coarse scale codes (b1 <= 4) can round a block's scale far below its absmax, and then a few
clipping blocks hold most of the error (up to half of it in 1% of the blocks for NF8), so per
config the 2% of segments that clip the most, ``max_j (s_j - s^_j)``, are evaluated exactly and
the sampled ones among them are dropped (a Horvitz-Thompson estimator: still unbiased).

Measured against exact mode (7 SmolLM2-shaped matrices, std 0.02, 1 in 10^4 weights x10 as
outliers, seeds 0-2, all 432 configs; ``[1, d_in]`` importance gives the same figures):

=================  ==========  =========  =========  =========  ==============================
sample_fraction    median rel  p95 rel    p99 rel    max rel    Spearman per matrix (min/mean)
=================  ==========  =========  =========  =========  ==============================
0.5                0.43 %      2.3 %      4.5 %      12 %       0.9991 / 0.9996
0.25 (default)     0.65 %      3.9 %      9.0 %      19 %       0.9989 / 0.9994
0.25, no outliers  0.49 %      3.0 %      5.4 %      18 %       0.9974 / 0.9987
=================  ==========  =========  =========  =========  ==============================

The largest relative errors are NF8 with 2-4-bit scale codes, where clipping dominates; the
ranking of configs within a matrix is essentially preserved (configs differing only in b2 have
near-equal errors and are the pairs that swap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from tqdm.auto import tqdm

from coalora.errors import CoaloraError
from coalora.quant.codebook import lut_cells, stacked_code_tables
from coalora.quant.config import (
    ALL_CONFIGS,
    BLOCK_SIZES,
    CODE_BITS,
    FIELD_SIZES,
    GROUP_SIZES,
    SCALE2_FORMATS,
    SCALE_BITS,
)
from coalora.quant.nf import block_absmax, check_weight, double_quantize, normalized_blocks

SEGMENT = 64  # lcm of BLOCK_SIZES: the sampling unit
DEFAULT_SAMPLE_FRACTION = 0.25
_CHUNK_SEGMENTS = 512  # 32 Ki weights: [4, 32 Ki] float32 temporaries fit a 1 MiB L2 (1024 ran 3x slower)
MIN_SAMPLED_SEGMENTS = 256  # smaller samples (under 16 Ki weights) are computed exactly instead
CERTAIN_FRACTION = 0.02  # per config, the most-clipping segments evaluated exactly when sampling


def _sample_segments(n_segments: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stratified sample: segment indices ``[S]`` and their inverse inclusion probabilities ``[S]``."""
    stride = max(1, round(1.0 / fraction))
    if stride == 1:
        return torch.arange(n_segments), torch.ones(n_segments)
    starts = torch.arange(0, n_segments, stride)
    sizes = (n_segments - starts).clamp(max=stride)
    picks = starts + (torch.rand(len(starts), generator=generator, dtype=torch.float64) * sizes).long()
    return picks, sizes.float()


def _importance_flat(imp: Tensor | None, w: Tensor, n_padded: int) -> Tensor | None:
    if imp is None:
        return None
    if not isinstance(imp, Tensor):
        raise CoaloraError(f"importance must be a tensor broadcastable to the weight, got {type(imp).__name__}")
    try:
        full = torch.broadcast_to(imp.float(), w.shape)
    except RuntimeError:
        raise CoaloraError(
            f"importance of shape {list(imp.shape)} does not broadcast to the weight shape {list(w.shape)}"
        ) from None
    flat = full.reshape(-1)
    if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
        raise CoaloraError("importance must be finite and non-negative")
    return torch.cat([flat, flat.new_zeros(n_padded - flat.numel())])


def _block_errors(x: Tensor, scales: Tensor, imp: Tensor | None, block_w: Tensor) -> Tensor:
    """``sum_j block_w[j] * sum_i imp * (x - s^_j code)^2`` over blocks ``x [M, B0]``, per b0: float64 ``[4]``."""
    thresholds, codes, offsets = stacked_code_tables(CODE_BITS)
    y = normalized_blocks(x, scales)
    cells = lut_cells(y.clamp(-1.0, 1.0))
    y = y.view(-1)
    idx = (cells * 2 + offsets).add_(y > thresholds.index_select(1, cells))  # [4, M]
    r = y - codes.index_select(0, idx.view(-1)).view(idx.shape)
    r.mul_(r)
    if imp is not None:
        r.mul_(imp.reshape(-1))
    # ||x - s q||^2 = s^2 ||x/s - q||^2 per block saves a broadcast multiply per weight and b0; blocks
    # with s^ = 0 reconstruct to 0 (y = x there, see _normalized) and cost sum(imp * x^2) instead.
    sq = x * x if imp is None else imp * x * x
    zero = (block_w * (scales == 0)).dot(sq.sum(dim=1))
    return r.view(len(idx), -1, x.shape[1]).sum(dim=2).mv(scales * scales * block_w).double() + float(zero)


def matrix_errors(
    w: Tensor,
    importance: Tensor | None = None,
    *,
    sample_fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Row of :func:`error_table` for one matrix: float64 ``[432]`` in config-id order."""
    check_weight(w)
    if not 0.0 < sample_fraction <= 1.0:
        raise CoaloraError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    n = w.numel()
    flat = w.reshape(-1).float()
    n_padded = -(-n // SEGMENT) * SEGMENT
    if n_padded != n:
        flat = torch.cat([flat, flat.new_zeros(n_padded - n)])
    segments = flat.view(-1, SEGMENT)
    n_segments = segments.shape[0]
    imp = _importance_flat(importance, w, n_padded)
    imp_segments = imp.view(-1, SEGMENT) if imp is not None else None
    absmax = {16: block_absmax(flat, 16)}
    absmax[32] = absmax[16].view(-1, 2).amax(dim=1)
    absmax[64] = absmax[32].view(-1, 2).amax(dim=1)

    if n_segments * sample_fraction < MIN_SAMPLED_SEGMENTS:
        sample_fraction = 1.0  # a sample of a few dozen segments is noisy, and exact is cheap here
    picks, inv_prob = _sample_segments(n_segments, sample_fraction, generator or torch.Generator())
    exact = len(picks) == n_segments
    n_certain = 0 if exact else math.ceil(CERTAIN_FRACTION * n_segments)
    out = torch.zeros(FIELD_SIZES, dtype=torch.float64)  # [b0, b1, b2, B0, B1]: flattens to config ids
    for i_B0, B0 in enumerate(BLOCK_SIZES):  # noqa: N806
        per_segment = SEGMENT // B0
        # Exact dequantized scales for the 36 (b1, b2, B1) variants, and per variant the segments
        # that clip the most (scale rounded far below the absmax): evaluated exactly, since a few
        # of them can hold most of the error of coarse-scale configs.
        variants, sample_w = [], []
        for i_B1, B1 in enumerate(GROUP_SIZES):  # noqa: N806
            a = absmax[B0]
            a = torch.cat([a, a.new_zeros(-a.numel() % B1)])
            for i_b1, b1 in enumerate(SCALE_BITS):
                for i_b2, b2 in enumerate(SCALE2_FORMATS):
                    scales = double_quantize(a, b1, b2, B1, n_real_blocks=-(-n // B0)).scales[: n_padded // B0]
                    certain = torch.zeros(0, dtype=torch.long)
                    keep = inv_prob
                    if n_certain:
                        clip = (absmax[B0] - scales).view(-1, per_segment).amax(dim=1)
                        top = clip.topk(n_certain)
                        certain = top.indices[top.values > 0]
                        in_certain = torch.zeros(n_segments, dtype=torch.bool)
                        in_certain[certain] = True
                        keep = inv_prob * ~in_certain[picks]  # certain segments are counted exactly instead
                    variants.append(((slice(None), i_b1, i_b2, i_B0, i_B1), scales.view(-1, per_segment), certain))
                    sample_w.append(keep)
        acc = torch.zeros(len(variants), len(CODE_BITS), dtype=torch.float64)
        for start in range(0, len(picks), _CHUNK_SEGMENTS):
            # Exact mode reads contiguous views; sampled mode gathers the picked segments once per chunk.
            idx = slice(start, start + _CHUNK_SEGMENTS) if exact else picks[start : start + _CHUNK_SEGMENTS]
            x = segments[idx].reshape(-1, B0)
            im = imp_segments[idx].reshape(-1, B0) if imp is not None else None
            for v, (_, scales, _) in enumerate(variants):
                block_w = sample_w[v][start : start + _CHUNK_SEGMENTS].repeat_interleave(per_segment)
                acc[v] += _block_errors(x, scales[idx].reshape(-1), im, block_w)
        for v, (where, scales, certain) in enumerate(variants):
            if len(certain):
                x = segments[certain].view(-1, B0)
                im = imp_segments[certain].view(-1, B0) if imp is not None else None
                acc[v] += _block_errors(x, scales[certain].view(-1), im, torch.ones(x.shape[0]))
            out[where] = acc[v]
    return out.reshape(-1)


def error_table(
    weights: Sequence[Tensor] | Mapping[str, Tensor],
    importance: Sequence[Tensor | None] | Mapping[str, Tensor] | None = None,
    *,
    sample_fraction: float = DEFAULT_SAMPLE_FRACTION,
    seed: int = 0,
    progress: bool = True,
) -> Tensor:
    """Squared quantization error of every given weight tensor under every config: float64 ``[N, 432]``.

    This is the computation; a model's table under a weighting, cached on disk, is
    :func:`coalora.lqlora.sensitivity.cached_error_table`.

    ``out[i, c.id] = sum(importance_i * (w_i - fake_quantize(w_i, c))**2)``, with importance 1 when
    ``importance`` is None. ``importance`` gives, per matrix, None or a tensor broadcastable to the
    weight (``[1, d_in]`` input-channel second moments, or a full diagonal Fisher); a mapping is
    matched by the names of ``weights``. ``sample_fraction < 1`` estimates the error from a
    stratified sample of 1/round(1/sample_fraction) of the weights (see the module docstring);
    1 computes it exactly. Deterministic for a given ``seed``.
    """
    if isinstance(weights, Mapping):
        names = list(weights)
        mats = [weights[k] for k in names]
        if isinstance(importance, Mapping):
            unknown = [k for k in importance if k not in weights]
            if unknown:
                raise CoaloraError(f"importance given for unknown matrices: {', '.join(unknown[:5])}")
            imps = [importance.get(k) for k in names]
        elif importance is None:
            imps = [None] * len(mats)
        else:
            imps = list(importance)
    else:
        mats = list(weights)
        if isinstance(importance, Mapping):
            raise CoaloraError("importance is keyed by name but the weights are a sequence; pass both as dicts")
        imps = [None] * len(mats) if importance is None else list(importance)
    if len(imps) != len(mats):
        raise CoaloraError(f"got {len(imps)} importance tensors for {len(mats)} weight matrices")
    if not 0.0 < sample_fraction <= 1.0:
        raise CoaloraError(f"sample_fraction must be in (0, 1], got {sample_fraction}")

    def row(i: int) -> Tensor:
        # One intra-op thread per worker: on a busy machine every multi-threaded op of thousands
        # waits for a descheduled OpenMP thread (measured 10-40x slowdowns); whole matrices per
        # worker thread keep both cores busy without barriers (torch releases the GIL in kernels).
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        return matrix_errors(mats[i], imps[i], sample_fraction=sample_fraction, generator=g)

    out = torch.empty(len(mats), len(ALL_CONFIGS), dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max(1, min(threads, len(mats)))) as pool:
            rows = pool.map(row, range(len(mats)))
            for i, r in enumerate(
                tqdm(rows, total=len(mats), desc="error table", unit="matrix", disable=not progress)
            ):
                out[i] = r
    finally:
        torch.set_num_threads(threads)  # the workers' setting leaks into the global default; restore it
    return out
