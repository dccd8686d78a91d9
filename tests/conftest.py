"""Shared fixtures: tiny config-built models (no download) and isolated caches."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config):
    """Bind transformers' log handler to the session's stderr before any test runs: it binds to
    whatever ``sys.stderr`` is at its first log call, and a test's ``capsys`` stream is closed
    after that test, so every later transformers warning would print "--- Logging error ---"
    (and break the one-line error checks of tests/test_bad_input.py) when tests/test_cli.py runs first."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")


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


class UiApp:
    """The app's events, checks and state as one namespace: ``app.select`` is
    :func:`ui.selection.select`, ``app.MODELS`` is :data:`ui.state.MODELS` as it is now, and so on
    (each name looked up in :data:`MODULES`, in order, at each use). Setting a name here is refused:
    patch the module that holds it, where the events read it."""

    MODULES = ("state", "inputs", "convention", "front_view", "selection", "quick_eval", "sample", "bundle", "share",
               "reports", "panels")

    def __getattr__(self, name: str):
        import importlib

        for m in self.MODULES:
            module = importlib.import_module(f"ui.{m}")
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"no ui module of {self.MODULES} has {name!r}")

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"set {name!r} on the ui module that holds it, not on the UiApp namespace")


@pytest.fixture
def ui_app(tmp_path, monkeypatch):
    """The UI (:class:`UiApp`) on tiny-llama with this test's own store, front cache, exports, eval
    sets, share address, pins and predictions."""
    from coalora.store import Store
    from ui import compare, convention, predictions, share, state

    models = state.Models(default="tiny-llama")  # what build_app("tiny-llama") sets: the operator's test model
    models.store = Store(tmp_path / "results.duckdb")
    monkeypatch.setattr(state, "MODELS", models)
    monkeypatch.setattr(state, "FRONTS", state.FrontCache())
    monkeypatch.setattr(state, "EXPORT_DIR", tmp_path / "exports")
    monkeypatch.setattr(convention, "EVAL_SETS", dict(convention.EVAL_SETS))
    monkeypatch.setattr(share, "PUBLIC_URL", "http://127.0.0.1:7861/")
    monkeypatch.setattr(compare, "PINS", compare.Pins())
    monkeypatch.setattr(predictions, "STORE", predictions._Store())
    monkeypatch.setattr(predictions, "RESIDUALS", predictions.Residuals())
    yield UiApp()
    models.store.close()


def launch_local(model: str, export_dir) -> tuple:
    """Build the app for ``model`` and serve it in this process on a free local port, allowing downloads
    from ``export_dir`` as ``ui.serve`` does; returns (demo, url). The caller closes the demo."""
    from ui.layout import build_app, launch_kwargs

    demo = build_app(model)
    kw = launch_kwargs()
    kw["allowed_paths"] = [str(export_dir)]
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, **kw)
    return demo, url
