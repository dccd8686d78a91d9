"""Where a run starts: its initial training set and, for the LQ-LoRA baseline, its base and LoRA.

* :func:`initial_train_set`: the allocator's solutions at evenly spaced budgets (method.md 4,
  "Initial training configuration set": 50 configurations over 2.25-7.25 bits), or at the
  recipe's explicit budgets (the baselines, method.md 6).
* :func:`lq_start`: LQ-LoRA's decomposition W ~ Q + L1 L2 per matrix (method.md 2.1): the base
  becomes Q = quant_c(W - L1 L2) and the LoRA starts at (A, B) = (L2, L1) / sqrt(s).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from coalora.adapter.model import CoALoRAModel
from coalora.models import Target
from coalora.quant.config import ModelQuantConfig
from coalora.train.config import TrainConfig


def initial_train_set(cfg: TrainConfig, targets: Sequence[Target], table: np.ndarray) -> list[ModelQuantConfig]:
    """The allocator's configuration (``fast`` method, on ``table``, the ``[N, 432]`` ``cfg.weighting``
    error table of the plain model) at each of ``cfg.budgets``, or at ``cfg.initial_budgets`` budgets
    evenly spaced over ``[budget_lo, budget_hi]``; a configuration that two neighbouring budgets share
    is kept once."""
    from coalora.lqlora.allocate import allocate_many
    from coalora.quant.config import CONFIG_BITS

    budgets = list(cfg.budgets) or np.linspace(cfg.budget_lo, cfg.budget_hi, cfg.initial_budgets).tolist()
    allocs = allocate_many(table, [t.numel for t in targets], CONFIG_BITS, budgets, method="fast")
    configs, seen = [], set()
    for a in allocs:
        c = ModelQuantConfig.from_ids(cfg.model, targets, list(a.choice))
        if c.hash not in seen:
            seen.add(c.hash)
            configs.append(c)
    return configs


@torch.no_grad()
def lq_start(coa: CoALoRAModel, targets: Sequence[Target], qc: ModelQuantConfig, rank: int,
             progress: bool = False) -> float:
    """Make ``coa`` LQ-LoRA's starting point at ``qc``; returns the seconds the splits cost.

    Each matrix's original W ``[d_out, d_in]`` is replaced by W - L1 L2 in the applier (which then
    quantizes it to exactly Q), and its LoRA is set so that s B A = L1 L2 (L1 ``[d_out, rank]``, L2
    ``[rank, d_in]``). The split is deterministic in (weights, configuration, rank) and cached on
    disk (``$COALORA_HOME/lq``) with the seconds it took, so the cost is charged whether this run
    computed it or read it.
    """
    from coalora.lqlora.split import cached_split

    splits, seconds = cached_split(coa.applier.originals, targets, qc, rank, progress=progress)
    for t in targets:
        w = coa.applier.originals[t.name]
        l1, l2 = splits[t.name]
        coa.applier.set_original(t.name, (w.float() - l1 @ l2).to(w.dtype))
        coa.layers[t.name].load_split_(l1, l2)
    return seconds
