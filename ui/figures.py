"""Plotly figures of the explorer: the front (perplexity or KL divergence against bits), the
per-layer bits heatmap and the search's hypervolume history. Pure functions of plain values (no
model, no store). The method comparison is the protocol report's own image (Methods tab).

Every clickable marker carries its configuration hash in ``customdata``; the page's click bridge
(:mod:`ui.bridge`) hands it to the ``select`` event.
"""

from __future__ import annotations

from collections.abc import Iterable
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
_HOVER = "%{customdata}<br>%{x:.3f} bits<br>%{text}<extra>%{fullData.name}</extra>"


def method_label(method: str) -> str:
    return METHODS.get(method, (method, ""))[0]


METRIC_AXES = {"ppl": "perplexity", "kld": "KL divergence to the unquantized model (nats/token)"}
"""The front's y-axis title per metric (:data:`coalora.front.METRICS`)."""


def metric_name(metric: str) -> str:
    """Short name of a front metric in text: ``ppl`` or ``KL``."""
    return "ppl" if metric == "ppl" else "KL"


def metric_format(metric: str) -> str:
    """Format spec of a metric's values: perplexities to 2 decimals, KL (nats, often < 0.1) to 4."""
    return ".2f" if metric == "ppl" else ".4f"


def _fmt(v: float | None, f: str = ".2f") -> str:
    return "-" if v is None else f"{v:{f}}"


def _hover_text(p, f: str = ".2f") -> str:
    pred = f"predicted {_fmt(p.pred_ppl, f)} [{_fmt(p.pred_lo, f)}, {_fmt(p.pred_hi, f)}]"
    return pred + (f"<br>measured {_fmt(p.ppl, f)}" if p.ppl is not None else "<br>not measured")


def front_figure(fronts: dict[str, Any], budget: float | None = None, best: Any | None = None,
                 selected: tuple[str, float, float] | None = None, convention: str = "",
                 metric: str = "ppl") -> go.Figure:
    """The bits-vs-perplexity (or bits-vs-KL) front.

    ``fronts``: method -> :class:`coalora.front.FrontResult` of ``metric`` (measured points,
    predicted front with its +-2 sigma band, EHVI proposals); ``best``: the best predicted point
    within ``budget``; ``selected``: (hash, bits, value on the y axis) of the selected
    configuration, ringed.
    """
    f = metric_format(metric)
    fig = go.Figure()
    for method, res in fronts.items():
        label, colour = METHODS.get(method, (method, "#333"))
        pts = [p for p in res.front if p.pred_lo is not None]
        if pts:
            xs = [p.avg_bits for p in pts]
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[p.pred_hi for p in pts] + [p.pred_lo for p in pts][::-1],
                                     fill="toself", fillcolor=_BAND.get(method, "rgba(0,0,0,0.1)"),
                                     line={"width": 0}, hoverinfo="skip", name=f"{label} +-2 sigma",
                                     legendgroup=method, showlegend=True))
            fig.add_trace(go.Scatter(x=xs, y=[p.pred_ppl for p in pts], mode="lines+markers",
                                     line={"color": colour, "width": 2, "shape": "hv"},
                                     marker={"size": 5, "color": colour, "opacity": 0.6},
                                     customdata=[p.config_hash for p in pts], text=[_hover_text(p, f) for p in pts],
                                     hovertemplate=_HOVER, name=f"{label} predicted front", legendgroup=method))
        if res.measured:
            m = res.measured
            fig.add_trace(go.Scatter(x=[p.avg_bits for p in m], y=[p.ppl for p in m], mode="markers",
                                     marker={"size": 9, "color": colour, "line": {"width": 1, "color": "white"}},
                                     customdata=[p.config_hash for p in m],
                                     text=[f"measured {_fmt(p.ppl, f)}" for p in m], hovertemplate=_HOVER,
                                     name=f"{label} measured", legendgroup=method))
        if res.proposals:
            q = res.proposals
            fig.add_trace(go.Scatter(x=[p.avg_bits for p in q], y=[p.pred_ppl for p in q], mode="markers",
                                     marker={"size": 8, "symbol": "diamond-open", "color": colour},
                                     customdata=[p.config_hash for p in q], text=[_hover_text(p, f) for p in q],
                                     hovertemplate=_HOVER, name=f"{label} suggested (EHVI)", legendgroup=method,
                                     visible="legendonly"))
    if budget is not None:
        fig.add_vline(x=budget, line={"dash": "dash", "color": "#d62728"},
                      annotation_text=f"budget {budget:.2f}", annotation_position="top")
    if best is not None:
        fig.add_trace(go.Scatter(x=[best.avg_bits], y=[best.ppl if best.ppl is not None else best.pred_ppl],
                                 mode="markers", marker={"size": 16, "symbol": "star", "color": "#d62728"},
                                 customdata=[best.config_hash], text=[_hover_text(best, f)], hovertemplate=_HOVER,
                                 name="best within budget"))
    if selected is not None:
        h, x, y = selected
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", customdata=[h], hovertemplate=_HOVER,
                                 text=["selected"], name="selected",
                                 marker={"size": 20, "symbol": "circle-open", "color": "black", "line": {"width": 3}}))
    fig.update_layout(
        height=480, margin={"l": 60, "r": 20, "t": 40, "b": 50}, hovermode="closest", clickmode="event",
        xaxis_title="average bits per weight (incl. scales)",
        yaxis_title=METRIC_AXES.get(metric, metric) + (f" ({convention})" if convention else ""),
        legend={"orientation": "h", "y": -0.18}, template="plotly_white",
    )
    fig.update_yaxes(type="log")
    return fig


def heatmap_figure(config) -> go.Figure:
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


def hv_history_figure(rounds: Iterable[dict]) -> go.Figure:
    """Hypervolume of the training set after each search round, one line per run."""
    fig = go.Figure()
    runs: dict[str, list[dict]] = {}
    for r in rounds:
        runs.setdefault(r["run"], []).append(r)
    for run, rs in runs.items():
        rs.sort(key=lambda r: r["round"])
        fig.add_trace(go.Scatter(x=[r["round"] for r in rs], y=[r["hypervolume"] for r in rs], mode="lines+markers",
                                 name=run, hovertemplate="round %{x}: HV %{y:.4f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(height=360, xaxis_title="search round", yaxis_title="hypervolume (normalised)",
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 30, "b": 50})
    if not runs:
        fig.add_annotation(text="no search rounds stored for this model", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    return fig
