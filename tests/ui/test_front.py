"""The explorer's front figure, predictions kept next to measurements, the budget box's handler,
the one hypervolume definition and Sample without the adapter (tiny models, CPU, seconds)."""

from __future__ import annotations

import math

import gradio as gr
import pytest
import torch

from coalora.search.front import FrontPoint, FrontResult

MODEL = "tiny-llama"


def _result(method: str = "coalora") -> FrontResult:
    front = [FrontPoint(f"{i:016x}", 2.1 + i * 0.1, None, 1e9 / (i + 1) ** 6, 1.0, 1e10, "allocator") for i in range(60)]
    front[40].ppl = front[40].pred_ppl  # measured points sit on the front at their value
    measured = [FrontPoint(front[40].config_hash, front[40].avg_bits, front[40].ppl)]
    return FrontResult({}, measured, front, {"measured": 1.0, "predicted": 2.0}, {"bits": 8.75, "ppl": 1000.0},
                       best=front[50], proposals=[front[30]], metric="ppl")


def test_every_marker_carries_its_hash_kind_and_tooltip():
    from ui.figures import Sizes, front_figure

    res = _result()
    prior = {res.measured[0].config_hash: (123.0, 100.0, 150.0, "before measuring")}
    fig = front_figure({"coalora": res}, 6.0, res.best, selected=("00000000000000aa", 5.0, 10.0),
                       sizes=Sizes(10.0, 5.0), priors={"coalora": prior})
    kinds = [t.meta["kind"] for t in fig.data if t.meta]
    # drawn predicted first, measured above it, then the star and the ring on top
    assert kinds == ["predicted", "proposal", "measured", "best", "selected"]
    assert fig.layout.hovermode is False  # plotly's own closest-point pick is off (ui.bridge picks)
    measured = next(t for t in fig.data if t.meta and t.meta["kind"] == "measured")
    tip = measured.text[0]
    assert measured.customdata[0] in tip and "measured ppl" in tip and "predicted ppl 123.00" in tip
    assert "before measuring" in tip and f"{10.0 * res.measured[0].avg_bits + 5.0:.1f} MB" in tip
    star = next(t for t in fig.data if t.meta and t.meta["kind"] == "best")
    assert star.customdata[0] == res.best.config_hash and res.best.config_hash in star.text[0]


def test_default_y_range_is_the_points_at_3_bits_or_more():
    from ui.figures import FOCUS_BITS, front_figure

    res = _result()
    fig = front_figure({"coalora": res})
    lo, hi = fig.layout.yaxis.range
    ys = [p.pred_ppl for p in res.front if p.avg_bits >= FOCUS_BITS]
    assert 10 ** lo <= min(ys) and 10 ** hi >= max(ys)
    assert 10 ** hi < max(p.pred_ppl for p in res.front) / 1e3  # the low-bit tail is off screen by default
    full = fig.layout.meta["full_log"]
    assert 10 ** full[1] >= max(p.pred_ppl for p in res.front)  # one "full range" click away
    assert fig.layout.meta["focus_lin"][0] >= 0


def test_an_empty_front_says_why():
    from ui.figures import front_figure

    empty = FrontResult({}, [], [], {"measured": 0.0}, {"bits": 8.75, "ppl": 1000.0}, refit="none: 0 stored")
    fig = front_figure({"coalora": empty}, 4.0)
    assert any("nothing measured under this convention" in a.text for a in fig.layout.annotations)


def test_one_normalised_hypervolume():
    from coalora.search.pareto import HV_BITS, HV_DEFINITION, hypervolume_2d, normalised_hv

    whole = hypervolume_2d([(HV_BITS[0], 0.0)], (8.75, math.log(1000)))  # the ideal point: the whole box
    assert normalised_hv(whole, 8.75, "ppl") == pytest.approx(1.0)
    assert normalised_hv(whole / 2, 8.75, "ppl") == pytest.approx(0.5)
    assert "8.75 bits, ppl 1000" in HV_DEFINITION["ppl"] and "KL" not in HV_DEFINITION["ppl"]
    with pytest.raises(Exception, match="unknown metric"):
        normalised_hv(1.0, 8.75, "bits")
    # a task front: error rate from 1 (the reference) down to the floor 0.001, every task metric alike
    task = hypervolume_2d([(HV_BITS[0], math.log(1e-3))], (8.75, 0.0))
    for m in ("task:shakespeare_nextline/acc_norm", "task:hellaswag/acc"):
        assert normalised_hv(task, 8.75, m) == pytest.approx(1.0)
    assert "task error rate 1" in HV_DEFINITION["task"]
    for bad in ("task", "task:", "task:x/"):
        with pytest.raises(Exception, match="unknown metric"):
            normalised_hv(1.0, 8.75, bad)


