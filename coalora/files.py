"""Atomic file writes: a temporary file in the same directory, renamed into place.

A crash or Ctrl-C mid-write leaves the previous file (or none), never a half-written one.
Temporary names carry the writer's process id (``.<name>.<pid>.<random>[.tmp]``), so a temporary
left by a killed process is recognised and removed by the next write of the same path
(:func:`clean_stale_temps`), while one that a live process is still writing is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coalora.errors import CoaloraError


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or we cannot tell): leave its files alone
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` (files and directories) whose writing process is gone.

    Returns what was removed. Errors are ignored: cleaning up is best effort.
    """
    p = Path(path)
    # .<name>.<pid>.<random>.tmp (a file) or .<name>.<pid>.<random> (a directory from atomic_dir)
    pattern = re.compile(rf"^\.{re.escape(p.name)}\.(\d+)\.[A-Za-z0-9_]+(\.tmp)?$")
    removed = []
    try:
        siblings = list(p.parent.iterdir())
    except OSError:
        return removed
    for s in siblings:
        m = pattern.match(s.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            if s.is_dir() and not s.is_symlink():
                shutil.rmtree(s)
            else:
                s.unlink()
            removed.append(s)
        except OSError:
            pass
    return removed


def _cannot(verb: str, p: Path, e: OSError) -> CoaloraError:
    """One clear error for a path that cannot be written (naming a file in the way of its folder)."""
    for parent in p.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return CoaloraError(f"cannot {verb} {p}: {parent} is a file, not a directory; choose another path")
            break
    return CoaloraError(f"cannot {verb} {p}: {e.strerror or e}; choose another path or free the space")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception (or a kill) ``path`` is untouched; the temporary is removed now (or by the
    next write of ``path``). Failing to write (a missing permission, a full disk, a directory in
    the way) is a :class:`CoaloraError` naming the path.
    """
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(p)
        tmp = _tmp_for(p)
        yield tmp
        os.replace(tmp, p)
    except OSError as e:
        raise _cannot("write", p, e) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    with atomic_file(p) as tmp:
        tmp.write_text(text)
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

    On an exception the temporary directory is removed and ``final`` is untouched; after a kill
    the next ``atomic_dir`` of the same ``final`` removes it. ``final`` is never half-written:
    an old one is renamed away before the new one is renamed in, then deleted.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    except OSError as e:
        raise _cannot("create", final, e) from None
    old = None
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old, final)  # put the previous one back
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through a temporary file (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    p = Path(path)
    with atomic_file(p) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # safetensors creates its files private (0600); these are ordinary files to share
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
    except (KeyError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise CoaloraError(f"{what} {p} has unreadable metadata{damaged_hint}")
    return tensors, meta
