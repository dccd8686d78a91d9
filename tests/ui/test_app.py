"""The explorer's events (ui/front_view.py, selection.py, quick_eval.py, sample.py, bundle.py, share.py,
reports.py) and its named API endpoints, on the tiny model.

The tiny model has no trained adapter, so these also cover the quantization-only path: a model
with no stored evaluations starts without a GP, the allocator gives a first configuration, and a
few quick evals build its front.
"""

from __future__ import annotations

import json
import zipfile

import gradio as gr
import pytest

MODEL = "tiny-llama"
VIEW = dict(budget=3.0, methods=["coalora", "none"], seqlen=128, windows=2)


@pytest.fixture
def app(ui_app):
    return ui_app


def _view(v=VIEW):
    """The controls after the model: eval set, budget, methods, seqlen, windows."""
    return ["shakespeare", v["budget"], v["methods"], v["seqlen"], v["windows"]]


def test_app_builds_with_named_endpoints(app):
    from ui.layout import build_app

    demo = build_app(MODEL)
    assert isinstance(demo, gr.Blocks)
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"front", "select", "select_best", "quick_eval", "sample", "export"} <= names
    from coalora import limits

    blocks = {getattr(b, "label", None): b for b in demo.blocks.values()}
    assert blocks["Windows"].maximum == limits.APP_MAX_WINDOWS == app.MAX_WINDOWS  # the page and the API agree
    assert blocks["New tokens"].maximum == limits.MAX_NEW_TOKENS
    assert blocks["Prompt"].max_length == limits.MAX_PROMPT_CHARS
    assert [c[1] for c in blocks["Tokens per window"].choices] == list(limits.APP_SEQLENS)
    assert all(not d.preprocess for d in demo.fns.values() if d.inputs)  # the handlers check every argument


def test_model_choices_mark_trained_and_hub_models(app, monkeypatch):
    models = app.Models(default="smollm2-135m")
    labels = dict((v, k) for k, v in models.choices())
    assert "trained CoA-LoRA" in labels["smollm2-135m"]
    assert "Qwen/Qwen2.5-0.5B" not in labels  # offline and not cached here: the page cannot load it
    assert "Qwen/Qwen2.5-0.5B" in models.allowed()  # the API still answers it with why it cannot load
    from ui import state

    monkeypatch.setattr(state, "hub_unavailable", lambda spec: "")  # a machine that can reach the hub
    assert "needs the hub" in dict((v, k) for k, v in models.choices())["Qwen/Qwen2.5-0.5B"]
    assert MODEL not in labels and MODEL not in models.allowed()  # the test model only when it is the app's
    assert MODEL in dict((v, k) for k, v in app.MODELS.choices()) and MODEL in app.MODELS.allowed()


def test_a_test_model_is_refused_without_loading_unless_it_is_the_apps(app):
    from coalora.errors import CoaloraError

    models = app.Models(default="smollm2-135m")
    with pytest.raises(CoaloraError, match="unknown model 'tiny-llama'"):
        models.get(MODEL)
    assert models._explorers == {} and models.store is None  # nothing loaded, no store opened


@pytest.mark.parametrize("name", ["nope", "../../etc/passwd", "/tmp", ""])
def test_only_registry_models_load(app, name):
    with pytest.raises(gr.Error, match="unknown model"):
        app.model_summary(name)


@pytest.mark.parametrize("value, message", [
    ("abc", "must be a number of bits per weight"), (None, "must be a number of bits per weight"),
    ([4], "must be a number of bits per weight"), ({"b": 4}, "must be a number of bits per weight"),
    (float("nan"), "outside the feasible range"), (float("inf"), "outside the feasible range"),
    (-float("inf"), "outside the feasible range"), ("nan", "outside the feasible range"),
    (True, "outside the feasible range"),
])
def test_bad_budgets_are_refused_by_the_one_budget_check(app, value, message):
    """Not clamped: what is no finite number is refused, in coalora.quant.config.check_budget's words."""
    from coalora.errors import CoaloraError
    from coalora.quant.config import check_budget

    with pytest.raises(CoaloraError, match=message) as e:
        app.check_budget(value)
    with pytest.raises(CoaloraError) as core:
        check_budget(value)
    assert str(e.value) == str(core.value)


