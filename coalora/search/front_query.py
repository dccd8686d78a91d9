"""What a front query asks for and what it returns (method.md 5, the app's view of section 6's results).

A front is fitted on the stored evaluations of one (model, method, eval set, seqlen, windows, adapter,
eval spec, metric) (:class:`FrontQuery`); its second objective is perplexity (modelled as log ppl = mean
NLL), KL divergence to the unquantized model (log KL) or a stored lm-eval task's error rate (log of
``1 - acc``), all lower-is-better and all modelled in log space. Hypervolumes are taken in
(average bits, log metric) up to one recorded reference point per metric.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from coalora.errors import CoaloraError, short
from coalora.evaluation.spec import DEFAULT_SPEC
from coalora.quant.config import MAX_BITS, MIN_BITS
from coalora.search.encoding import ENCODING

HV_BITS_REF = 8.75
"""Reference point of every front hypervolume: (8.75 bits, ppl 1000) in (avg bits, log ppl)."""
HV_PPL_REF = 1000.0
HV_KLD_REF = 5.0
"""Reference of a KL front's hypervolume: (8.75 bits, 5 nats per token) in (avg bits, log KL). At
5 nats the quantized model's next-token distribution has little left of the unquantized one's."""
KLD_FLOOR = 1e-5
"""KL values below this (nats per token) are modelled, and shown, as this. The cached reference's
uint16 rounding (:mod:`coalora.evaluation.reference`: at most ~3e-4 nats per vocabulary entry, of either
sign) leaves a mean per-token KL uncertain by roughly 1e-5 over a few thousand tokens, so smaller
values (and rounding's small negative ones) are noise; without a floor their logs would span the
fit. Real SmolLM2 configurations measure far above it (the bare quantized model at the 7.25-bit
allocator configuration: 0.017 nats; data/seed)."""
METRICS = ("ppl", "kld")
"""What a front's second objective is: perplexity (modelled as log ppl = mean NLL) or KL (log KL)."""
TASK_PREFIX = "task:"
"""A front metric ``task:<lm-eval task>/<metric>`` (e.g. ``task:shakespeare_nextline/acc``) models a
stored lm-eval accuracy (:mod:`coalora.evaluation.tasks`) as its error rate ``1 - acc`` in log space (floored
at :data:`TASK_ERR_FLOOR`), so that, like perplexity, lower is better; the points' values are that
error rate. Rows of one document limit and task version are fitted together (the largest such
group of the query's model, method and adapter)."""
TASK_ERR_FLOOR = 1e-3
HV_TASK_REF = 1.0
"""Reference of a task front's hypervolume: error rate 1 (every answer wrong)."""
MAX_LOG_PPL = 100.0
"""Shown perplexities are capped at exp(100) ~ 3e43: a GP fitted on a few points can predict a log
ppl (or a band edge) beyond what a float's exp holds, and any such value just means "useless"."""


@dataclass(frozen=True)
class FrontSettings:
    budget_lo: float = 2.05
    budget_hi: float = 8.6
    grid: int = 132
    """Allocator budgets spread over [budget_lo, budget_hi]."""
    neighbours: int = 22
    """Random neighbours per allocator solution (132 x 23 = 3,036 candidates)."""
    moves: int = 3
    """Matrices changed per neighbour."""
    proposals: int = 8
    """EHVI proposals returned (0 skips the acquisition)."""
    refit_fraction: float = 0.1
    """Refit hyperparameters only when more than this fraction of the points is new."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (MIN_BITS <= self.budget_lo < self.budget_hi <= MAX_BITS):
            raise CoaloraError(f"front budget range must lie in [{MIN_BITS:.3f}, {MAX_BITS:.3f}] bits")
        if self.grid < 2 or self.neighbours < 0 or self.moves < 1 or self.proposals < 0:
            raise CoaloraError("front grid must be >= 2; neighbours and proposals >= 0; moves >= 1")


@dataclass(frozen=True)
class FrontQuery:
    """Which stored evaluations a front is fitted on (one perplexity convention)."""

    model: str
    method: str = "coalora"
    eval_set: str | None = None
    """None: the eval set with the most stored evaluations for this model and method."""
    seqlen: int = 256
    windows: int = 8
    adapter_id: str | None = None
    metric: str = "ppl"
    """``ppl`` or ``kld`` (:data:`METRICS`), or ``task:<task>/<metric>``: the front's second objective."""
    eval_spec: str = DEFAULT_SPEC
    """Only evaluations of this spec are fitted."""

    def __post_init__(self) -> None:
        check_metric(self.metric)


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS` or ``task:<task>/<metric>``, else one clear error."""
    if metric not in METRICS and task_metric(metric) is None:
        raise CoaloraError(f"unknown front metric {short(metric)}; use ppl (perplexity), kld (KL divergence to the "
                           "unquantized model) or task:<lm-eval task>/<metric>, e.g. task:shakespeare_nextline/acc")
    return metric


def task_metric(metric: str) -> tuple[str, str] | None:
    """``(task, metric)`` of a ``task:<task>/<metric>`` front metric, else None."""
    if not isinstance(metric, str) or not metric.startswith(TASK_PREFIX):
        return None
    task, _, name = metric[len(TASK_PREFIX):].partition("/")
    ok = task and name and all(ch.isalnum() or ch in "_-." for ch in task + name)
    return (task, name) if ok else None


def log_ref(metric: str) -> float:
    """log of the hypervolume reference of ``metric``'s axis."""
    if task_metric(metric) is not None:
        return math.log(HV_TASK_REF)
    return math.log(HV_PPL_REF if metric == "ppl" else HV_KLD_REF)


def outcome(ev, metric: str) -> float | None:
    """The modelled value of one stored evaluation: its mean NLL (log ppl), or log of its KL
    floored at :data:`KLD_FLOOR`; None when it has none (no KL measured, or not finite)."""
    if metric == "kld":
        return None if ev.kld is None or not math.isfinite(ev.kld) else math.log(max(ev.kld, KLD_FLOOR))
    return ev.nll if math.isfinite(ev.nll) else None


def shown(log_value: float) -> float:
    """exp of a (predicted) log metric, capped at exp(MAX_LOG_PPL) instead of overflowing."""
    return math.exp(min(float(log_value), MAX_LOG_PPL)) if math.isfinite(log_value) else float(log_value)


@dataclass
class FrontPoint:
    """One configuration on a front. The ``ppl`` fields hold the front's metric: perplexity, or KL
    in nats per token for a ``kld`` front (:attr:`FrontResult.metric`)."""

    config_hash: str
    avg_bits: float
    ppl: float | None = None
    """Measured value (perplexity or KL), when stored."""
    pred_ppl: float | None = None
    """exp of the GP's posterior mean of log ppl (log KL)."""
    pred_lo: float | None = None
    """Lower edge of the calibrated predictive band (:func:`coalora.search.gp.predictive_band`): a
    new evaluation of this configuration falls between ``pred_lo`` and ``pred_hi`` ~95% of the time."""
    pred_hi: float | None = None
    source: str = "measured"
    """``measured``, ``allocator``, ``neighbour``, ``ehvi`` or ``candidate``."""


@dataclass
class FrontResult:
    query: dict[str, Any]
    measured: list[FrontPoint]
    front: list[FrontPoint]
    """Predicted non-dominated set over the candidates, by increasing bits."""
    hypervolume: dict[str, float]
    hv_reference: dict[str, float]
    best: FrontPoint | None = None
    budget: float | None = None
    proposals: list[FrontPoint] = field(default_factory=list)
    n_candidates: int = 0
    encoding: str = ENCODING
    refit: str = ""
    """``full``, ``warm``, ``condition`` or ``cached``: what the last fit did."""
    seconds: float = 0.0
    metric: str = "ppl"
    """What the points' ``ppl`` fields hold: ``ppl`` or ``kld`` (nats per token)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
