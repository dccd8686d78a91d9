"""Command-line options generated from a dataclass: one ``--field-name`` per field, its help the
field's docstring, so a new field cannot be left out of the CLI and the help cannot drift from it."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from functools import cache
from typing import Any


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field in ``cls``'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Add an option per field of dataclass ``cls`` (defaults stay None: "not given"); returns the names."""
    docs = field_docs(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        help_ = docs.get(f.name, "")
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_ = f"{help_} (default: {'see above' if default is None else shown})".replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=_bool, metavar="{true,false}", help=help_)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=_element_type(f, default), nargs="*", help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default) if default is not None else _scalar_type(f),
                                help=help_)
        names.append(f.name)
    return tuple(names)


_TYPES = {"int": int, "float": float, "str": str}


def _element_type(f: dataclasses.Field, default: tuple) -> type:
    """The element type of a ``tuple[X, ...]`` field, from its annotation (the default may be empty)."""
    if not isinstance(f.type, str):
        import typing

        args = typing.get_args(f.type)
        return args[0] if args and isinstance(args[0], type) else (type(default[0]) if default else str)
    ann = f.type.replace(" ", "")
    inner = ann.removeprefix("tuple[").split(",")[0] if ann.startswith("tuple[") else ""
    return _TYPES.get(inner, type(default[0]) if default else str)


def _scalar_type(f: dataclasses.Field) -> type:
    """The type of an optional scalar field (``float | None`` parses as float), from its annotation."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return _TYPES.get(ann.replace(" ", "").split("|")[0], str)


def values(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The given options as dataclass keyword arguments (lists become tuples)."""
    out = {}
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            out[n] = tuple(v) if isinstance(v, list) else v
    return out


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
