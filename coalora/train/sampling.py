"""What one training step trains on (method.md section 4, "Per-step sampling of configurations").

Both choices are functions of ``(seed, step)`` alone, so a resumed run and ``P`` data-parallel
processes draw exactly what one uninterrupted process draws:

* :func:`schedule_rows`: the step's mini-batch, a slice of a fresh permutation of the training
  windows per epoch;
* :func:`sample_configs`: the step's K distinct configurations from the training set, uniform (the
  official code) or in proportion to :func:`excess_weights` (more steps where quantization hurts),
  optionally mixed with a uniform share (:func:`with_uniform_share`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

EXCESS_FLOOR = 1e-3
"""Smallest excess loss a configuration is weighted by (a configuration at the unquantized loss still gets drawn)."""


def schedule_rows(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """Global window indices ``[batch]`` of ``step`` among ``n`` windows: one permutation per epoch."""
    per_epoch = n // batch
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[j * batch : (j + 1) * batch]


def sample_configs(seed: int, step: int, size: int, k: int, weights: Sequence[float] | None = None) -> list[int]:
    """Indices of ``k`` distinct configurations among ``size`` for ``step``: uniform, or proportional
    to ``weights`` ``[size]`` (only those with a positive weight can be drawn)."""
    rng = np.random.default_rng([seed, step])
    if weights is None:
        return rng.choice(size, size=min(k, size), replace=False).tolist()
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    return rng.choice(size, size=min(k, int((p > 0).sum())), replace=False, p=p).tolist()


def excess_weights(scores: Sequence[float | None], floor: float, power: float) -> list[float]:
    """``excess`` sampling weights ``[len(scores)]``: ``max(probe loss - floor, 1e-3) ** power``.

    ``scores`` are the training configurations' probe losses from the latest search round (None:
    not scored yet, weighted by the mean of the known weights, or 1 when none is known); ``floor``
    is the unquantized model's probe loss.
    """
    known = [max(s - floor, EXCESS_FLOOR) ** power for s in scores if s is not None]
    fill = float(np.mean(known)) if known else 1.0
    return [max(s - floor, EXCESS_FLOOR) ** power if s is not None else fill for s in scores]


def with_uniform_share(weights: Sequence[float], share: float) -> list[float]:
    """``weights`` ``[N]`` as probabilities mixed with the uniform distribution:
    ``(1 - share) * w / sum(w) + share / N``. Excess weights alone starve the configurations whose probe
    loss the adapter has brought down to the unquantized model's (their weight falls to the floor);
    a uniform share keeps every configuration in the draws. ``share`` 0 returns ``weights`` unchanged."""
    if share <= 0:
        return list(weights)
    total = float(sum(weights))
    return [(1 - share) * w / total + share / len(weights) for w in weights]
