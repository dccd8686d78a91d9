"""The explorer's comparison, downloads and share links (tiny model, CPU, seconds)."""

from __future__ import annotations

import pandas as pd
import pytest

MODEL = "tiny-llama"


class Req:
    """A browser request: its session and the page's query parameters."""

    def __init__(self, session: str = "s1", **query) -> None:
        self.session_hash = session
        self.query_params = query
        self.headers = {}


@pytest.fixture
def app(ui_app):
    return ui_app


def _measure(app, budgets=(2.5, 4.0, 6.0, 7.0)) -> list[str]:
    out = []
    for b in budgets:
        h = app.select_best(MODEL, "shakespeare", b, ["none"], 128, 2)[0]
        app.quick_eval(h, MODEL, "shakespeare", b, ["none"], 128, 2)
        out.append(h)
    return out


def test_pin_then_select_compares_the_pair(app):
    from ui import panels

    a, b = _measure(app, (3.0, 6.0))
    req = Req("pinner")
    panels.pin(a, MODEL, "shakespeare", 3.0, ["none"], 128, 2, "ppl", req)
    out = app.select(b, MODEL, "shakespeare", 3.0, ["none"], 128, 2, "ppl", req)
    md, fig = out[8], out[9]
    assert f"`{a}`" in md and f"`{b}`" in md and "size (MB)" in md and "measured ppl" in md
    assert "adapter generated in" in md and "predicted KL" in md
    diff = fig.data[2]  # A, B, then B - A
    ex = app.MODELS.get(MODEL)
    ca, cb = ex.config(a), ex.config(b)
    t = ca.targets[0]
    assert diff.z[t.block][0] == pytest.approx(cb[t.name].bits - ca[t.name].bits)
    kinds = [tr.meta["kind"] for tr in out[5].data if tr.meta]
    assert "pinned" in kinds and "selected" in kinds  # both ringed on the front
    link = out[6]
    assert f"config={b}" in link and f"pin={a}" in link
    other = app.select(b, MODEL, "shakespeare", 3.0, ["none"], 128, 2, "ppl", Req("someone else"))
    assert other[8] == app.NO_PIN  # a pin belongs to its own session
    unpinned = panels.unpin(b, MODEL, "shakespeare", 3.0, ["none"], 128, 2, "ppl", req)
    assert unpinned[8] == app.NO_PIN


def test_share_link_restores_everything_including_the_pair(app):
    link = app.share_link(MODEL, 3.5, "00000000000000bb", "shakespeare", ["none"], 128, 2, "00000000000000aa")
    query = dict(p.split("=") for p in link.split("?", 1)[1].split("&"))
    assert query == {"model": MODEL, "budget": "3.50", "methods": "none", "seqlen": "128", "windows": "2",
                     "config": "00000000000000bb", "pin": "00000000000000aa"}
    req = Req("opener", **query)
    assert app.on_load("smollm2-135m", req) == (MODEL, "shakespeare", 3.5, "00000000000000bb", ["none"], 128, 2)
    from ui import compare

    assert compare.PINS.get("opener") == "00000000000000aa"
    bad = Req("bad", methods="qlora", seqlen="100", windows="2", pin="<b>")
    assert app.on_load(MODEL, bad)[4:] == (["coalora", "none"], 256, 8)  # warnings and defaults
    assert compare.PINS.get("bad") == ""


def test_downloads_read_back(app):
    from ui import panels

    hashes = _measure(app)
    view = (MODEL, "shakespeare", 4.0, ["none"], 128, 2, "ppl")
    csv, parquet = panels.front_files(*view)
    front, again = pd.read_csv(csv), pd.read_parquet(parquet)
    assert len(front) == len(again) > 100 and list(front.columns) == list(again.columns)
    assert {"config_hash", "avg_bits", "size_mb", "predicted_ppl", "log_sigma", "measured_ppl", "measured_kld",
            "on_predicted_front"} <= set(front.columns)
    measured = front.dropna(subset=["measured_ppl"])
    assert set(measured.config_hash) == set(hashes) and front.config_hash.is_unique
    stored = {e.config_hash: e.ppl for e in app.MODELS.get(MODEL).store.evaluations(model=MODEL)}
    assert dict(zip(measured.config_hash, measured.measured_ppl)) == pytest.approx(stored)
    assert (front.predicted_lo <= front.predicted_ppl).all() and (front.predicted_ppl <= front.predicted_hi).all()
    ev_csv, ev_parquet = panels.evaluation_files(MODEL)
    stored_n = len(app.MODELS.get(MODEL).store.evaluations(model=MODEL))
    assert set(pd.read_csv(ev_csv).config_hash) == set(hashes) and len(pd.read_parquet(ev_parquet)) == stored_n
    lay_csv, _ = panels.layer_files(hashes[0], MODEL)
    layers = pd.read_csv(lay_csv)
    cfg = app.MODELS.get(MODEL).config(hashes[0])
    assert list(layers.columns)[:5] == ["module", "block", "type", "shape", "b0"] and len(layers) == len(cfg.targets)
    assert (layers.bits * [t.numel for t in cfg.targets]).sum() / sum(t.numel for t in cfg.targets) == \
        pytest.approx(cfg.avg_bits, rel=1e-4)
    assert all(p.startswith(str(app.EXPORT_DIR)) for p in (csv, ev_csv, lay_csv))
    import gradio as gr

    with pytest.raises(gr.Error, match="no method ticked"):
        panels.front_files(MODEL, "shakespeare", 4.0, [], 128, 2, "ppl")
