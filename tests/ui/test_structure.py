"""The front-end's shape (issue 17): small modules, short functions, typed public functions, and
``ui`` on top of ``coalora`` (no ``coalora`` module imports ``ui`` at import time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "ui"
MODULES = sorted(UI.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_modules_and_functions_are_small(path):
    src = path.read_text()
    assert len(src.splitlines()) <= 400, f"{path.name}: {len(src.splitlines())} lines"
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(ast.parse(src))
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80]
    assert not long, f"{path.name}: functions over 80 lines: {long}"


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_public_functions_are_typed_and_documented(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    bad = []
    for node in tree.body:
        fns = [node] if isinstance(node, ast.FunctionDef) else []
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            fns = [f for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("__")]
        for f in fns:
            if f.name.startswith("_"):
                continue
            untyped = [a.arg for a in f.args.args if a.annotation is None and a.arg not in ("self", "cls")]
            documented = bool(ast.get_docstring(f)) or isinstance(node, ast.ClassDef)  # methods: the class says
            if f.returns is None or untyped or not documented:
                bad.append(f"{f.name} (untyped: {untyped}, return typed: {f.returns is not None}, "
                           f"documented: {documented})")
    assert not bad, f"{path.name}: {bad}"


def test_importing_the_app_leaves_coalora_without_ui():
    """Each ``ui`` module imports ``coalora``; nothing under ``coalora`` imports ``ui`` at module level."""
    root = UI.parent / "coalora"
    hits = []
    for f in root.rglob("*.py"):
        for node in ast.parse(f.read_text()).body:  # module level only: `coalora serve` imports ui lazily
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            hits += [f"{f.relative_to(root)}: {n}" for n in names if n == "ui" or n.startswith("ui.")]
    assert not hits, hits
