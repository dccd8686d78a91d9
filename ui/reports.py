"""The page's read-only reports: the model summary (Explore tab), the front searches' hypervolume per
round (Search history tab) and the protocol comparison of methods (Methods tab).

They show what is already stored or committed and compute nothing new: the comparison of methods
is the protocol's (``coalora compare``: equal compute, several seeds, 95% intervals, method
section 6), not something the app measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coalora.errors import CoaloraError
from coalora.search.front import HV_BITS_REF
from coalora.search.pareto import HV_DEFINITION, normalised_hv
from ui import figures, state
from ui.messages import log, md_code, user_errors

NO_COMPARISON = ("The protocol comparison (equal compute, several seeds, perplexity and KL with 95% intervals) "
                 "has not been run yet. Run it with `coalora compare --out data/results/protocol`.")


@user_errors
def model_summary(model: str) -> str:
    """The model's parameters, quantizable matrices and blocks, its adapter and eval set, in one line."""
    ex = state.MODELS.get(model)
    n = sum(p.numel() for p in ex.model.parameters())
    q = sum(t.numel for t in ex.targets)
    blocks = max(t.block for t in ex.targets) + 1
    adapter = (f"trained CoA-LoRA adapter `{ex.adapter_id}` ({ex.adapter_path.name})" if ex.coa is not None
               else "no trained CoA-LoRA adapter (quantization-only front)")
    return (f"**{model}**: {n / 1e6:.1f} M parameters, {len(ex.targets)} quantizable matrices "
            f"({q / 1e6:.1f} M parameters) in {blocks} blocks; {adapter}; eval set {md_code(ex.eval_set)}.")


@user_errors
def hv_history(model: str) -> Any:
    """The Search history tab: the front searches' (``coalora search``) measured-front hypervolume
    per round, in the app's one normalised definition (the training search's probe-loss volumes
    live in another space and are not shown)."""
    ex = state.MODELS.get(model)
    rounds = [r for r in ex.store.search_rounds(model=model) if str(r["run"]).startswith("front-search:")]
    return figures.hv_history_figure(rounds, HV_DEFINITION["ppl"], lambda a: normalised_hv(a, HV_BITS_REF, "ppl"))


def protocol_report() -> Any:
    """The module :mod:`coalora.train.protocol_report`, or None where this installation lacks it."""
    try:
        from coalora.train import protocol_report as report
    except ImportError:
        return None
    return report


def comparison() -> tuple[str, Any]:
    """The Methods tab: (the protocol comparison's summary markdown, its front image path or None)."""
    report = protocol_report()
    if report is None:
        return NO_COMPARISON, None
    try:
        res = report.load(directory=None)
    except (CoaloraError, OSError, ValueError, KeyError) as e:
        log.exception("reading the protocol comparison failed")
        return f"The protocol comparison's results could not be read ({type(e).__name__}: {e}).", None
    if res is None:
        return NO_COMPARISON, None
    png = res.get("front_png")
    return res["markdown"], (str(png) if png is not None and Path(png).is_file() else None)
