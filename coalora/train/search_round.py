"""One Pareto search round between training steps (method.md section 5, run inside section 4's loop).

The round scores the current training set with the current adapter on the probe windows (f1, the
probe loss; f2, the average bits), proposes new configurations by EHVI on a GP surrogate
(:func:`coalora.search.round.propose`), scores them the same way, and keeps the segment-wise
Pareto set of the pool (``segments`` slices of ``[budget_lo, budget_hi]``) as the next training
set. If fewer than K configurations survive, the whole pool is kept so a step can still draw K.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coalora.models import Target
from coalora.quant.config import ModelQuantConfig, QuantConfig
from coalora.train.config import TrainConfig


@dataclass
class RoundResult:
    """What a search round changes in the run's state, and its log record."""

    train_set: list[list[int]]
    """Config ids per matrix of the kept configurations (the next training set)."""
    scores: dict[str, float]
    """Probe loss of each kept configuration, by hash."""
    hv_ref: list[float]
    """The hypervolume reference point (the first round's, kept for every later round)."""
    seconds: float
    """Wall time of the round."""
    probe_configs: int
    """Configurations scored on the probe windows (the old pool plus the proposals)."""
    record: dict[str, Any]
    """The round's log record (``"event": "search"``)."""
    message: str
    """One line for the progress log."""


def search_round(cfg: TrainConfig, targets: Sequence[Target], train_set: list[list[int]], step: int,
                 hv_ref: list[float] | None, probe_loss: Callable[[ModelQuantConfig], float],
                 table: np.ndarray | None = None) -> RoundResult:
    """Run one round after ``step`` on the training set ``train_set`` (config ids ``[N]`` each).

    ``probe_loss`` scores a configuration with the current adapter; ``hv_ref`` is the reference
    point of earlier rounds (None at the first: ``(budget_hi + 0.25, 1.1 * worst probe loss)``);
    ``table``: the model's error table ``[N, 432]``, the surrogate's input besides the bits (the
    front's encoding, :mod:`coalora.search.encoding`).
    """
    from coalora.search.pareto import hypervolume_2d, segment_pareto_filter
    from coalora.search.round import SearchSettings, propose

    t0 = time.perf_counter()
    pool = [ModelQuantConfig.from_ids(cfg.model, targets, ids) for ids in train_set]
    scores = [probe_loss(c) for c in pool]
    bits = [c.avg_bits for c in pool]
    rnd = propose([c.index_matrix().numpy() for c in pool], bits, scores, [t.numel for t in targets],
                  SearchSettings(cfg.search_candidates, cfg.search_steps, seed=cfg.seed + step), table=table)
    new = [ModelQuantConfig(cfg.model, tuple(targets),
                            tuple(QuantConfig.from_index(tuple(int(v) for v in row)) for row in m))
           for m in rnd.candidates]
    new_scores = [probe_loss(c) for c in new]
    pool += new
    scores += new_scores
    bits += [c.avg_bits for c in new]
    keep = segment_pareto_filter(bits, scores, cfg.budget_lo, cfg.budget_hi, cfg.segments).tolist()
    if len(keep) < cfg.configs_per_step:
        keep = list(range(len(pool)))  # never starve the sampler
    hv_ref = hv_ref or [cfg.budget_hi + 0.25, 1.1 * max(scores)]
    pts = [(b, s) for b, s in zip(bits, scores)]
    hv = hypervolume_2d([pts[i] for i in keep], hv_ref)
    dt = time.perf_counter() - t0
    first_new = len(pool) - len(new)
    record = {
        "event": "search", "after_step": step, "pool": len(pool), "kept": len(keep),
        "new": [{"bits": round(c.avg_bits, 4), "loss": s, "hash": c.hash, "kept": (first_new + i) in keep}
                for i, (c, s) in enumerate(zip(new, new_scores))],
        "encoding": rnd.encoding, "loo_rmse": rnd.loo_rmse, "ref_point": rnd.ref_point,
        "hypervolume": hv, "hv_ref": hv_ref, "seconds": dt,
    }
    message = (f"search after step {step}: {len(new)} new, kept {len(keep)}/{len(pool)}, "
               f"HV {hv:.4f}, encoding {rnd.encoding} (LOO RMSE {rnd.loo_rmse}) in {dt:.1f} s")
    return RoundResult([list(pool[i].ids) for i in keep], {pool[i].hash: scores[i] for i in keep}, hv_ref, dt,
                       len(pool), record, message)
