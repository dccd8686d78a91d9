"""Blocks that refuse malformed event calls instead of guessing.

Gradio drops extra arguments silently and answers too few with no message, and walks whatever
nested values and file references a request carries. :class:`StrictBlocks` refuses a call with the
wrong number of arguments, a Gradio file reference or deep nesting, each in one sentence, before
any handler runs (the handlers then check each argument's value, :mod:`ui.inputs`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr


class StrictBlocks(gr.Blocks):
    """``gr.Blocks`` that refuses a call carrying more or fewer arguments than its event takes, in one
    sentence (Gradio drops extra arguments silently and answers too few with no message), so a
    malformed API call is an error, not a guess."""

    def validate_inputs(self, block_fn: Any, inputs: list) -> None:
        want, got = len(block_fn.inputs), len(inputs)
        name = f"/{block_fn.api_name}" if isinstance(block_fn.api_name, str) else "this event"
        if got != want:
            fix = "drop the extra ones" if got > want else "pass all of them, in order (the API page lists them)"
            raise gr.Error(f"{name} takes {want} arguments, got {got}; {fix}", print_exception=False)
        why = _argument_problem(inputs)
        if why:
            raise gr.Error(f"{name} takes text, numbers and lists of them; {why}", print_exception=False)


def _argument_problem(value, max_depth: int = 8) -> str:
    """What makes a request's arguments unacceptable before Gradio walks them ("" when nothing): a
    Gradio file reference (a dict with ``meta._type == "gradio.FileData"``, which Gradio would try
    to copy into its cache) or nesting deeper than ``max_depth`` (Gradio walks it recursively).
    Walked without recursion; the request body's size cap (:mod:`ui.guard`) bounds the work."""
    todo = [(value, 0)]
    while todo:
        x, depth = todo.pop()
        if depth > max_depth:
            return f"these nest deeper than {max_depth} levels"
        if isinstance(x, dict):
            meta = x.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                return "files are not taken here"
            todo.extend((v, depth + 1) for v in x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend((v, depth + 1) for v in x)
    return ""


