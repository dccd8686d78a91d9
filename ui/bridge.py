"""The page's JavaScript and CSS: exact marker picking on the front, its tooltip, the view
controls, and a bridge from a click to a Gradio event.

``gr.Plot`` has no click event (gradio issues 5292, 11413), and plotly's own closest-point hover
picks, on a dense predicted front of ~700 points, a neighbour of the marker under the pointer. So
plotly's hover is off (``hovermode=False``, :func:`ui.figures.front_figure`) and :data:`JS` does
the picking: every marker trace carries ``meta.kind``, ``customdata`` (the hash) and ``text`` (the
tooltip); a marker is hit when the pointer is within its radius + 3 px, and among hits the one with
the lowest ``distance + 4 px x rank`` wins (rank: measured 0; best, selected, pinned, proposal 1;
predicted 2), so a measured marker wins where markers overlap while a click on the centre of the
star still selects the star. Positions come from the plot's own axes (``c2p``), so zoom and log
axes are exact.

A tap or a click (pointer down and up within 5 px) stores the picked hash on ``window`` and clicks a
hidden button whose event reads it back through :data:`READ_POINT`. The view controls (y scale,
y range, x in bits or MB) relayout the figure in the browser only (no refit); the ranges and the
MB mapping come from the figure's ``layout.meta``. A new figure (after a selection) gets the current
view again.
"""

from __future__ import annotations

BRIDGE_BUTTON = "click-bridge"
FRONT_PLOT = "front-plot"

JS = f"""
() => {{
  const RANK = {{measured: 0, best: 1, selected: 1, pinned: 1, proposal: 1, predicted: 2}};
  window.__coaloraView = window.__coaloraView || {{yscale: "log", yrange: "focus", x: "bits"}};
  const plots = () => [...document.querySelectorAll("#{FRONT_PLOT} .js-plotly-plot")];
  const markers = (gd) => {{
    const fl = gd._fullLayout, out = [];
    if (!fl || !fl.xaxis || !fl.yaxis) return out;
    const xa = fl.xaxis, ya = fl.yaxis;
    (gd._fullData || []).forEach((t, i) => {{
      const kind = t.meta && t.meta.kind;
      if (!kind || t.visible !== true || !t.customdata) return;
      const size = t.marker && t.marker.size;
      t.x.forEach((x, j) => {{
        const y = t.y[j];
        if (x === null || y === null || x === undefined || y === undefined) return;
        const px = xa._offset + xa.c2p(x), py = ya._offset + ya.c2p(y);
        if (!isFinite(px) || !isFinite(py)) return;
        if (px < xa._offset - 1 || px > xa._offset + xa._length + 1 || py < ya._offset - 1 ||
            py > ya._offset + ya._length + 1) return;
        const s = Array.isArray(size) ? size[j] : (size || 6);
        out.push({{trace: i, index: j, kind, hash: String(t.customdata[j]), px, py, r: s / 2,
                   text: Array.isArray(t.text) ? String(t.text[j]) : ""}});
      }});
    }});
    return out;
  }};
  const pick = (gd, cx, cy) => {{
    let best = null, score = Infinity;
    for (const m of markers(gd)) {{
      const d = Math.hypot(m.px - cx, m.py - cy);
      if (d > Math.max(m.r, 4) + 3) continue;
      const s = d + 4 * (RANK[m.kind] === undefined ? 2 : RANK[m.kind]);
      if (s < score) {{ score = s; best = m; }}
    }}
    return best;
  }};
  const at = (ev) => {{
    for (const gd of plots()) {{
      const r = gd.getBoundingClientRect();
      if (ev.clientX >= r.left && ev.clientX <= r.right && ev.clientY >= r.top && ev.clientY <= r.bottom)
        return [gd, ev.clientX - r.left, ev.clientY - r.top];
    }}
    return null;
  }};
  window.__coaloraMarkers = markers;
  window.__coaloraPick = pick;
  let tip = null;
  const showTip = (m, ev) => {{
    if (!tip) {{
      tip = document.createElement("div");
      tip.id = "front-tip";
      document.body.appendChild(tip);
    }}
    if (!m) {{ tip.style.display = "none"; return; }}
    tip.textContent = m.text;
    tip.dataset.hash = m.hash;
    tip.style.display = "block";
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, Math.min(ev.clientX + 14, window.innerWidth - w - 4)) + "px";
    tip.style.top = Math.max(4, Math.min(ev.clientY + 14, window.innerHeight - h - 4)) + "px";
  }};
  window.addEventListener("pointermove", (ev) => {{
    const hit = at(ev);
    showTip(hit ? pick(...hit) : null, ev);
  }}, true);
  let down = null;
  window.addEventListener("pointerdown", (ev) => {{ down = [ev.clientX, ev.clientY]; }}, true);
  window.addEventListener("pointerup", (ev) => {{
    if (!down || Math.hypot(ev.clientX - down[0], ev.clientY - down[1]) > 5) return;
    down = null;
    const hit = at(ev);
    const m = hit && pick(...hit);
    if (!m) return;
    window.__coaloraPoint = m.hash;
    window.__coaloraPicked = {{kind: m.kind, hash: m.hash}};
    let b = document.getElementById("{BRIDGE_BUTTON}");
    if (b && b.tagName !== "BUTTON") b = b.querySelector("button");
    if (b) b.click();
  }}, true);
  const mbTicks = (meta, range) => {{
    const [a, b] = meta.mb, lo = a * range[0] + b, hi = a * range[1] + b;
    const raw = (hi - lo) / 8, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(k => k * mag).find(s => s >= raw) || raw;
    const vals = [], text = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) {{
      vals.push((v - b) / a);
      text.push(String(Math.round(v * 100) / 100));
    }}
    return [vals, text];
  }};
  const applyView = (gd) => {{
    const meta = gd.layout && gd.layout.meta;
    if (!meta || !meta.coalora || !window.Plotly) return;
    const v = window.__coaloraView, key = JSON.stringify(v);
    if (gd.__coaloraView === key && gd.__coaloraLayout === gd.layout) return;  // a redraw brings a new layout
    gd.__coaloraView = key;
    gd.__coaloraLayout = gd.layout;
    const log = v.yscale === "log", up = {{"yaxis.type": v.yscale}};
    up["yaxis.range"] = meta[(v.yrange === "full" ? "full" : "focus") + (log ? "_log" : "_lin")];
    if (v.x === "mb" && meta.mb && meta.mb[0] > 0) {{
      const [vals, text] = mbTicks(meta, [2.0, 8.7]);
      Object.assign(up, {{"xaxis.tickmode": "array", "xaxis.tickvals": vals, "xaxis.ticktext": text,
                          "xaxis.title.text": meta.x_titles.mb}});
    }} else {{
      Object.assign(up, {{"xaxis.tickmode": "auto", "xaxis.title.text": meta.x_titles.bits}});
    }}
    window.Plotly.relayout(gd, up);
  }};
  window.__coaloraSetView = (part) => {{
    Object.assign(window.__coaloraView, part);
    plots().forEach((gd) => {{ gd.__coaloraView = null; applyView(gd); }});
  }};
  const bind = () => {{
    plots().forEach((gd) => {{
      if (!gd._fullLayout) return;
      applyView(gd);
      gd.dataset.coaloraReady = "1";
      window.__coaloraBridgeReady = true;
    }});
  }};
  setInterval(bind, 200);
}}
"""

