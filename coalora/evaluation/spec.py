"""Evaluation specs: which held-out windows a perplexity / KL number is measured on.

A spec turns (corpus, tokenizer, seqlen, window count) into a fixed set of token windows and
records where each one starts, so that every stored number names exactly the text it read.

``strided-v1`` (the default) treats each document of the eval split as a stratum (for Shakespeare,
the four held-out plays). Each document is tokenised on its own and cut into its own grid of
non-overlapping ``seqlen``-token windows, so no window straddles two plays. ``n`` windows are
shared out evenly between the documents (round robin, a document with fewer grid windows than its
share gives the rest to the others) and, inside a document, taken at evenly spaced grid positions
``floor((j + 1/2) * grid / count)``: the quick modes read the beginning, middle and end of every
play rather than its title page. ``n = None`` (full mode) scores every grid window of every
document.

``prefix-v0`` is the old rule, the first ``n`` windows of the joined text (for Shakespeare, the
opening of Hamlet); it is kept only to read old results and is never the default. Results under
different specs are never compared: the store and the comparison key every number by its spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    import torch

    from coalora.data import Corpus
    from coalora.models import Tokenizer

DEFAULT_SPEC = "strided-v1"
SPECS = ("strided-v1", "prefix-v0")


@dataclass(frozen=True)
class EvalWindows:
    """The windows a spec selects, with where each came from."""

    spec: str
    windows: torch.Tensor
    """``[n, seqlen]`` int64 token ids."""
    positions: tuple[tuple[str, int], ...]
    """``(document, first token offset within it)`` per window, in row order."""
    dataset: str
    """The corpus id, e.g. ``shakespeare:eval@3f2a9c1b``."""

    @property
    def n(self) -> int:
        return int(self.windows.shape[0])

    @property
    def seqlen(self) -> int:
        return int(self.windows.shape[1])

    @property
    def documents(self) -> tuple[str, ...]:
        """Documents that contribute at least one window, in corpus order."""
        return tuple(dict.fromkeys(d for d, _ in self.positions))

    @property
    def key(self) -> str:
        """Content hash of the windows (spec, corpus, tokenizer, seqlen, count all fold into it)."""
        import numpy as np

        h = hashlib.sha256(self.spec.encode())
        h.update(np.ascontiguousarray(self.windows.numpy().astype(np.int32)).tobytes())
        return h.hexdigest()[:20]


def share(n: int, capacity: list[int]) -> list[int]:
    """Split ``n`` items evenly over strata with the given capacities (round robin, capped).

    For ``n`` below the number of strata the chosen strata are spread evenly over the list, the first included.
    Returns counts ``c`` with ``sum(c) == min(n, sum(capacity))`` and ``c[i] <= capacity[i]``.
    """
    n = min(n, sum(capacity))
    counts = [0] * len(capacity)
    open_ = [i for i, c in enumerate(capacity) if c > 0]
    while n > 0 and open_:
        take = open_ if n >= len(open_) else [open_[j * len(open_) // n] for j in range(n)]
        for i in take:
            counts[i] += 1
        n -= len(take)
        open_ = [i for i in open_ if counts[i] < capacity[i]]
    return counts


def grid_positions(grid: int, count: int) -> list[int]:
    """``count`` evenly spaced indices into a grid of ``grid`` windows (all of them when count >= grid)."""
    if count >= grid:
        return list(range(grid))
    return [int((j + 0.5) * grid / count) for j in range(count)]


def select(corpus: Corpus, tokenizer: Tokenizer, seqlen: int, n: int | None, spec: str = DEFAULT_SPEC) -> EvalWindows:
    """The windows ``spec`` selects from ``corpus`` (``n=None``: every window, the full mode)."""
    import torch

    from coalora import data

    if spec not in SPECS:
        raise CoaloraError(f"unknown eval spec {spec!r}; use one of {', '.join(SPECS)}")
    if seqlen < 2:
        raise CoaloraError(f"seqlen must be at least 2 tokens, got {seqlen}")
    if n is not None and n < 1:
        raise CoaloraError(f"the number of windows must be at least 1, got {n}")
    if spec == "prefix-v0":
        w = data.windows(data.tokenize(tokenizer, corpus), seqlen, n)
        return EvalWindows(spec, w, tuple(("<joined>", i * seqlen) for i in range(len(w))), corpus.id)
    docs = [(name, data.tokenize(tokenizer, corpus.subset(name))) for name, _ in corpus.documents]
    grids = [ids.numel() // seqlen for _, ids in docs]
    if sum(grids) == 0:
        raise CoaloraError(f"no document of {corpus.id} has a full window of {seqlen} tokens; use a shorter seqlen")
    counts = grids if n is None else share(n, grids)
    rows, positions = [], []
    for (name, ids), grid, count in zip(docs, grids, counts):
        for g in grid_positions(grid, count) if count else []:
            rows.append(ids[g * seqlen : (g + 1) * seqlen])
            positions.append((name, g * seqlen))
    return EvalWindows(spec, torch.stack(rows), tuple(positions), corpus.id)