@pytest.mark.parametrize("value, want", [(8, 8), (8.0, 8), ("8", 8), (" 8 ", 8), (1, 1), (32, 32)])
def test_whole_numbers_are_accepted_in_any_spelling(app, value, want):
    assert app.check_int(value, "windows", 1, 32) == want


@pytest.mark.parametrize("value", [8.5, float("nan"), float("inf"), -float("inf"), True, None, [8], {"n": 8}, "8.5",
                                   "eight", "1" * 100, 0, 33, -1, 1e308])
def test_anything_else_is_one_error_quoting_it_short(app, value):
    from coalora.errors import CoaloraError

    with pytest.raises(CoaloraError, match="windows must") as e:
        app.check_int(value, "windows", 1, 32)
    assert len(str(e.value)) < 120


@pytest.mark.parametrize("call", [
    lambda a: a.refresh_front('<a href="http://evil.example">x</a>', "shakespeare", 3.0, ["none"], 128, 2),
    lambda a: a.refresh_front(MODEL, "<img src=x onerror=alert(1)>", 3.0, ["none"], 128, 2),
    lambda a: a.refresh_front(MODEL, "shakespeare", "<b>3</b>", ["none"], 128, 2),
    lambda a: a.refresh_front(MODEL, "shakespeare", 3.0, ["<script>x</script>"], 128, 2),
    lambda a: a.refresh_front(MODEL, "shakespeare", 3.0, ["none"], 128, 2, "<i>ppl</i>"),
    lambda a: a.select("<svg onload=alert(1)>", MODEL, *_view()),
    lambda a: a.sample("0123456789abcdef", MODEL, ["none"], ["<b>"], 4),
])
def test_error_toasts_escape_markup(app, call):
    with pytest.raises(gr.Error) as e:
        call(app)
    message = e.value.message
    assert "<" not in message and ">" not in message and "&lt;" in message


def test_out_of_range_budget_is_clamped(app):
    from coalora.quant.config import MAX_BITS, MIN_BITS

    assert app.check_budget(1.0) == 2.033 and MIN_BITS < 2.033 < MIN_BITS + 1e-3  # on the box's 0.001 grid
    assert app.check_budget(-5) == 2.033
    assert app.check_budget(99) == MAX_BITS == 8.625
    assert app.check_budget(3.25) == 3.25
    assert app.check_budget("9") == 8.625 and app.check_budget(10**400) == 8.625  # text and huge ints clamp too


@pytest.mark.parametrize("seqlen, windows", [(100, 2), (128, 0), (128, 33), (128, 10**9), ("x", 2)])
def test_bad_eval_settings_are_errors(app, seqlen, windows):
    with pytest.raises(gr.Error):
        app.refresh_front(MODEL, "shakespeare", 3.0, ["none"], seqlen, windows)


@pytest.mark.parametrize("h", ["", "xyz", "0123456789abcdeg", "'; DROP TABLE configs; --", "ffffffffffffffff"])
def test_bad_or_unknown_hashes_are_errors(app, h):
    with pytest.raises(gr.Error):
        app.select(h, MODEL, *_view())


