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
    from ui import handlers
    from ui.layout import launch_kwargs

    kw = launch_kwargs()
    assert kw["allowed_paths"] == [str(handlers.EXPORT_DIR)]
    assert "share" not in kw and kw["show_error"] is False
