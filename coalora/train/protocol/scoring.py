"""Scoring an adapter at the protocol's evaluation configurations and on its validation split (method.md 6).

Every point is scored with merged LoRA weights (one dense weight per layer; no autograd) on the
protocol's held-out windows ``[eval_windows, eval_seqlen]``: perplexity, and KL to the unquantized
model from the cached reference, with the per-window sums the report's intervals resample. Each
point is labelled against its own run's training hashes (:func:`kind_of`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from coalora.train.protocol.prepare import Context
from coalora.train.protocol.units import Unit

if TYPE_CHECKING:
    import torch

    from coalora.adapter.model import CoALoRAModel
    from coalora.quant.config import ModelQuantConfig

SCORE_BATCH = 4
"""Windows per forward when scoring."""


def bind(coa: CoALoRAModel, qc: ModelQuantConfig, theta: bool) -> None:
    """Put ``coa`` in eval mode with merged weights at ``qc``: theta's U per layer (``theta``), or U = I
    (the plain LoRA of the baselines and of theta-off)."""
    import torch

    coa.eval()
    coa.merge()
    with torch.no_grad():
        coa.set_config(qc, theta=theta)


def kind_of(entry: dict[str, Any], trained: set[str], per_config: bool = False) -> str:
    """A point's label against its run's training set: ``own``, ``seen``, ``ood`` or ``unseen``."""
    if per_config:
        return "own"
    if entry["hash"] in trained:
        return "seen"
    return "ood" if entry["role"] == "ood" else "unseen"


def score_point(ctx: Context, unit: Unit, coa: CoALoRAModel, qc: ModelQuantConfig, entry: dict[str, Any],
                trained: set[str], per_config: bool = False, theta: bool = False) -> dict[str, Any]:
    """``unit``'s adapter ``coa`` scored at ``qc`` (the evaluation entry ``entry``): one point row."""
    from coalora.evaluation.perplexity import perplexity

    ew, ref = ctx.windows, ctx.reference
    bind(coa, qc, theta)
    r = perplexity(coa.model, ew.windows, batch_size=SCORE_BATCH, progress=False, reference=ref, spec=ew.spec,
                   dataset=ew.dataset)
    kind = kind_of(entry, trained, per_config)
    ctx.log(f"{unit.method:17s} s{unit.seed} {kind:6s} {qc.avg_bits:.3f} bits: ppl {r.ppl:.3f} kld {r.kld:.4f}")
    return {"method": unit.method, "seed": unit.seed, "kind": kind, "role": entry["role"], "budget": entry["budget"],
            "avg_bits": qc.avg_bits, "config_hash": qc.hash, "ppl": r.ppl, "nll": r.nll, "kld": r.kld,
            "tokens": r.tokens, "windows": r.windows, "eval_spec": r.spec, "dataset": r.dataset,
            "window_nll": list(r.window_nll), "window_kld": list(r.window_kld), "scale": unit.scale}


def score_none(ctx: Context) -> list[dict[str, Any]]:
    """The quantized model alone on every evaluation configuration (deterministic: one seed)."""
    from coalora.adapter.model import AdapterConfig, CoALoRAModel
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ModelQuantConfig

    model, _ = load_model(ctx.cfg.model)
    targets = find_targets(model)
    coa = CoALoRAModel(model, ctx.cfg.model, targets, AdapterConfig(rank=ctx.cfg.rank, init="peft"))
    unit = Unit("none", "none", "none")
    points = []
    with coa.disabled():
        for e in ctx.eval_configs:
            qc = ModelQuantConfig.from_ids(ctx.cfg.model, targets, e["ids"])
            points.append(score_point(ctx, unit, coa, qc, e, set()))
    return points


def validation_nll(coa: CoALoRAModel, windows: torch.Tensor, configs: list[ModelQuantConfig], theta: bool) -> float:
    """Mean token NLL of ``coa`` over the validation windows ``[n, seqlen]``, averaged over ``configs``."""
    from coalora.evaluation.perplexity import perplexity

    vals = []
    for qc in configs:
        bind(coa, qc, theta)
        vals.append(perplexity(coa.model, windows, batch_size=SCORE_BATCH, progress=False).nll)
    coa.unmerge()
    return float(np.mean(vals))