READ_POINT = "(...args) => { const a = [...args]; a[0] = window.__coaloraPoint || ''; return a; }"
"""The hidden button's ``js``: replaces its first input with the picked configuration hash."""


def set_view_js(part: str) -> str:
    """The ``js`` of a view control's change event: sets ``part`` (``yscale``, ``yrange`` or ``x``)
    of the page's view to the control's value, in the browser only."""
    return f"(v) => {{ if (window.__coaloraSetView) window.__coaloraSetView({{{part}: v}}); return []; }}"


DEBOUNCE_MS = 450


def debounce_js(slot: int) -> str:
    """The ``js`` of the budget box's change event: waits :data:`DEBOUNCE_MS` ms, and when another
    keystroke came meanwhile sends ``null`` in argument ``slot`` (the handler then skips), so a
    burst of typing costs one refresh and the last typed value is the one drawn."""
    return ("(...args) => new Promise((resolve) => { const n = (window.__coaloraTyped = (window.__coaloraTyped || 0) + 1);"
            f" setTimeout(() => {{ const a = [...args]; if (n !== window.__coaloraTyped) a[{slot}] = null;"
            f" resolve(a); }}, {DEBOUNCE_MS}); }})")


CSS = f"""
#{BRIDGE_BUTTON} {{ display: none !important; }}
#adapter-time {{ font-size: 1.05em; }}
#front-tip {{ position: fixed; z-index: 1000; pointer-events: none; white-space: pre-line; font-size: 12px;
  background: rgba(255, 255, 255, 0.96); border: 1px solid #888; border-radius: 4px; padding: 4px 6px;
  font-family: ui-monospace, monospace; color: #111; max-width: 360px; display: none; }}
@media (max-width: 640px) {{
  #plot-col {{ order: -1; }}
  #front-plot .legend {{ font-size: 9px; }}
}}
"""
