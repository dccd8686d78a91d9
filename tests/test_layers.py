"""The house's shape (README "Layout"): the package's folders import each other without cycles, every
import included (those inside functions too), and nothing in ``coalora/`` imports ``ui/`` except the
``coalora serve`` command."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "coalora"
APP = {"explorer", "front_growth"}  # the top: one model, its adapter, store and front, as the app and CLI use it


def _group(module: str) -> str | None:
    """The room a dotted module name belongs to: a subpackage, ``store``, ``app``, ``cli``, ``ui`` or the
    shared ``ground`` (errors, files, paths, limits, assets, data, models, checkpoint)."""
    parts = module.split(".")
    if parts[0] == "ui":
        return "ui"
    if parts[0] != "coalora" or len(parts) < 2:
        return None
    sub = parts[1]
    if sub in APP:
        return "app"
    if sub == "__main__":
        return "cli"
    if sub.startswith("store"):
        return "store"
    return sub if (PKG / sub).is_dir() else "ground"


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            if node.module == "coalora":
                out += [f"coalora.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _edges() -> dict[str, dict[str, set[str]]]:
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in PKG.rglob("*.py"):
        here = _group(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name in _imports(path):
            there = _group(name)
            if there and there != here:
                edges[here][there].add(str(path.relative_to(ROOT)))
    return edges


def test_the_folders_import_each_other_without_cycles():
    edges = _edges()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(g: str) -> None:
        state[g] = 1
        path.append(g)
        for h in edges.get(g, {}):
            if state.get(h) == 1:
                cycle = path[path.index(h):] + [h]
                where = "; ".join(f"{a} -> {b}: {sorted(edges[a][b])}" for a, b in zip(cycle, cycle[1:]))
                raise AssertionError(f"import cycle {' -> '.join(cycle)} ({where})")
            if h not in state:
                visit(h)
        path.pop()
        state[g] = 2

    for g in list(edges):
        if g not in state:
            visit(g)


def test_only_the_serve_command_imports_the_ui():
    users = _edges().get("cli", {}).get("ui", set())
    others = {g: files for g, e in _edges().items() if g != "cli" for h, files in e.items() if h == "ui"}
    assert users <= {"coalora/cli/serve.py"} and not others, (users, others)


def test_the_method_sections_sit_in_order():
    """Section 1 (quant) needs nothing above it; section 2 (lqlora) only section 1; section 3 (adapter)
    only 1 and 2: the order a reader of method.md meets them."""
    edges = _edges()
    assert set(edges.get("quant", {})) <= {"ground"}
    assert set(edges.get("lqlora", {})) <= {"ground", "quant"}
    assert set(edges.get("adapter", {})) <= {"ground", "quant", "lqlora"}
