"""Plotly figures of the explorer: the front (perplexity or KL divergence against bits), the
per-layer bits heatmap and the search's hypervolume history. Pure functions of plain values (no
model, no store). The method comparison is the protocol report's own image (Methods tab).

Every clickable marker carries its configuration hash in ``customdata``, its tooltip in ``text``
and its kind in ``meta``; the page's click bridge (:mod:`ui.bridge`) finds the marker under the
pointer itself (plotly's own hover is off: it picked the nearest point of the dense predicted
front over a measured marker) and hands its hash to the ``select`` event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

METHODS: dict[str, tuple[str, str]] = {
    "coalora": ("CoA-LoRA", "#1f77b4"),
    "qlora": ("QLoRA", "#ff7f0e"),
    "lqlora": ("LQ-LoRA", "#2ca02c"),
    "shared": ("Shared-LoRA", "#9467bd"),
    "none": ("no adapter", "#7f7f7f"),
}
"""Method key -> (label, colour), one colour per method across every figure."""

_BAND = {"coalora": "rgba(31,119,180,0.15)", "none": "rgba(127,127,127,0.15)"}

KINDS = ("measured", "best", "selected", "pinned", "proposal", "predicted")
"""Clickable marker kinds (each marker trace's ``meta.kind``). Where markers overlap, the page's
click bridge picks by this order (measured first) before distance (:mod:`ui.bridge`)."""
FOCUS_BITS = 3.0
"""The default y range covers the points at >= this many bits, where the methods differ; the steep
low-bit tail is one "full range" click (or a zoom out) away."""


def method_label(method: str) -> str:
    """The method's name in the page (its key itself for a method the figures do not know)."""
    return METHODS.get(method, (method, ""))[0]


METRIC_AXES = {"ppl": "perplexity", "kld": "KL to unquantized (nats/token)"}
"""The front's y-axis title per metric (:data:`coalora.search.front.METRICS`); short, so it fits. A
``task:<task>/<metric>`` front's title is :func:`metric_axis`'s."""


def is_task(metric: str) -> bool:
    """Whether ``metric`` is an lm-eval task's front metric (``task:<task>/<metric>``: its error rate)."""
    return metric.startswith("task:")


def metric_axis(metric: str) -> str:
    """The y-axis title of a front of ``metric``."""
    if is_task(metric):
        task, _, name = metric[5:].partition("/")
        return f"{task} error rate (1 - {name})"
    return METRIC_AXES.get(metric, metric)
X_TITLES = {"bits": "average bits per weight (incl. scales)", "mb": "model size (MB)"}


def metric_name(metric: str) -> str:
    """Short name of a front metric in text: ``ppl``, ``KL`` or ``error rate`` (a task's 1 - accuracy)."""
    return "error rate" if is_task(metric) else "ppl" if metric == "ppl" else "KL"


def metric_format(metric: str) -> str:
    """Format spec of a metric's values: perplexities to 2 decimals, KL (nats, often < 0.1) to 4,
    error rates to 3."""
    return ".3f" if is_task(metric) else ".2f" if metric == "ppl" else ".4f"


def _fmt(v: float | None, f: str = ".2f") -> str:
    return "-" if v is None else f"{v:{f}}"


@dataclass(frozen=True)
class Sizes:
    """Model size in MB as an affine function of average bits: the quantized matrices packed at
    ``bits`` per weight plus every other parameter in 16-bit, ``mb = per_bit * bits + offset``."""

    per_bit: float = 0.0
    offset: float = 0.0

    def mb(self, bits: float) -> float:
        return self.per_bit * bits + self.offset


Prior = tuple[float, float, float, str]
"""A prediction kept next to a measurement: (mean, -2 sigma, +2 sigma, how it was made)."""


def tooltip(p: Any, kind: str, method: str, metric: str, sizes: Sizes, prior: Prior | None = None) -> str:
    """The hover text of one marker: hash, what it is, bits and MB, predicted and measured values.

    For a measured point ``prior`` is the prediction made without its measurement (before it, or
    held out), so the residual is visible; plain text lines (the page shows them as text)."""
    f, name = metric_format(metric), metric_name(metric)
    lines = [f"{p.config_hash}  ({method_label(method)}, {kind})",
             f"{p.avg_bits:.3f} bits, {sizes.mb(p.avg_bits):.1f} MB"]
    if prior is not None:
        lines.append(f"predicted {name} {prior[0]:{f}} [{prior[1]:{f}}, {prior[2]:{f}}] ({prior[3]})")
    elif p.pred_ppl is not None and p.ppl is None:
        lines.append(f"predicted {name} {p.pred_ppl:{f}} [{_fmt(p.pred_lo, f)}, {_fmt(p.pred_hi, f)}]")
    lines.append(f"measured {name} {p.ppl:{f}}" if p.ppl is not None else "not measured")
    return "\n".join(lines)


def _y(p) -> float | None:
    return p.ppl if p.ppl is not None else p.pred_ppl


def _markers(fig: go.Figure, pts: list, kind: str, method: str, metric: str, sizes: Sizes, priors: dict,
             **style: Any) -> None:
    """One marker trace of ``kind``: per point its hash (``customdata``) and tooltip (``text``)."""
    if not pts:
        return
    fig.add_trace(go.Scatter(x=[p.avg_bits for p in pts], y=[_y(p) for p in pts], customdata=[p.config_hash for p in pts],
                             text=[tooltip(p, kind, method, metric, sizes, priors.get(p.config_hash)) for p in pts],
                             hoverinfo="none", meta={"kind": kind, "method": method}, **style))


def _ranges(values: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Default ("focus": points at >= FOCUS_BITS) and full y ranges, log (decades) and linear."""
    out: dict[str, list[float]] = {}
    for name, lo_bits in (("focus", FOCUS_BITS), ("full", -math.inf)):
        ys = [y for x, y in values if x >= lo_bits and y is not None and math.isfinite(y) and y > 0]
        if not ys and name == "focus":
            ys = [y for _, y in values if y is not None and math.isfinite(y) and y > 0]
        lo, hi = (min(ys), max(ys)) if ys else (1.0, 10.0)
        pad = math.log10(hi / lo) * 0.06 + 0.01
        out[f"{name}_log"] = [math.log10(lo) - pad, math.log10(hi) + pad]
        span = (hi - lo) * 0.06 + 1e-6 * max(abs(hi), 1.0)
        out[f"{name}_lin"] = [max(lo - span, 0.0), hi + span]
    return out


def front_figure(fronts: dict[str, Any], budget: float | None = None, best: Any | None = None,
                 selected: tuple[str, float, float] | None = None, convention: str = "",
                 metric: str = "ppl", sizes: Sizes | None = None, pinned: tuple[str, float, float] | None = None,
                 priors: dict[str, dict[str, Prior]] | None = None, best_method: str = "coalora") -> go.Figure:
    """The bits-vs-perplexity (or bits-vs-KL) front.

    ``fronts``: method -> :class:`coalora.search.front.FrontResult` of ``metric`` (measured points,
    predicted front with its +-2 sigma band, EHVI proposals); ``best``: the best predicted point
    within ``budget`` (of ``best_method``); ``selected`` / ``pinned``: (hash, bits, value on the y
    axis) of the selected and the pinned configuration, ringed; ``priors``: method -> hash -> the
    prediction kept for a measured point (:data:`Prior`). Traces are drawn predicted first,
    measured on top; every marker is clickable through the page's bridge, which reads
    ``layout.meta`` for the default ranges and the MB axis (:mod:`ui.bridge`).
    """
    sizes, priors = sizes or Sizes(), priors or {}
    fig = go.Figure()
    values: list[tuple[float, float]] = []
    for method, res in fronts.items():
        label, colour = METHODS.get(method, (method, "#333"))
        pts = [p for p in res.front if p.pred_lo is not None]
        values += [(p.avg_bits, _y(p)) for p in pts] + [(p.avg_bits, p.ppl) for p in res.measured]
        if pts:
            xs = [p.avg_bits for p in pts]
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[p.pred_hi for p in pts] + [p.pred_lo for p in pts][::-1],
                                     fill="toself", fillcolor=_BAND.get(method, "rgba(0,0,0,0.1)"),
                                     line={"width": 0}, hoverinfo="skip", name=f"{label} +-2 sigma",
                                     legendgroup=method, showlegend=False))
            _markers(fig, pts, "predicted", method, metric, sizes, priors.get(method, {}), mode="lines+markers",
                     line={"color": colour, "width": 2, "shape": "hv"}, marker={"size": 5, "color": colour, "opacity": 0.6},
                     name=f"{label} predicted", legendgroup=method)
        _markers(fig, res.proposals, "proposal", method, metric, sizes, {}, mode="markers", visible="legendonly",
                 marker={"size": 8, "symbol": "diamond-open", "color": colour}, name=f"{label} EHVI",
                 legendgroup=method)
        _markers(fig, res.measured, "measured", method, metric, sizes, priors.get(method, {}), mode="markers",
                 marker={"size": 9, "color": colour, "line": {"width": 1, "color": "white"}},
                 name=f"{label} measured", legendgroup=method)
    if budget is not None:
        fig.add_vline(x=budget, line={"dash": "dash", "color": "#d62728"},
                      annotation_text=f"budget {budget:.2f}", annotation_position="top")
    if best is not None:
        _markers(fig, [best], "best", best_method, metric, sizes, {}, mode="markers", name="best within budget",
                 marker={"size": 16, "symbol": "star", "color": "#d62728"})
    for ring, kind, colour in ((pinned, "pinned", "#9467bd"), (selected, "selected", "black")):
        if ring is not None:
            h, x, y = ring
            fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", customdata=[h], hoverinfo="none",
                                     text=[f"{h}  ({kind})\n{x:.3f} bits, {sizes.mb(x):.1f} MB"], name=kind,
                                     meta={"kind": kind}, marker={"size": 20, "symbol": "circle-open", "color": colour,
                                                                  "line": {"width": 3}}))
    r = _ranges(values)
    if not values:
        fig.add_annotation(text="nothing measured under this convention yet, so no front to show:<br>select the best "
                                "within budget (the allocator's pick) and run Quick eval; 3 evaluations make a GP",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(
        height=460, margin={"l": 64, "r": 16, "t": 34, "b": 44}, hovermode=False, clickmode="none", dragmode="zoom",
        title={"text": convention, "font": {"size": 11}, "x": 0.01, "y": 0.99},
        xaxis_title=X_TITLES["bits"], yaxis_title=metric_axis(metric),
        legend={"orientation": "h", "y": -0.16, "yanchor": "top", "font": {"size": 10}, "itemwidth": 30},
        template="plotly_white",
        meta={"coalora": 1, **r, "mb": [sizes.per_bit, sizes.offset], "x_titles": X_TITLES},
    )
    fig.update_yaxes(type="log", range=r["focus_log"], automargin=True)
    fig.update_xaxes(automargin=True)
    return fig


def heatmap_figure(config: Any) -> go.Figure:
    """Bits per weight of every target matrix, blocks (rows) x module types (columns)."""
    types: list[str] = []
    for t in config.targets:
        if t.module_type not in types:
            types.append(t.module_type)
    blocks = max(t.block for t in config.targets) + 1
    z = [[None] * len(types) for _ in range(blocks)]
    text = [[""] * len(types) for _ in range(blocks)]
    for t in config.targets:
        q = config[t.name]
        z[t.block][types.index(t.module_type)] = q.bits
        text[t.block][types.index(t.module_type)] = str(q)
    fig = go.Figure(go.Heatmap(z=z, x=[s.removesuffix("_proj") for s in types], y=list(range(blocks)), text=text,
                               colorscale="Viridis", colorbar={"title": "bits"},
                               hovertemplate="block %{y} %{x}: %{z:.3f} bits<br>%{text}<extra></extra>"))
    fig.update_layout(height=max(260, 14 * blocks + 90), margin={"l": 50, "r": 10, "t": 30, "b": 40},
                      title={"text": f"bits per layer (avg {config.avg_bits:.3f})", "font": {"size": 13}},
                      yaxis={"title": "block", "autorange": "reversed"}, template="plotly_white")
    return fig


def hv_history_figure(rounds: Iterable[dict], definition: str = "",
                      normalise: Callable[[float], float] | None = None) -> go.Figure:
    """Hypervolume of the front after each search round, one line per run; ``normalise`` maps a
    stored area to the app's one definition (:func:`coalora.search.pareto.normalised_hv`), stated in
    ``definition``."""
    fig = go.Figure()
    runs: dict[str, list[dict]] = {}
    for r in rounds:
        runs.setdefault(r["run"], []).append(r)
    for run, rs in runs.items():
        rs.sort(key=lambda r: r["round"])
        ys = [normalise(r["hypervolume"]) if normalise else r["hypervolume"] for r in rs]
        fig.add_trace(go.Scatter(x=[r["round"] for r in rs], y=ys, mode="lines+markers",
                                 name=run, hovertemplate="round %{x}: HV %{y:.4f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(height=360, xaxis_title="search round", yaxis_title="normalised hypervolume",
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      title={"text": definition, "font": {"size": 10}})
    if not runs:
        fig.add_annotation(text="no front-search rounds stored for this model", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    return fig


def residual_figure(rows: list[dict], metric: str = "ppl") -> go.Figure:
    """Predicted (with its +-2 sigma interval) against measured for the Quick evals of this page,
    with the y = x line: points off the line are the GP's errors."""
    name, f = metric_name(metric), metric_format(metric)
    rows = [r for r in rows if r["metric"] == metric]
    fig = go.Figure()
    if rows:
        lo = min(min(r["measured"], r["predicted"][1]) for r in rows)
        hi = max(max(r["measured"], r["predicted"][2]) for r in rows)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "#999"},
                                 name="predicted = measured", hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[r["measured"] for r in rows], y=[r["predicted"][0] for r in rows], mode="markers",
            error_y={"type": "data", "symmetric": False, "array": [r["predicted"][2] - r["predicted"][0] for r in rows],
                     "arrayminus": [r["predicted"][0] - r["predicted"][1] for r in rows]},
            customdata=[[r["hash"], r["bits"], r["how"]] for r in rows], name="Quick evals",
            hovertemplate=f"%{{customdata[0]}} (%{{customdata[1]:.3f}} bits)<br>measured %{{x:{f}}}<br>"
                          f"predicted %{{y:{f}}} (%{{customdata[2]}})<extra></extra>"))
    else:
        fig.add_annotation(text="no Quick eval on this page yet", showarrow=False, x=0.5, y=0.5, xref="paper",
                           yref="paper")
    fig.update_layout(height=300, template="plotly_white", margin={"l": 60, "r": 16, "t": 30, "b": 44},
                      xaxis_title=f"measured {name}", yaxis_title=f"predicted {name}", showlegend=False,
                      title={"text": f"GP residuals of this page's Quick evals ({len(rows)})", "font": {"size": 12}})
    if rows and min(min(r["measured"], r["predicted"][1]) for r in rows) > 0:
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
    return fig
