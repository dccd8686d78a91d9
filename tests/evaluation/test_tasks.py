"""lm-evaluation-harness on a configuration: the local task's items, the CLI's ``eval --tasks``,
the stored metrics and a front over a task's accuracy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coalora.errors import CoaloraError
from coalora.evaluation import nextline, tasks
from coalora.quant.config import ModelQuantConfig
from coalora.search.front import FrontQuery, check_metric, task_metric
from coalora.store import Store
from tests.search.test_front import MODEL, _service, problem, truth  # noqa: F401 (problem is a fixture)

ADAPTER = "data/default/smollm2-135m-coalora.safetensors"


def test_task_names_and_limits_are_checked():
    assert tasks.parse_tasks(" shakespeare_nextline, piqa,piqa ") == ["shakespeare_nextline", "piqa"]
    for bad in ("", " , ", "piqa;rm -rf", "<b>x</b>"):
        with pytest.raises(CoaloraError, match="task"):
            tasks.parse_tasks(bad)
    assert tasks.check_limit(None) == 0 and tasks.check_limit(5) == 5
    for bad in (0, -1, True, 2.5, 10**9):
        with pytest.raises(CoaloraError, match="--limit"):
            tasks.check_limit(bad)


def test_front_metric_names_a_task_metric():
    assert task_metric("task:shakespeare_nextline/acc_norm") == ("shakespeare_nextline", "acc_norm")
    assert task_metric("ppl") is None and task_metric("task:/acc") is None and task_metric("task:x") is None
    with pytest.raises(CoaloraError, match="task:<lm-eval task>/<metric>"):
        check_metric("task:bad name/acc")


@pytest.mark.integration
def test_shipped_items_are_the_generators_and_well_formed():
    from coalora import data

    corpus = data.load_corpus("shakespeare", "eval")
    items = nextline.make_items(corpus)
    assert nextline.items_text(items) == (nextline.TASK_DIR / nextline.ITEMS_FILE).read_text(encoding="utf-8")
    assert len(items) == nextline.PER_PLAY * len(corpus.documents)
    assert [it["play"] for it in items[:4]] == [name for name, _ in corpus.documents]  # a prefix spans the plays
    texts = dict(corpus.documents)
    for it in items:
        choices, label = it["choices"], it["label"]
        assert len(set(choices)) == 4 and 0 <= label < 4
        lines = [s.strip() for s in texts[it["play"]].splitlines() if s.strip()]
        # the answer is the line that follows the context in its play; the distractors are lines of that play
        assert it["context"] + "\n" + choices[label] in "\n".join(lines)
        assert all(c in lines for c in choices)
    labels = np.bincount([it["label"] for it in items], minlength=4)
    assert labels.min() > 60  # the answer's position is not a cue


def test_task_front_models_the_error_rate_of_stored_rows(problem):  # noqa: F811
    targets, table = problem
    store = Store(":memory:", seed_dir=None)
    svc = _service(problem, store)
    cids, _, _ = svc.candidates()
    rng = np.random.default_rng(0)
    accs = {}
    for i in rng.choice(len(cids), 12, replace=False):
        c = ModelQuantConfig.from_ids(MODEL, targets, cids[i].tolist())
        acc = 0.9 * math.exp(math.log(20.0) - truth(table, cids[i]))  # falls as the (synthetic) ppl rises
        accs[c.hash] = acc
        store.add_task_metrics(MODEL, c, "a", "coalora",
                               [tasks.TaskMetric("t", "acc", acc, 0.02, 50, 50, "0.4.13", "1"),
                                tasks.TaskMetric("t", "acc", 0.0, 0.0, 10, 10, "0.4.13", "1")])  # a smaller limit
    q = FrontQuery(MODEL, "coalora", seqlen=256, windows=8, metric="task:t/acc")
    res = svc.front(q)
    assert {p.config_hash: p.ppl for p in res.measured} == pytest.approx({h: 1 - a for h, a in accs.items()})
    assert res.front and res.refit == "full" and res.hv_reference["task:t/acc"] == 1.0
    bits = [p.avg_bits for p in res.front]
    assert bits == sorted(bits) and all(0 < p.pred_ppl < 1.5 for p in res.front)
    assert svc.front(FrontQuery(MODEL, "coalora", metric="task:other/acc")).measured == []
    store.close()


@pytest.mark.integration
def test_cli_eval_tasks_prints_accuracy_and_stderr_and_stores_them(tmp_path, monkeypatch, capsys, default_model):
    from coalora.cli import main
    from coalora.models import find_targets
    from coalora.quant.config import resolve_preset

    monkeypatch.setenv("COALORA_STORE", str(tmp_path / "r.duckdb"))
    model, _ = default_model
    cfg = ModelQuantConfig.uniform("smollm2-135m", find_targets(model), resolve_preset("nf4-dq"))
    cfg.save(tmp_path / "cfg.json")
    argv = ["eval", "--tasks", "shakespeare_nextline", "--config", str(tmp_path / "cfg.json"), "--adapter", ADAPTER,
            "--limit", "8", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    got = {r["metric"]: r for r in out["tasks"]}
    assert set(got) == {"acc", "acc_norm"} and out["config_hash"] == cfg.hash and out["stored"] == 2
    for r in got.values():
        assert 0 <= r["value"] <= 1 and r["stderr"] > 0 and r["samples"] == 8 and r["limit"] == 8
        assert r["lm_eval_version"] == "0.4.13" and r["task_version"].endswith(nextline.items_hash())
        assert r["value"] * 8 == round(r["value"] * 8)  # a share of 8 documents
    with Store(tmp_path / "r.duckdb", read_only=True) as st:
        rows = st.task_metrics(config_hash=cfg.hash, method="coalora")
    assert {(r["metric"], r["value"], r["doc_limit"]) for r in rows} == {(m, r["value"], 8) for m, r in got.items()}


@pytest.mark.integration
@pytest.mark.slow
def test_local_task_is_solved_above_chance_and_worse_when_badly_quantized(default_model):
    from coalora.adapter.apply import ConfigApplier
    from coalora.models import find_targets, load_model
    from coalora.quant.config import resolve_preset

    model, tok = load_model("smollm2-135m")  # a private copy: the shared fixture's weights stay intact
    dense = {r.metric: r for r in tasks.run_tasks(model, tok, [nextline.TASK_NAME], limit=40)}
    targets = find_targets(model)
    ConfigApplier(model, "smollm2-135m", targets).apply(
        ModelQuantConfig.uniform("smollm2-135m", targets, resolve_preset("nf2-dq")))
    low = {r.metric: r for r in tasks.run_tasks(model, tok, [nextline.TASK_NAME], limit=40)}
    assert dense["acc_norm"].value >= 0.4  # chance is 0.25 (400 items: 0.50 +- 0.025)
    assert low["acc_norm"].value <= dense["acc_norm"].value - 0.1  # nf2-dq alone (400 items: 0.25)
