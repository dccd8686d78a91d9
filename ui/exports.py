"""The app's export directory: one entry per bundle content, under a disk cap.

An entry is ``<root>/<key>/`` holding the bundle zip and its configuration JSON, where ``key`` is the
bundle's content hash (:meth:`coalora.explorer.Explorer.export_key`): exporting the same
configuration with the same adapter and results again reuses the entry instead of writing ~60 MB
more. An entry is built in a hidden sibling and renamed into place, so a visible entry is complete.

Disk use is the export directory plus Gradio's cache directory (where Gradio copies every file it
serves that is not already inside it; the app puts its export directory inside that cache, so a
bundle is stored once). Before and after each export, whole entries of both directories are
deleted, least recently used first, until the total is under the cap (:data:`coalora.limits.EXPORT_CAP_BYTES`).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from coalora.errors import CoaloraError

_STAGING = ".staging-"


@dataclass(frozen=True)
class Entry:
    """A complete export: its directory and the files the page offers for download."""

    path: Path
    files: tuple[Path, ...]

    def size(self) -> int:
        return tree_size(self.path)


def tree_size(path: Path) -> int:
    """Bytes in the files under ``path`` (0 when it vanished meanwhile)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def _last_use(path: Path) -> float:
    """The latest mtime of ``path`` and its files (a reuse touches them; Gradio touches its copies)."""
    try:
        t = path.stat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir():
        for p in path.rglob("*"):
            try:
                t = max(t, p.stat().st_mtime)
            except OSError:
                pass
    return t


def find(root: Path, key: str, names: Iterable[str]) -> Entry | None:
    """The complete entry ``key`` (every one of ``names`` present), touched as just used; else None."""
    d = root / key
    files = tuple(d / n for n in names)
    if not all(f.is_file() for f in files):
        return None
    now = time.time()
    for p in (d, *files):
        os.utime(p, (now, now))
    return Entry(d, files)


def put(root: Path, key: str, write: Callable[[Path], Iterable[Path]]) -> Entry:
    """Build entry ``key``: ``write(dir)`` writes its files into a hidden staging directory and
    returns them; the directory is then renamed to ``root/key`` (an incomplete old one is replaced)."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{_STAGING}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        names = [Path(f).name for f in write(staging)]
        final = root / key
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Entry(final, tuple(final / n for n in names))


def _units(dirs: Iterable[Path], keep: Iterable[Path]) -> list[Path]:
    """The deletable units of ``dirs``: their direct children, except a directory of ``dirs`` nested
    in another (it is walked itself), staging directories and ``keep``."""
    dirs = [d.resolve() for d in dirs if d.is_dir()]
    kept = {p.resolve() for p in keep}
    out = []
    for d in dirs:
        for child in d.iterdir():
            c = child.resolve()
            if c in kept or c in dirs or child.name.startswith(_STAGING):
                continue
            out.append(c)
    return out


def disk_use(dirs: Iterable[Path]) -> int:
    """Bytes under ``dirs``, each file counted once even when one directory is inside another."""
    roots = sorted({d.resolve() for d in dirs if d.is_dir()}, key=lambda p: len(p.parts))
    top = [r for r in roots if not any(r != o and r.is_relative_to(o) for o in roots)]
    return sum(tree_size(r) for r in top)


def evict(dirs: Iterable[Path], cap: int, reserve: int = 0, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete whole units of ``dirs``, least recently used first, until their disk use plus
    ``reserve`` bytes fits in ``cap``; never a unit in ``keep``. Returns what was deleted."""
    dirs = list(dirs)
    total = disk_use(dirs)
    gone: list[Path] = []
    if total + reserve <= cap:
        return gone
    for unit in sorted(_units(dirs, keep), key=_last_use):
        size = tree_size(unit)
        if unit.is_dir():
            shutil.rmtree(unit, ignore_errors=True)
        else:
            unit.unlink(missing_ok=True)
        gone.append(unit)
        total -= size
        if total + reserve <= cap:
            break
    return gone


def expire(root: Path, max_age_s: float) -> None:
    """Delete entries (and staging directories of dead exports) unused for ``max_age_s`` seconds."""
    if not root.is_dir():
        return
    now = time.time()
    for d in root.iterdir():
        if now - _last_use(d) > max_age_s:
            shutil.rmtree(d, ignore_errors=True)


def check_fits(expected: int, cap: int) -> None:
    """Refuse an export whose build (``expected`` bytes) could never fit under ``cap``."""
    if expected > cap:
        raise CoaloraError(f"this bundle needs about {expected / 2**20:.0f} MiB while it is built, more than the "
                           f"app's {cap / 2**30:.1f} GiB export space; export it with the CLI (`coalora export`)")