def test_quantization_only_front_grows_with_quick_evals(app):
    fig, rows, md = app.refresh_front(MODEL, *_view())
    assert rows == [] and "no GP yet" in md  # nothing stored for this model yet
    hashes = []
    for budget in (2.5, 4.0, 6.0):
        sel = app.select_best(MODEL, "shakespeare", budget, VIEW["methods"], VIEW["seqlen"], VIEW["windows"])
        h, summary, adapter_md, heat, details, fig, link, layers, cmp_md, cmp_fig = sel
        assert details["avg_bits"] <= budget + 1e-6 and details["method"] == "none"
        assert "no trained CoA-LoRA adapter" in adapter_md and details["adapter_ms"] is None
        assert f"config={h}" in link and "model=tiny-llama" in link
        assert len(heat.data[0].z) == 2 and len(heat.data[0].z[0]) == 7  # blocks x module types
        result, fig, rows, md, summary, details, residuals = app.quick_eval(h, MODEL, "shakespeare", budget,
                                                                           *_view()[2:])
        assert "measured in" in result and details["measured_ppl"] > 1
        hashes.append(h)
    assert len(set(hashes)) == 3
    assert "3 measured" in md and "predicted front of" in md  # a GP now
    assert rows and all(r[1] == "none" for r in rows)
    bits = [r[2] for r in rows]
    assert bits == sorted(bits)  # the predicted front, by increasing bits
    again = app.quick_eval(hashes[0], MODEL, "shakespeare", 2.5, *_view()[2:])
    assert "cached result" in again[0]
    # the measured points are on the figure, clickable by their hash
    custom = {c for t in fig.data if t.customdata is not None for c in t.customdata}
    assert set(hashes) <= custom


def test_operator_eval_sets_get_their_own_front(app, tmp_path):
    from coalora.errors import CoaloraError

    text = tmp_path / "mine.txt"
    text.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 40)
    assert app.add_eval_set(f"mine={text}") == "mine"
    for bad in ("mine", "=x", f"other={tmp_path / 'missing.txt'}"):
        with pytest.raises(CoaloraError):
            app.add_eval_set(bad)
    with pytest.raises(gr.Error, match="unknown eval set"):
        app.refresh_front(MODEL, "/etc/passwd", 3.0, ["none"], 128, 2)
    h = app.select_best(MODEL, "mine", 4.0, ["none"], 128, 2)[0]
    out = app.quick_eval(h, MODEL, "mine", 4.0, ["none"], 128, 2)
    assert "mine" in out[5]["convention"] and out[5]["measured_ppl"] > 1
    ev = app.MODELS.get(MODEL).store.evaluations(model=MODEL)
    assert len(ev) == 1 and ev[0].eval_set.startswith(str(text))  # recorded under the local corpus's id
    assert "**no adapter**: 0 measured" in app.refresh_front(MODEL, "shakespeare", 4.0, ["none"], 128, 2)[2]


def test_select_row_and_api_front(app):
    for budget in (2.5, 4.0, 6.0):
        h = app.select_best(MODEL, "shakespeare", budget, *_view()[2:])[0]
        app.quick_eval(h, MODEL, "shakespeare", budget, *_view()[2:])
    _, rows, _ = app.refresh_front(MODEL, *_view())

    class Evt:
        row_value = rows[0]

    out = app.select_row(MODEL, *_view(), evt=Evt())
    assert out[0] == rows[0][0]
    js = app.api_front(MODEL, 4.0, "none", 128, 2)
    assert len(js["measured"]) == 3 and js["front"] and js["best"]["avg_bits"] <= 4.0
    with pytest.raises(gr.Error, match="coalora compare"):
        app.api_front(MODEL, 4.0, "qlora", 128, 2)
    with pytest.raises(gr.Error, match="unknown front metric"):
        app.api_front(MODEL, 4.0, "none", 128, 2, "shakespeare", "loss")


