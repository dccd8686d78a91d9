"""The Gradio front-end: layout, handlers and figures. It calls :mod:`coalora`, never the other way round."""
