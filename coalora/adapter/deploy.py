"""What a deployment of one configuration holds: the matrices to quantize and the plain LoRA beside them
(method.md sections 2.1 and 3, spec S6).

With the ``quant`` base the model computes ``Q_c(W) + s B U A`` (``s = alpha / r``): the deployment
quantizes ``W`` and ships the LoRA ``(U A, B)``. With the ``lq`` base it computes
``Q_c(W - L1 L2) + L1 L2 + s B U A``: the deployment quantizes ``W - L1 L2`` and ships one LoRA of rank
``r + lq_rank`` that holds both low-rank terms,

    A'' = [U A ; L2 / s]  [r + lq_rank, d_in],   B'' = [B, L1]  [d_out, r + lq_rank],

with ``alpha'' = s (r + lq_rank)`` so that ``(alpha'' / (r + lq_rank)) B'' A'' = s B U A + L1 L2``: every
runtime that loads a quantized model plus a PEFT LoRA then computes what coalora measured. The split
is the one :class:`~coalora.adapter.apply.BaseSpec` computes (seeded, so the same as in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coalora.adapter.model import CoALoRAModel
from coalora.quant.config import ModelQuantConfig

__all__ = ["Deployable", "deployable"]


@dataclass(frozen=True)
class Deployable:
    """One configuration's deployment: ``weights`` quantized under the configuration, plus ``lora``."""

    weights: dict[str, torch.Tensor]
    """``{module: [d_out, d_in]}`` float32: what each target's quantized part quantizes (``W``, or
    ``W - L1 L2`` with the ``lq`` base)."""
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """``{module: (A [rank, d_in], B [d_out, rank])}``, scaled by ``alpha / rank``."""
    rank: int
    alpha: float
    lq_rank: int
    """Rank of the ``lq`` base's term folded into ``lora`` (0 with the ``quant`` base)."""


@torch.no_grad()
def deployable(coa: CoALoRAModel, config: ModelQuantConfig) -> Deployable:
    """``config``'s deployment of ``coa``'s generated adapter (the ``lq`` base's splits are computed
    here: about 9 s per SmolLM2 configuration on one thread)."""
    from coalora.lqlora.split import fast_split

    a = coa.adapter_config
    base = a.base_spec
    lora = coa.lora_for(config)
    originals = coa.applier.originals
    if base.kind == "quant":
        weights = {t.name: originals[t.name].float() for t in config.targets}
        return Deployable(weights, lora, a.rank, a.alpha, 0)
    s = a.alpha / a.rank
    weights, folded = {}, {}
    for t, c in zip(config.targets, config.configs):
        w = originals[t.name].float()
        split = fast_split(w, c, base.lq_rank, base.lq_iters)
        weights[t.name] = w - split.l1 @ split.l2
        ua, b = lora[t.name]
        folded[t.name] = (torch.cat([ua.float(), split.l2 / s]), torch.cat([b.float(), split.l1], dim=1))
    rank = a.rank + base.lq_rank
    return Deployable(weights, folded, rank, s * rank, base.lq_rank)
