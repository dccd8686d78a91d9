"""Shared fixtures: tiny config-built models (no download) and isolated caches."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture
def tiny_model():
    from coalora.models import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """A fresh, empty $COALORA_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("COALORA_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def default_model():
    """The real offline default model (prepared by `make setup` / `coalora prepare`)."""
    from coalora import assets
    from coalora.models import load_model

    assets.prepare_model(log=lambda m: None)
    return load_model("smollm2-135m")


@pytest.fixture
def ui_app(tmp_path, monkeypatch):
    """``ui.handlers`` on tiny-llama with this test's own store, front cache, exports, pins and predictions."""
    from coalora.store import Store
    from ui import compare, handlers, predictions

    models = handlers.Models(default="tiny-llama")
    models.store = Store(tmp_path / "results.duckdb")
    monkeypatch.setattr(handlers, "MODELS", models)
    monkeypatch.setattr(handlers, "FRONTS", handlers._FrontCache())
    monkeypatch.setattr(handlers, "EXPORT_DIR", tmp_path / "exports")
    monkeypatch.setattr(handlers, "PUBLIC_URL", "http://127.0.0.1:7861/")
    monkeypatch.setattr(compare, "PINS", compare.Pins())
    monkeypatch.setattr(predictions, "STORE", predictions._Store())
    monkeypatch.setattr(predictions, "RESIDUALS", predictions.Residuals())
    yield handlers
    models.store.close()
