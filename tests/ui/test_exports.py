"""Bounded disk for exports (ui/exports.py, ui/bundle.py): entries de-duplicated by content hash,
built out of sight and renamed into place, and the export directory plus Gradio's cache kept under
the cap, least recently used first. The last test drives 50 exports through a served app with
``gradio_client`` on the tiny model, so Gradio's own copies of the served files count too.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest

from coalora.errors import CoaloraError
from ui import exports

MODEL = "tiny-llama"


def _du(*dirs: Path) -> int:
    """Bytes of every file under ``dirs`` (counted here, not by the code under test)."""
    seen, total = set(), 0
    for d in dirs:
        for dirpath, _, names in os.walk(d):
            for n in names:
                p = os.path.realpath(os.path.join(dirpath, n))
                if p not in seen:
                    seen.add(p)
                    total += os.path.getsize(p)
    return total


def _entry(root: Path, key: str, size: int, age_s: float = 0.0) -> exports.Entry:
    def write(d: Path) -> list[Path]:
        (d / "b.zip").write_bytes(b"x" * size)
        return [d / "b.zip"]

    e = exports.put(root, key, write)
    t = time.time() - age_s
    for p in (e.path, *e.files):
        os.utime(p, (t, t))
    return e


def test_an_entry_is_complete_or_absent(tmp_path):
    root = tmp_path / "exports"
    e = _entry(root, "k1", 10)
    assert exports.find(root, "k1", ["b.zip"]) == e and e.files[0].read_bytes() == b"x" * 10
    assert exports.find(root, "k1", ["b.zip", "missing.json"]) is None
    assert exports.find(root, "nope", ["b.zip"]) is None

    def fails(d: Path) -> list[Path]:
        (d / "b.zip").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        exports.put(root, "k2", fails)
    assert sorted(p.name for p in root.iterdir()) == ["k1"]  # no half-written entry, no staging left


def test_eviction_is_least_recently_used_and_spares_what_is_kept(tmp_path):
    root, cache = tmp_path / "cache" / "exports", tmp_path / "cache"
    old = _entry(root, "old", 400, age_s=300)
    mid = _entry(root, "mid", 400, age_s=200)
    new = _entry(root, "new", 400, age_s=100)
    gradio_copy = cache / ("a" * 64)
    gradio_copy.mkdir()
    (gradio_copy / "b.zip").write_bytes(b"y" * 400)  # a file Gradio served: newest of all
    assert exports.disk_use([root, cache]) == 1600 == _du(cache)  # nested: counted once
    assert exports.find(root, "old", ["b.zip"]) is not None  # used again: now the most recent
    gone = exports.evict([root, cache], cap=1000, keep=[new.path])
    assert gone == [mid.path.resolve(), gradio_copy.resolve()]  # oldest first; "new" kept though older
    assert _du(cache) == 800 and new.path.is_dir() and old.path.is_dir()
    assert exports.evict([root, cache], cap=10**9) == []  # under the cap: nothing deleted


def test_reserve_makes_room_before_an_export_and_too_big_is_refused(tmp_path):
    root = tmp_path / "exports"
    for i in range(5):
        _entry(root, f"k{i}", 100, age_s=100 - i)
    exports.evict([root], cap=1000, reserve=700)
    assert _du(root) <= 300 and sorted(p.name for p in root.iterdir()) == ["k2", "k3", "k4"]
    with pytest.raises(CoaloraError, match="export space"):
        exports.check_fits(3 * 2**30, 2 * 2**30)


def test_old_entries_expire(tmp_path):
    root = tmp_path / "exports"
    _entry(root, "stale", 10, age_s=7200)
    _entry(root, "fresh", 10)
    exports.expire(root, 3600)
    assert [p.name for p in root.iterdir()] == ["fresh"]


def test_fifty_exports_stay_under_the_cap(tmp_path, monkeypatch):
    """50 exports of 5 configurations through the served app: with the real cap each configuration
    is written once and reused; with a cap of a few bundles, the export directory plus Gradio's cache
    (which copies every served file that is outside it) never exceeds the cap, and what is evicted
    is written again when asked for."""
    from gradio_client import Client

    from coalora import limits
    from coalora.store import Store
    from tests.conftest import launch_local
    from ui import bundle, selection, state

    gradio_dir = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_dir))  # read when the app is built
    models = state.Models(default=MODEL)
    models.store = Store(tmp_path / "results.duckdb")
    monkeypatch.setattr(state, "MODELS", models)
    monkeypatch.setattr(state, "FRONTS", state.FrontCache())
    monkeypatch.setattr(state, "EXPORT_DIR", tmp_path / "exports")  # outside the cache: Gradio copies
    demo, url = launch_local(MODEL, state.EXPORT_DIR)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        hashes = [selection.select_best(MODEL, "shakespeare", b, ["none"], 128, 2)[0] for b in (2.5, 3, 4, 5, 6)]
        assert len(set(hashes)) == 5

        def export(i: int) -> tuple[str, str]:
            files, note = client.predict(hashes[i % 5], MODEL, "shakespeare", 128, 2, api_name="/export")
            local = [f["value"] if isinstance(f, dict) else f for f in files]
            assert zipfile.is_zipfile(local[0]) and local[1].endswith(".config.json")
            return Path(local[0]).name, note

        notes = [export(i)[1] for i in range(25)]
        assert sum("written in" in n for n in notes) == 5  # each configuration written once, then reused
        assert len(list(state.EXPORT_DIR.iterdir())) == 5
        biggest = max(_du(d) for d in state.EXPORT_DIR.iterdir())
        need = bundle.expected_bytes(models.get(MODEL), models.get(MODEL).config(hashes[0]))
        cap = need + 3 * biggest
        monkeypatch.setattr(limits, "EXPORT_CAP_BYTES", cap)
        peak, written = 0, 0
        for i in range(25, 50):
            name, note = export(i)
            assert hashes[i % 5] in name
            written += "written in" in note
            peak = max(peak, _du(state.EXPORT_DIR, gradio_dir))
            assert peak <= cap, f"export {i}: {peak} bytes on disk, cap {cap}"
        assert written > 0  # the small cap evicted entries, and those were written again
        client.close()
    finally:
        demo.close()
        models.store.close()