@pytest.fixture
def app(ui_app):
    return ui_app


def test_budget_box_clamps_into_the_box_and_skips_stale_keystrokes(app):
    from coalora.quant.config import MAX_BITS, MIN_BITS

    stale = app.refresh_budget(MODEL, "shakespeare", None, ["none"], 128, 2)
    assert all(isinstance(x, type(gr.skip())) for x in stale)  # a superseded keystroke changes nothing
    for typed, want in ((-1, MIN_BITS), (1.5, MIN_BITS), (9, MAX_BITS)):
        box, fig, rows, md = app.refresh_budget(MODEL, "shakespeare", typed, ["none"], 128, 2)
        assert box == pytest.approx(want, abs=1e-3)  # written back: box, line and summary agree
        assert MIN_BITS <= box <= MAX_BITS
        assert any(a.text == f"budget {want:.2f}" for a in fig.layout.annotations)
    box, fig, _, _ = app.refresh_budget(MODEL, "shakespeare", 5.5, ["none"], 128, 2)
    assert isinstance(box, type(gr.skip())) and any(a.text == "budget 5.50" for a in fig.layout.annotations)


def test_quick_eval_keeps_the_prediction_made_before_measuring(app):
    hashes = []
    for budget in (2.5, 4.0, 6.0, 7.0):
        h = app.select_best(MODEL, "shakespeare", budget, ["none"], 128, 2)[0]
        app.quick_eval(h, MODEL, "shakespeare", budget, ["none"], 128, 2)
        hashes.append(h)
    ex = app.MODELS.get(MODEL)
    fresh = ex.allocate(3.3)
    before = app.select(fresh.hash, MODEL, "shakespeare", 3.3, ["none"], 128, 2)[4]
    assert before["measured_ppl"] is None and before["predicted_how"] == "GP posterior"
    out = app.quick_eval(fresh.hash, MODEL, "shakespeare", 3.3, ["none"], 128, 2)
    d = out[5]
    assert d["measured_ppl"] is not None and d["predicted_how"] == "before measuring"
    assert d["predicted_ppl"] == pytest.approx(before["predicted_ppl"])  # not overwritten by the measurement
    assert d["predicted_ppl"] != pytest.approx(d["measured_ppl"], rel=1e-9)
    residuals = out[6]
    pts = [t for t in residuals.data if t.name == "Quick evals"][0]
    assert list(pts.customdata[-1])[0] == fresh.hash and pts.x[-1] == pytest.approx(d["measured_ppl"])
    # an earlier measurement (made before the GP existed) gets the held-out prediction
    from ui import predictions

    cv = app.check_eval("shakespeare", 128, 2)
    held = predictions.heldout(ex, "none", cv, "ppl")
    assert set(held) == {*hashes, fresh.hash} and all(v[3] == predictions.HELD_OUT for v in held.values())
    assert all(v[1] <= v[0] <= v[2] for v in held.values())


def test_sample_without_the_adapter_on_a_model_that_has_one(tmp_path):
    """The bug: Sample with CoA-LoRA unticked entered one disabled() context twice (AttributeError)."""
    from coalora.adapter.model import AdapterConfig, CoALoRAModel
    from coalora.adapter.trained import save_trained
    from coalora.explorer import Explorer
    from coalora.models import find_targets, tiny_llama
    from coalora.store import Store

    torch.manual_seed(0)
    model = tiny_llama(seed=0)
    coa = CoALoRAModel(model, MODEL, find_targets(model), AdapterConfig(rank=4))
    path = save_trained(coa, tmp_path / "tiny.safetensors", dtype=torch.float32)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 50)
    store = Store(tmp_path / "r.duckdb", seed_dir=None)
    try:
        ex = Explorer(MODEL, adapter=path, store=store, corpus=str(corpus))
        cfg = ex.allocate(3.0)
        for method in ("none", "none", "coalora"):
            r = ex.sample(cfg, "Now is", 4, method)
            assert isinstance(r["quantized"], str) and isinstance(r["dense"], str) and r["dense_s"] > 0
        assert all(layer.enabled for layer in ex.coa.layers.values())  # the adapter is switched back on
    finally:
        store.close()