def test_kl_axis_shows_the_measured_kl(app):
    """The y-axis selector: the same quick evals give a KL front; the selection shows KL next to ppl."""
    hashes = []
    for budget in (2.5, 4.0, 6.0):
        h = app.select_best(MODEL, "shakespeare", budget, *_view()[2:])[0]
        result = app.quick_eval(h, MODEL, "shakespeare", budget, *_view()[2:])
        assert "KL to the unquantized model" in result[0] and "strided-v1" in result[0]
        assert result[5]["measured_kld"] is not None and result[5]["measured_kld"] >= 0
        assert "nats/token" in result[4]  # the selection summary
        hashes.append(h)
    fig, rows, md = app.refresh_front(MODEL, *_view(), "kld")
    assert "3 measured" in md and "KL" in md and "KL to unquantized" in fig.layout.yaxis.title.text
    stored = {e.config_hash: e.kld for e in app.MODELS.get(MODEL).store.evaluations(model=MODEL)}
    measured = [t for t in fig.data if t.name == "no adapter measured"][0]
    assert dict(zip(measured.customdata, measured.y)) == pytest.approx(stored)
    sel = app.select(hashes[1], MODEL, *_view(), "kld")
    # measured before any GP existed: no prediction was made for it, and none is invented afterwards
    assert sel[4]["metric"] == "kld" and sel[4]["predicted_kld"] is None and sel[4]["measured_kld"] is not None
    fresh = app.MODELS.get(MODEL).allocate(5.0).hash  # unmeasured: the KL GP's prediction
    other = app.select(fresh, MODEL, *_view(), "kld")
    assert other[4]["predicted_kld"] is not None and other[4]["measured_kld"] is None and "predicted KL" in other[1]
    ring = [t for t in sel[5].data if t.name == "selected"][0]
    assert ring.y[0] == pytest.approx(stored[hashes[1]])  # ringed on the KL axis
    with pytest.raises(gr.Error, match="unknown front metric"):
        app.refresh_front(MODEL, *_view(), "bits")


def test_a_result_of_another_spec_is_not_a_cache_hit(app):
    import math

    from coalora.store import Evaluation

    ex = app.MODELS.get(MODEL)
    cfg = ex.allocate(4.0)
    old = Evaluation(MODEL, cfg.hash, "none", "", ex.eval_set, 128, 2, 254, 1e6, math.log(1e6), cfg.avg_bits,
                     eval_spec="prefix-v0")
    assert ex.store.add_evaluation(old, config=cfg)
    assert ex.cached(cfg, "none", 128, 2) is None
    out = app.quick_eval(cfg.hash, MODEL, "shakespeare", 4.0, ["none"], 128, 2)
    assert "measured in" in out[0] and out[5]["measured_ppl"] < 1e6 and out[5]["eval_spec"] == "strided-v1"
    assert ex.cached(cfg, "none", 128, 2).eval_spec == "strided-v1"
    assert len(ex.store.evaluations(model=MODEL)) == 2  # both kept, neither replaced


def test_methods_tab_shows_the_protocol_comparison(app, monkeypatch, tmp_path):
    import types

    png = tmp_path / "front.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    from ui import reports

    fake = types.SimpleNamespace(load=lambda directory=None: {"markdown": "# summary [1.0, 2.0]", "front_png": png})
    monkeypatch.setattr(reports, "protocol_report", lambda: fake)
    assert app.comparison() == ("# summary [1.0, 2.0]", str(png))
    monkeypatch.setattr(reports, "protocol_report", lambda: types.SimpleNamespace(load=lambda directory=None: None))
    md, img = app.comparison()
    assert img is None and "has not been run yet" in md and "coalora compare --out data/results/protocol" in md
    monkeypatch.setattr(reports, "protocol_report", lambda: None)  # a checkout without the module
    assert app.comparison()[1] is None


def test_sample_and_its_limits(app):
    h = app.select_best(MODEL, "shakespeare", 4.0, *_view()[2:])[0]
    quant, dense, note = app.sample(h, MODEL, ["none"], "To be", 5)
    assert quant.startswith("To be") and dense.startswith("To be") and "unquantized" in note
    with pytest.raises(gr.Error, match="prompt is empty"):
        app.sample(h, MODEL, ["none"], "  ", 5)
    assert app.sample(h, MODEL, ["none"], "To be", 64)[2].endswith("64 new tokens).")  # the page's maximum
    for n in (65, 10_000, 8.5, float("nan")):
        with pytest.raises(gr.Error, match="max new tokens"):
            app.sample(h, MODEL, ["none"], "To be", n)
    with pytest.raises(gr.Error, match="lone surrogate"):
        app.sample(h, MODEL, ["none"], "To be \ud800", 5)
    with pytest.raises(gr.Error, match="protocol comparison"):
        app.sample(h, MODEL, ["qlora"], "To be", 5)
    with pytest.raises(gr.Error, match="characters"):
        app.sample(h, MODEL, ["none"], "x" * 5000, 5)


