"""The Gradio front-end: the page (:mod:`ui.layout`, :mod:`ui.wiring`), its events (one module per
panel) and figures. It calls :mod:`coalora`, never the other way round."""
