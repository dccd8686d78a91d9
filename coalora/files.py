"""Atomic file writes: a temporary file in the same directory, renamed into place.

A crash or Ctrl-C mid-write leaves the previous file (or none), never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(p)
    tmp.write_text(text)
    os.replace(tmp, p)
    return p


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON plus a final newline."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then put it in place of ``final`` (replacing it).

    On an exception the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through a temporary file (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(p)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, p)
    return p


def save_tagged(tensors: dict, path: str | os.PathLike, fmt: str, meta: dict[str, Any]) -> Path:
    """safetensors file whose metadata holds ``{"format": fmt, "meta": <JSON of meta>}`` (atomic)."""
    return save_safetensors_atomic(tensors, path, metadata={"format": fmt, "meta": json.dumps(meta)})


def load_tagged(path: str | os.PathLike, fmt: str, what: str, missing_hint: str = "", damaged_hint: str = "",
                device: str = "cpu") -> tuple[dict, dict[str, Any]]:
    """Inverse of :func:`save_tagged`; every way the file can be unusable raises one ``CoaloraError``.

    ``what`` names the file kind in messages ("checkpoint", "trained adapter"); the hints say how
    to fix a missing or damaged file.
    """
    from safetensors import SafetensorError, safe_open

    from coalora.errors import CoaloraError

    p = Path(path)
    if not p.is_file():
        raise CoaloraError(f"no {what} at {p}{missing_hint}")
    try:
        with safe_open(str(p), framework="pt", device=str(device)) as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError) as e:
        raise CoaloraError(f"{what} {p} is corrupt or truncated ({e}){damaged_hint}") from None
    if md.get("format") != fmt:
        kind = fmt.split("/")[0].replace(".", " ")  # "coalora.checkpoint/1" -> "coalora checkpoint"
        raise CoaloraError(f"{p} is not a {kind} (format {md.get('format')!r}, expected {fmt!r})")
    try:
        meta = json.loads(md["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CoaloraError(f"{what} {p} has unreadable metadata{damaged_hint}") from None
    return tensors, meta
