"""Safe defaults: the app binds to this machine only, nothing unpickles, downloads stay in their directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "coalora").rglob("*.py"), *(ROOT / "ui").rglob("*.py"), ROOT / "app.py"])


def test_app_binds_localhost_unless_told(monkeypatch):
    import app

    monkeypatch.delenv("COALORA_HOST", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    assert app.parse_args([]).share is False
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what a Hugging Face Space sets
    assert app.parse_args([]).host == "0.0.0.0"


@pytest.mark.parametrize("pattern, why", [
    (r"^\s*(import pickle|from pickle|import dill|import joblib)", "pickle-based modules"),
    (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load without weights_only=True"),
    (r"allow_pickle\s*=\s*True", "numpy pickles"),
    (r"\b(eval|exec)\(\s*(?!\))", "eval/exec of strings"),
])
def test_no_unsafe_deserialisation(pattern, why):
    hits = []
    for f in SOURCES:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(pattern, code) and not re.search(r"\.(eval|exec)\(", code):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, f"{why}: {hits}"


def test_launch_serves_files_only_from_the_export_dir():
    from ui import guard, state
    from ui.layout import launch_kwargs

    kw = launch_kwargs()
    assert kw["allowed_paths"] == [str(state.EXPORT_DIR)]
    assert "share" not in kw and kw["show_error"] is False
    assert [m.cls for m in kw["app_kwargs"]["middleware"]] == [guard.RequestGuard]


@pytest.mark.parametrize("configured, space, host, port, want", [
    ("https://example.org/coalora", None, "127.0.0.1", 7860, "https://example.org/coalora/"),
    ("http://10.0.0.5:8080/", "user-space.hf.space", "0.0.0.0", 7860, "http://10.0.0.5:8080/"),
    (None, "user-space.hf.space", "0.0.0.0", 7860, "https://user-space.hf.space/"),
    (None, None, "127.0.0.1", 7999, "http://127.0.0.1:7999/"),
    (None, None, "::1", 7999, "http://[::1]:7999/"),
])
def test_share_links_come_from_the_configured_or_served_address(monkeypatch, configured, space, host, port, want):
    from ui import share

    if space:
        monkeypatch.setenv("SPACE_HOST", space)
    else:
        monkeypatch.delenv("SPACE_HOST", raising=False)
    assert share.public_url(configured, host, port) == want


def test_a_wildcard_bind_links_to_this_machines_name(monkeypatch):
    import socket

    from ui import share

    monkeypatch.delenv("SPACE_HOST", raising=False)
    assert share.public_url(None, "0.0.0.0", 7860) == f"http://{socket.gethostname()}:7860/"


@pytest.mark.parametrize("configured", ["javascript:alert(1)", "ftp://example.org/", "https://example.org/?x=1",
                                        "https://example.org/#f", "https:///nohost", 'https://<a href="x">/'])
def test_bad_public_urls_are_refused(configured):
    from coalora.errors import CoaloraError
    from ui import share

    with pytest.raises(CoaloraError, match="--public-url"):
        share.public_url(configured, "127.0.0.1", 7860)


def test_public_url_option_and_environment(monkeypatch):
    import app

    monkeypatch.delenv("COALORA_PUBLIC_URL", raising=False)
    assert app.parse_args([]).public_url is None
    monkeypatch.setenv("COALORA_PUBLIC_URL", "https://coalora.example/")
    assert app.parse_args([]).public_url == "https://coalora.example/"
    assert app.parse_args(["--public-url", "https://other.example/"]).public_url == "https://other.example/"


def test_scratch_dirs_of_dead_processes_are_swept_live_ones_kept(tmp_path):
    import os
    import subprocess

    from ui import scratch

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f"{scratch.PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{scratch.PREFIX}{os.getppid()}-abc"
    other = tmp_path / "unrelated-123-abc"
    for d in (gone, live, other):
        (d / "gradio").mkdir(parents=True)
    assert scratch.sweep(tmp_path) == [gone]
    assert live.is_dir() and other.is_dir() and not gone.exists()


@pytest.mark.parametrize("scope, status", [
    ({"method": "POST", "path": "/gradio_api/upload", "headers": [(b"content-length", b"10")]}, 403),
    ({"method": "POST", "path": "/gradio_api/call/front", "headers": [(b"content-length", b"70000")]}, 413),
    ({"method": "POST", "path": "/gradio_api/call/front", "headers": [(b"content-length", b"-1")]}, 413),
    ({"method": "POST", "path": "/gradio_api/call/front", "headers": [(b"transfer-encoding", b"chunked")]}, 411),
    ({"method": "POST", "path": "/gradio_api/call/front", "headers": [(b"content-length", b"500")]}, None),
    ({"method": "GET", "path": "/gradio_api/upload", "headers": []}, None),
])
def test_request_guard(scope, status):
    from ui.guard import RequestGuard

    got = RequestGuard(None).refusal({"type": "http", **scope})
    assert (got and got[0]) == status
