"""What the app process keeps between events: the loaded models, the last fronts, the export directory.

All of it is shared by every browser session (per-session state, the pinned comparison and the
Quick eval residuals, lives in :mod:`ui.compare` and :mod:`ui.predictions`). Other modules read
these names as ``state.MODELS`` etc. at call time, so a test can swap any of them for its own.

* :data:`MODELS`: the models the app offers (:class:`Models`), each loaded once into a
  :class:`coalora.explorer.Explorer` and kept;
* :data:`FRONTS`: the last fronts per query (:class:`FrontCache`), so a selection redraws the
  figure without refitting;
* :data:`EXPORT_DIR`: the only directory the app serves downloads from besides Gradio's own cache.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ui import figures
from ui.inputs import check_choice

EXPORT_DIR = Path(gr.utils.get_upload_folder()) / "coalora-exports"
"""The only directory the app serves downloads from besides Gradio's own cache (:mod:`ui.serve`
points it inside this process's scratch directory, :mod:`ui.scratch`)."""


def hub_unavailable(spec: Any) -> str:
    """Why a hub model cannot load in this process ("" when it can): offline (``HF_HUB_OFFLINE``)
    and not in the local hub cache."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True", "YES", "yes"):
        return ""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec.hub_id or spec.name, "config.json")
    except Exception:  # a malformed cache: treat as absent
        hit = None
    return "" if isinstance(hit, str) else "the hub is offline here and the model is not in the local cache"


class Models:
    """The models the app offers: registry entries only (never a path from the browser), and of the
    test models only the one the operator started the app with (:attr:`default`)."""

    def __init__(self, default: str | None = None) -> None:
        self._explorers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.store = None
        """A shared :class:`coalora.store.Store` (None: opened on the first load)."""
        self.default = default
        """The app's model (build_app sets it): offered even when it is a test model."""

    def allowed(self) -> list[str]:
        """The names the page lists and the API takes: every non-test registry model, plus :attr:`default`."""
        from coalora.models import REGISTRY

        return [name for name, spec in REGISTRY.items() if spec.source != "tiny" or name == self.default]

    def choices(self, default: str | None = None) -> list[tuple[str, str]]:
        """Dropdown entries: :meth:`allowed` (with ``default`` offered too), marked by adapter; hub
        models only where they can load (:func:`hub_unavailable`): the page cannot fetch one."""
        from coalora.explorer import default_adapter
        from coalora.models import REGISTRY

        out = []
        for name, spec in REGISTRY.items():
            if spec.source == "tiny" and name not in (default, self.default):
                continue
            if spec.source == "hub" and name not in (default, self.default) and hub_unavailable(spec):
                continue
            tag = "trained CoA-LoRA" if default_adapter(name) else "quantization only"
            hub = ", needs the hub" if spec.source == "hub" else ""
            out.append((f"{name} ({tag}{hub})", name))
        return out

    def check(self, name: Any) -> str:
        """``name`` if the app offers it, else one clear error (nothing is loaded)."""
        return check_choice(name, "model", self.allowed())

    def get(self, name: Any) -> Any:
        """The loaded :class:`coalora.explorer.Explorer` of ``name`` (loads it on first use)."""
        from coalora.explorer import Explorer

        name = self.check(name)
        with self._lock:  # one load per model even when several sessions ask at once
            if name not in self._explorers:
                if self.store is None:
                    from coalora.store import Store

                    self.store = Store()
                self._explorers[name] = Explorer(name, store=self.store)
            return self._explorers[name]


class FrontCache:
    """query key -> method -> FrontResult, each kept :attr:`ttl` seconds (at most ~64 keys), so a
    selection redraws the figure without refitting the GP."""

    def __init__(self, ttl: float = 120.0) -> None:
        self.ttl = ttl
        self._d: dict[tuple, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> dict | None:
        """The fronts stored under ``key`` if still fresh, else None."""
        with self._lock:
            hit = self._d.get(key)
            return hit[1] if hit and time.monotonic() - hit[0] < self.ttl else None

    def put(self, key: tuple, fronts: dict) -> None:
        """Keep ``fronts`` under ``key`` (the whole cache is dropped past 64 keys)."""
        with self._lock:
            if len(self._d) > 64:
                self._d.clear()
            self._d[key] = (time.monotonic(), fronts)

    def drop(self, model: str) -> None:
        """Forget every front of ``model`` (a new measurement changes them)."""
        with self._lock:
            for k in [k for k in self._d if k[0] == model]:
                del self._d[k]


MODELS = Models()
FRONTS = FrontCache()
_SIZES: dict[str, figures.Sizes] = {}


def sizes(model: str) -> figures.Sizes:
    """The model's size in MB against average bits (:class:`ui.figures.Sizes`), computed once:
    the quantized matrices at ``bits / 8`` bytes per weight, everything else in 16 bits."""
    if model not in _SIZES:
        ex = MODELS.get(model)
        q = sum(t.numel for t in ex.targets)
        total = sum(p.numel() for p in ex.model.parameters())
        _SIZES[model] = figures.Sizes(per_bit=q / 8 / 1e6, offset=(total - q) * 2 / 1e6)
    return _SIZES[model]