def test_export_serves_a_loadable_bundle_from_the_export_dir(app):
    from coalora.export.bundle import read_bundle_meta

    h = app.select_best(MODEL, "shakespeare", 4.0, *_view()[2:])[0]
    paths, note = app.export(h, MODEL, "shakespeare", 128, 2)
    bundle, cfg = paths
    assert str(bundle).startswith(str(app.EXPORT_DIR)) and bundle.endswith(".zip")
    assert zipfile.is_zipfile(bundle) and "MiB" in note
    assert json.loads(open(cfg).read())["model"] == MODEL
    _, meta = read_bundle_meta(bundle)  # every file checked against its recorded sha256
    assert meta["config_hash"] == h and meta["model"] == MODEL


def test_shared_link_restores_the_selection(app, monkeypatch):
    class Req:
        query_params = {"model": MODEL, "budget": "3.5", "config": "00000000deadbeef"}
        headers = {"referer": "http://evil.example/phish", "host": "evil.example"}

    from ui import share

    monkeypatch.setattr(share, "PUBLIC_URL", "http://127.0.0.1:7861/")
    assert app.on_load("smollm2-135m", Req()) == (MODEL, "shakespeare", 3.5, "00000000deadbeef",
                                                  ["coalora", "none"], 256, 8)
    assert app.share_link(MODEL, 3.5, "00000000deadbeef") == \
        "http://127.0.0.1:7861/?model=tiny-llama&budget=3.50&config=00000000deadbeef"

    class Bad:
        query_params = {"model": "/etc", "budget": "nan", "config": "<script>"}
        headers = {}

    assert app.on_load(MODEL, Bad()) == (MODEL, "shakespeare", 4.0, "", ["coalora", "none"], 256, 8)  # each bad
    # field: a warning and its default


def test_gradio_client_drives_the_named_endpoints(app, tmp_path):
    """In-process server + gradio_client: select, quick eval, export download, front JSON, an error."""
    from gradio_client import Client

    from tests.conftest import launch_local

    demo, url = launch_local(MODEL, app.EXPORT_DIR)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        view = [MODEL, *_view()]
        # outputs: (hash, summary, adapter md, heatmap, details JSON, front, share link)
        sel = client.predict(*view, api_name="/select_best")
        h = sel[0]
        assert len(h) == 16 and sel[4]["config_hash"] == h and f"config={h}" in sel[6]
        again = client.predict(h, *view, api_name="/select")
        assert again[0] == h and h in again[1]
        ev = client.predict(h, *view, api_name="/quick_eval")
        assert "perplexity" in ev[0] and ev[5]["measured_ppl"] > 1
        files, note = client.predict(h, MODEL, "shakespeare", 128, 2, api_name="/export")
        local = [f["value"] if isinstance(f, dict) else f for f in files]
        assert any(str(p).endswith(".zip") and zipfile.is_zipfile(p) for p in local)
        front = client.predict(MODEL, 4.0, "none", 128, 2, api_name="/front")
        assert front["measured"][0]["config_hash"] == h
        with pytest.raises(Exception, match="not a configuration hash"):
            client.predict("nothex", *view, api_name="/select")
        client.close()
        import urllib.error
        import urllib.request

        for path in ("/etc/passwd", str(app.EXPORT_DIR.parent / "results.duckdb")):
            with pytest.raises(urllib.error.HTTPError):  # nothing outside the export dir is served
                urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
    finally:
        demo.close()
