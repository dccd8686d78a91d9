"""Quick eval's lm-eval option and the task-accuracy front (ui/task_eval.py, quick_eval.py, selection.py)
on the real offline SmolLM2 with its trained adapter: lm-eval needs a Hugging Face tokenizer, which
the tiny test model has not. Bounded: 1 window of 128 tokens and 8 task documents per evaluation."""

from __future__ import annotations

import math

import pytest

MODEL = "smollm2-135m"
TASK_AXIS = "task:shakespeare_nextline/acc_norm"


@pytest.fixture
def app(ui_app, default_model):
    return ui_app


def _args(h: str, budget: float, metric: str = "ppl", docs: int = 8) -> list:
    return [h, MODEL, "shakespeare", budget, ["coalora"], 128, 1, metric, docs]


def _configs(app, n: int) -> list:
    ex = app.MODELS.get(MODEL)
    return [ex.allocate(b) for b in (2.5, 3.5, 5.0)[:n]]


def test_quick_eval_scores_the_task_stores_it_and_the_selection_shows_it(app):
    cfg = _configs(app, 1)[0]
    ex = app.MODELS.get(MODEL)
    before = ex.store.count("task_metrics")
    result, *_, summary, details, _ = app.quick_eval(*_args(cfg.hash, 4.0))
    rows = {r["metric"]: r for r in details["tasks"]}
    assert set(rows) == {"acc", "acc_norm"} and all(r["documents"] == 8 for r in rows.values())
    assert all(0 <= r["value"] <= 1 and r["stderr"] > 0 for r in rows.values())
    assert "shakespeare_nextline (8 documents)" in result and "measured in" in result
    assert f"acc_norm **{rows['acc_norm']['value']:.3f}**" in result and "lm-eval accuracy" in summary
    stored = ex.store.task_metrics(model=MODEL, config_hash=cfg.hash, method="coalora", doc_limit=8)
    assert {(r["metric"], r["value"]) for r in stored} == {(m, r["value"]) for m, r in rows.items()}
    assert ex.store.count("task_metrics") == before + 2
    again, *_ = app.quick_eval(*_args(cfg.hash, 4.0))  # same documents, lm-eval and items: read back
    assert "lm-eval, zero-shot" in again and "cached result" in again.split("lm-eval, zero-shot")[1]
    assert ex.store.count("task_metrics") == before + 2
    plain, *_ = app.quick_eval(*_args(cfg.hash, 4.0, docs=0))  # 0 documents on the ppl axis: no task
    assert "lm-eval" not in plain
    from coalora.export.bundle import read_bundle_meta

    (bundle, _), _ = app.export(cfg.hash, MODEL, "shakespeare", 128, 1)  # the bundle records what was measured
    zdir, meta = read_bundle_meta(bundle)
    recorded = {t["metric"]: t for t in meta["measured"]["tasks"]}
    assert {m: (t["value"], t["documents"]) for m, t in recorded.items()} == \
        {m: (r["value"], 8) for m, r in rows.items()}
    import zipfile

    with zipfile.ZipFile(bundle) as z:
        readme = z.read(next(n for n in z.namelist() if n.endswith("README.md"))).decode()
    assert f"lm-eval shakespeare_nextline acc_norm {rows['acc_norm']['value']:.3f}" in readme


def _kind(fig, kind: str) -> list:
    return [t for t in fig.data if t.meta and t.meta.get("kind") == kind]


def _errors(app, hashes) -> dict[str, float]:
    """hash -> 1 - acc_norm of the stored rows of those configurations."""
    store = app.MODELS.get(MODEL).store
    return {h: 1 - r["value"] for h in hashes for r in store.task_metrics(model=MODEL, config_hash=h, method="coalora",
                                                                           metric="acc_norm")}


