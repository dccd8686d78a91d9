"""Atomic file writes: a temporary file in the same directory, renamed into place.

A crash or Ctrl-C mid-write leaves the previous file (or none), never a half-written one.
"""

from __future__ import annotations

import json
import os
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


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through a temporary file (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(p)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, p)
    return p
