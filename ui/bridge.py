"""The page's JavaScript and CSS: a bridge from plotly's click events to a Gradio event.

``gr.Plot`` has no click event (gradio issues 5292, 11413). On page load :data:`JS` binds a
``plotly_click`` listener to every plotly graph inside ``#front-plot`` (again every half second,
because a redraw may replace the graph div and drop its listeners). A click stores the point's
``customdata`` (its configuration hash) on ``window`` and clicks a hidden button whose event reads
it back through :data:`READ_POINT`.
"""

from __future__ import annotations

BRIDGE_BUTTON = "click-bridge"
FRONT_PLOT = "front-plot"

JS = f"""
() => {{
  const onClick = (ev) => {{
    const p = ev && ev.points && ev.points[0];
    if (!p || p.customdata === undefined || p.customdata === null) return;
    window.__coaloraPoint = String(Array.isArray(p.customdata) ? p.customdata[0] : p.customdata);
    let b = document.getElementById("{BRIDGE_BUTTON}");
    if (b && b.tagName !== "BUTTON") b = b.querySelector("button");
    if (b) b.click();
  }};
  const bind = () => {{
    document.querySelectorAll("#{FRONT_PLOT} .js-plotly-plot").forEach((gd) => {{
      if (typeof gd.on !== "function") return;
      if (gd.removeListener) gd.removeListener("plotly_click", onClick);
      gd.on("plotly_click", onClick);
      window.__coaloraBridgeReady = true;
    }});
  }};
  setInterval(bind, 250);
}}
"""

READ_POINT = "(...args) => { const a = [...args]; a[0] = window.__coaloraPoint || ''; return a; }"
"""The hidden button's ``js``: replaces its first input with the clicked configuration hash."""

CSS = f"""
#{BRIDGE_BUTTON} {{ display: none !important; }}
#adapter-time {{ font-size: 1.05em; }}
"""