@pytest.fixture
def unseeded_tasks(app, tmp_path, monkeypatch):
    """This test's store seeded from data/seed without its task rows (a store before any task eval)."""
    import shutil

    from coalora.paths import SEED_DIR
    from coalora.store import Store

    seed = tmp_path / "seed"
    seed.mkdir()
    for f in SEED_DIR.glob("*.parquet"):
        if f.name != "task_metrics.parquet":
            shutil.copy2(f, seed / f.name)
    app.MODELS.store.close()
    monkeypatch.setattr(app.MODELS, "store", Store(tmp_path / "unseeded.duckdb", seed_dir=seed))
    return app


def test_the_task_axis_builds_a_front_from_quick_evals_and_rings_the_selection(unseeded_tasks):
    app = unseeded_tasks
    cfgs = _configs(app, 3)
    for cfg in cfgs:
        out = app.quick_eval(*_args(cfg.hash, 6.0, metric=TASK_AXIS))
    result, fig, table, front_md, summary, details, residuals = out
    errors = _errors(app, [c.hash for c in cfgs])
    measured = {x for t in _kind(fig, "measured") for x in zip(t.customdata, t.y)}
    assert {(h, round(y, 9)) for h, y in measured} == {(h, round(e, 9)) for h, e in errors.items()}
    assert "error rate" in fig.layout.yaxis.title.text and "predicted front" in front_md
    ring = _kind(fig, "selected")[0]
    assert ring.customdata[0] == cfgs[-1].hash and math.isclose(ring.y[0], errors[cfgs[-1].hash])
    assert details["measured_task"] == pytest.approx(errors[cfgs[-1].hash]) and "task error rate" in front_md
    assert "shakespeare_nextline error rate (1 - acc_norm)" in summary
    sel = app.select(cfgs[0].hash, MODEL, "shakespeare", 6.0, ["coalora"], 128, 1, TASK_AXIS)
    ring = _kind(sel[5], "selected")[0]
    assert ring.customdata[0] == cfgs[0].hash and math.isclose(ring.y[0], errors[cfgs[0].hash])


def test_a_fresh_store_has_the_seeds_task_front_and_quick_eval_joins_it(app):
    from coalora.evaluation.tasks import APP_LIMIT

    ex = app.MODELS.get(MODEL)
    seeded = ex.store.task_metrics(model=MODEL, method="coalora", metric="acc_norm")
    assert len(seeded) >= 3 and {r["doc_limit"] for r in seeded} == {APP_LIMIT}
    fig, _, front_md = app.refresh_front(MODEL, "shakespeare", 6.0, ["coalora"], 128, 1, TASK_AXIS)
    measured = {h: y for t in _kind(fig, "measured") for h, y in zip(t.customdata, t.y)}
    assert measured == pytest.approx({r["config_hash"]: 1 - r["value"] for r in seeded})
    assert "predicted front" in front_md
    h = seeded[0]["config_hash"]  # Quick eval with 0 documents on the task axis: the front's limit, read back
    result, fig, *_ = app.quick_eval(*_args(h, 6.0, metric=TASK_AXIS, docs=0))
    assert f"({APP_LIMIT} documents)" in result and "cached result" in result.split("lm-eval, zero-shot")[1]
    ring = _kind(fig, "selected")[0]
    assert ring.customdata[0] == h and math.isclose(ring.y[0], 1 - seeded[0]["value"])
    other, *_ = app.quick_eval(*_args(h, 6.0, metric=TASK_AXIS, docs=8))  # another limit: stored, not on the front
    assert "(8 documents)" in other and f"shows the results measured on {APP_LIMIT} documents" in other


def test_bad_task_settings_are_one_clear_message(app):
    import gradio as gr

    h = _configs(app, 1)[0].hash
    for docs, expect in ((-1, "[0, 400]"), (401, "[0, 400]"), (float("nan"), "whole number"), (True, "whole number"),
                         ("<b>8</b>", "whole number")):
        with pytest.raises(gr.Error, match="lm-eval task documents") as e:
            app.quick_eval(*_args(h, 4.0, docs=docs))
        assert expect in str(e.value) and "<b>" not in str(e.value)
    with pytest.raises(gr.Error, match="unknown front metric"):  # the app offers the local task only
        app.quick_eval(*_args(h, 4.0, metric="task:hellaswag/acc"))

