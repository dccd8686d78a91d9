"""Side-by-side comparison of two configurations: a pinned one (A) and the current selection (B).

The pin is kept per browser session (Gradio's session hash; bounded), not as a page input, so the
named API endpoints keep their arguments. The comparison shows both configurations' bits per
layer and their difference (B - A) as a heatmap, and a table of what defines each: hash, average
bits, size, predicted and measured ppl / KL with their intervals, and the adapter's generation time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import plotly.graph_objects as go

from ui import task_eval


class Pins:
    """Session -> pinned configuration hash (the newest :attr:`max_sessions` sessions)."""

    def __init__(self, max_sessions: int = 512) -> None:
        self._d: OrderedDict[str, str] = OrderedDict()
        self.max_sessions = max_sessions
        self._lock = threading.Lock()

    def set(self, session: str, config_hash: str) -> None:
        with self._lock:
            self._d.pop(session, None)
            if config_hash:
                self._d[session] = config_hash
            while len(self._d) > self.max_sessions:
                self._d.popitem(last=False)

    def get(self, session: str) -> str:
        with self._lock:
            return self._d.get(session, "")


PINS = Pins()


def session_of(request: Any) -> str:
    """The browser session's id (``"api"`` for calls without one)."""
    return getattr(request, "session_hash", None) or "api"


def _grid(cfg) -> tuple[list[str], int, dict[tuple[int, int], float]]:
    types: list[str] = []
    for t in cfg.targets:
        if t.module_type not in types:
            types.append(t.module_type)
    cells = {(t.block, types.index(t.module_type)): cfg[t.name].bits for t in cfg.targets}
    return types, max(t.block for t in cfg.targets) + 1, cells


def diff_figure(a: Any, b: Any) -> go.Figure:
    """Bits per layer of ``a`` and ``b`` and their difference ``b - a`` (blocks x module types),
    three heatmaps side by side; the difference on a diverging scale centred on 0."""
    from plotly.subplots import make_subplots

    types, blocks, ca = _grid(a)
    _, _, cb = _grid(b)
    z = {name: [[c.get((r, k)) for k in range(len(types))] for r in range(blocks)] for name, c in (("a", ca), ("b", cb))}
    d = [[None if x is None or y is None else y - x for x, y in zip(ra, rb)] for ra, rb in zip(z["a"], z["b"])]
    xs = [s.removesuffix("_proj") for s in types]
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=(f"A {a.hash[:8]} ({a.avg_bits:.2f})", f"B {b.hash[:8]} ({b.avg_bits:.2f})",
                                        "B - A"))
    hover = "block %{y} %{x}: %{z:.3f}<extra></extra>"
    fig.add_trace(go.Heatmap(z=z["a"], x=xs, y=list(range(blocks)), coloraxis="coloraxis", hovertemplate=hover), 1, 1)
    fig.add_trace(go.Heatmap(z=z["b"], x=xs, y=list(range(blocks)), coloraxis="coloraxis", hovertemplate=hover), 1, 2)
    span = max([abs(v) for r in d for v in r if v is not None] or [1.0])
    fig.add_trace(go.Heatmap(z=d, x=xs, y=list(range(blocks)), colorscale="RdBu", zmid=0, zmin=-span, zmax=span,
                             colorbar={"title": "B - A", "x": 1.02}, hovertemplate=hover), 1, 3)
    fig.update_layout(height=max(280, 12 * blocks + 110), margin={"l": 44, "r": 10, "t": 40, "b": 40},
                      coloraxis={"colorscale": "Viridis", "colorbar": {"title": "bits", "x": -0.12}},
                      template="plotly_white")
    fig.update_yaxes(autorange="reversed")
    return fig


def _val(v, f: str) -> str:
    return "-" if v is None else f"{v:{f}}"


def _pred(d: dict, key: str, f: str) -> str:
    v, band = d.get(f"predicted_{key}"), d.get(f"predicted_{key}_band" if key == "kld" else "predicted_band")
    if v is None:
        return "-"
    return f"{v:{f}} [{band[0]:{f}}, {band[1]:{f}}]" + (f" ({d['predicted_how']})" if key == "ppl" and
                                                         d.get("predicted_how") else "")


def compare_md(a: dict, b: dict) -> str:
    """The comparison table of two :func:`ui.selection.describe_selection` results, A pinned, B selected."""
    rows = [("configuration", f"`{a['config_hash']}`", f"`{b['config_hash']}`"),
            ("average bits", f"{a['avg_bits']:.3f}", f"{b['avg_bits']:.3f}"),
            ("size (MB)", f"{a['size_mb']:.1f}", f"{b['size_mb']:.1f}"),
            ("predicted ppl", _pred(a, "ppl", ".2f"), _pred(b, "ppl", ".2f")),
            ("measured ppl", _val(a["measured_ppl"], ".3f"), _val(b["measured_ppl"], ".3f")),
            ("predicted KL (nats/token)", _pred(a, "kld", ".4f"), _pred(b, "kld", ".4f")),
            ("measured KL (nats/token)", _val(a["measured_kld"], ".4f"), _val(b["measured_kld"], ".4f")),
            ("adapter generated in (ms)", _val(a["adapter_ms"], ".1f"), _val(b["adapter_ms"], ".1f"))]
    if a.get("tasks") or b.get("tasks"):
        rows.append(("lm-eval accuracy", task_eval.accuracy_text(a.get("tasks") or []) or "-",
                     task_eval.accuracy_text(b.get("tasks") or []) or "-"))
    lines = ["| | A (pinned) | B (selected) |", "|---|---|---|"] + [f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows]
    return "\n".join(lines) + f"\n\n{a['convention']}; method {a['method']}."
