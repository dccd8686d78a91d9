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
