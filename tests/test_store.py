"""The DuckDB results store: round trips, idempotent writes, seeding, export/import, threads, locks, bad files."""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest

from coalora.errors import CoaloraError
from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig
from coalora.store import SCHEMA_VERSION, TABLES, Evaluation, Store


@functools.cache
def _targets():
    from coalora.models import find_targets, tiny_llama

    return tuple(find_targets(tiny_llama(seed=0)))


def _cfg(seed=0, model="tiny-llama"):
    rng = random.Random(seed)
    targets = _targets()
    return ModelQuantConfig.from_ids(model, targets, [rng.randrange(len(ALL_CONFIGS)) for _ in targets])


def _ev(config_hash="c" * 16, model="tiny-llama", method="coalora", adapter_id="a1", eval_set="shakespeare:eval@1",
        seqlen=256, windows=8, ppl=12.5, nll=2.5, **kw):
    return Evaluation(model=model, config_hash=config_hash, method=method, adapter_id=adapter_id, eval_set=eval_set,
                      seqlen=seqlen, windows=windows, tokens=seqlen * windows, ppl=ppl, nll=nll, avg_bits=3.25, **kw)


def _store(tmp_path, name="results.duckdb", **kw):
    kw.setdefault("seed_dir", None)
    return Store(tmp_path / name, **kw)


def _fill(store):
    """A few rows in every table; returns the evaluations added."""
    cfg = _cfg(1)
    store.add_model("tiny-llama", "w" * 8, 14, 12345)
    store.add_adapter("a1", "tiny-llama", "coalora", path="/x/a1.safetensors", sha256="s" * 8, meta={"rank": 4})
    evs = [_ev(cfg.hash, seqlen=256, windows=8, ppl=11.0, kld=0.125, window_nll=[600.5 + i for i in range(8)],
               window_kld=[31.875] * 8),
           _ev(cfg.hash, method="none", adapter_id="", ppl=20.0),
           _ev("d" * 16, model="other", method="qlora", ppl=13.0)]
    assert store.add_evaluation(evs[0], cfg)
    for ev in evs[1:]:
        assert store.add_evaluation(ev)
    store.add_search_round("run1", 0, "tiny-llama", 100, 0.5, encoding="onehot", loo={"index": 0.1, "bits": 0.2},
                           pool=64, kept=8, seconds=1.5)
    store.add_search_round("run1", 1, "tiny-llama", 200, 0.6)
    store.add_task_metrics("tiny-llama", cfg, "a1", "coalora", _task_rows())
    return evs


def _counts(store):
    return {t: store.count(t) for t in TABLES}


# ---- round trip


def test_evaluation_round_trips_with_its_config(tmp_path):
    cfg = _cfg(3)
    ev = _ev(cfg.hash, seconds=4.0)
    with _store(tmp_path) as s:
        assert s.add_evaluation(ev, cfg) is True
        got = s.find_evaluation(*ev.key)
        assert got == ev
        assert s.find_evaluation(*ev.key[:-2], ev.windows + 1, ev.eval_spec) is None
        assert s.find_evaluation(*ev.key[:-1], "prefix-v0") is None  # another spec: another key
        assert s.config_ids(cfg.hash) == ("tiny-llama", list(cfg.ids))
        assert s.config_ids("nope") is None
        assert s.configs("tiny-llama") == {cfg.hash: list(cfg.ids)}
        assert s.configs("other") == {}


def test_evaluations_filter_by_every_field(tmp_path):
    with _store(tmp_path) as s:
        evs = [_ev(model="m1", method="coalora", adapter_id="a1", eval_set="e1", seqlen=256, windows=8),
               _ev(model="m1", method="qlora", adapter_id="a2", eval_set="e1", seqlen=256, windows=8),
               _ev(model="m2", method="coalora", adapter_id="a1", eval_set="e2", seqlen=512, windows=8),
               _ev(model="m1", method="coalora", adapter_id="", eval_set="e1", seqlen=256, windows=16)]
        for ev in evs:
            assert s.add_evaluation(ev)
        assert {e.key for e in s.evaluations()} == {e.key for e in evs}
        assert {e.key for e in s.evaluations(model="m1")} == {evs[0].key, evs[1].key, evs[3].key}
        assert {e.key for e in s.evaluations(method="qlora")} == {evs[1].key}
        assert {e.key for e in s.evaluations(eval_set="e2")} == {evs[2].key}
        assert {e.key for e in s.evaluations(seqlen=512)} == {evs[2].key}
        assert {e.key for e in s.evaluations(windows=16)} == {evs[3].key}
        assert {e.key for e in s.evaluations(adapter_id="")} == {evs[3].key}
        assert {e.key for e in s.evaluations(model="m1", method="coalora", windows=8)} == {evs[0].key}
        assert s.evaluations(model="m3") == []
        assert s.models() == ["m1", "m2"]


def test_models_lists_registered_and_evaluated_models(tmp_path):
    with _store(tmp_path) as s:
        assert s.models() == []
        s.add_model("zeta", "h", 1, 10)
        s.add_evaluation(_ev(model="alpha"))
        s.add_model("alpha", "h2", 2, 20)
        assert s.models() == ["alpha", "zeta"]


def test_search_rounds_round_trip(tmp_path):
    with _store(tmp_path) as s:
        s.add_search_round("r1", 0, "tiny-llama", 50, 0.25, encoding="onehot", loo={"index": 0.9, "bits": 0.8},
                           pool=32, kept=4, seconds=2.0)
        s.add_search_round("r1", 1, "tiny-llama", 100, 0.5)
        s.add_search_round("r2", 0, "other", 10, 0.1)
        s.add_search_round("r1", 0, "tiny-llama", 999, 9.9)  # same key: kept as first written
        rows = s.search_rounds(run="r1")
        assert [(r["run"], r["round"]) for r in rows] == [("r1", 0), ("r1", 1)]
        r0 = rows[0]
        assert (r0["model"], r0["after_step"], r0["hypervolume"], r0["encoding"]) == ("tiny-llama", 50, 0.25, "onehot")
        assert (r0["loo_index"], r0["loo_bits"], r0["pool"], r0["kept"], r0["seconds"]) == (0.9, 0.8, 32, 4, 2.0)
        assert rows[1]["loo_index"] is None
        assert [r["run"] for r in s.search_rounds(model="other")] == ["r2"]
        assert len(s.search_rounds()) == 3


# ---- idempotency


def test_same_key_twice_keeps_one_row_and_the_first_ppl(tmp_path):
    with _store(tmp_path) as s:
        assert s.add_evaluation(_ev(ppl=10.0)) is True
        assert s.add_evaluation(_ev(ppl=99.0)) is False
        assert s.count("evaluations") == 1
        assert s.find_evaluation(*_ev().key).ppl == 10.0
        assert s.add_evaluation(_ev(windows=9, ppl=11.0)) is True
        assert s.count("evaluations") == 2
        assert s.find_evaluation(*_ev(windows=9).key).ppl == 11.0


def test_same_config_twice_is_one_row(tmp_path):
    cfg = _cfg(5)
    with _store(tmp_path) as s:
        assert s.add_config(cfg) == cfg.hash
        s.add_config(cfg)
        s.add_evaluation(_ev(cfg.hash), cfg)
        assert s.count("configs") == 1


def test_specs_never_share_an_evaluation(tmp_path):
    with _store(tmp_path) as s:
        strided = _ev(ppl=10.0, kld=0.25, window_nll=[1.0] * 8, window_kld=[0.5] * 8)
        prefix = _ev(ppl=99.0, eval_spec="prefix-v0")
        assert strided.eval_spec == "strided-v1" and strided.key != prefix.key
        assert s.add_evaluation(strided) and s.add_evaluation(prefix)  # both kept: different keys
        assert s.find_evaluation(*strided.key[:-1]) == strided  # the default spec
        assert s.find_evaluation(*prefix.key).ppl == 99.0 and s.find_evaluation(*prefix.key).kld is None
        assert s.find_evaluation(*strided.key[:-1], "strided-v1").window_kld == (0.5,) * 8
        assert [e.ppl for e in s.evaluations(eval_spec="strided-v1")] == [10.0]
        assert [e.ppl for e in s.evaluations(eval_spec="prefix-v0")] == [99.0]
        assert len(s.evaluations()) == 2


@pytest.mark.parametrize("kw", [{"kld": float("nan")}, {"kld": float("inf")}, {"eval_spec": ""},
                                {"window_nll": [1.0, 2.0]}])
def test_bad_kl_fields_are_refused(kw):
    with pytest.raises(CoaloraError):
        _ev(**kw)


def _v1_store(path, rows):
    """A schema-1 store file (as coalora 0.x wrote it) holding ``rows`` evaluations."""
    import duckdb

    from coalora.store_schema import MIGRATIONS

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for sql in MIGRATIONS[1]:
        con.execute(sql)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    for ev in rows:
        con.execute("INSERT INTO evaluations (model, config_hash, adapter_id, method, eval_set, seqlen, windows, "
                    "tokens, ppl, nll, avg_bits, seconds, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [ev.model, ev.config_hash, ev.adapter_id, ev.method, ev.eval_set, ev.seqlen, ev.windows,
                     ev.tokens, ev.ppl, ev.nll, ev.avg_bits, ev.seconds, ev.version])
    con.execute("INSERT INTO models VALUES ('tiny-llama', 'w', 14, 100, current_timestamp)")
    con.close()


def test_schema_1_store_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    old = [_ev("a" * 16, ppl=11.0), _ev("b" * 16, method="none", adapter_id="", ppl=22.0), _ev("a" * 16, windows=16)]
    _v1_store(path, old)
    with Store(path, seed_dir=None) as s:
        assert s.schema_version() == SCHEMA_VERSION == 3
        assert s.count("evaluations") == 3 and s.count("models") == 1
        got = s.evaluations(eval_spec="prefix-v0")
        assert sorted((e.config_hash, e.windows, e.ppl) for e in got) == \
            sorted((e.config_hash, e.windows, e.ppl) for e in old)
        assert all(e.kld is None and e.window_nll == () for e in got)
        assert s.find_evaluation(*old[0].key[:-1]) is None  # not under the new default spec
        assert s.find_evaluation(*old[0].key[:-1], "prefix-v0").ppl == 11.0
        # the same configuration measured under the new spec is a new row next to the old one
        assert s.add_evaluation(_ev("a" * 16, ppl=12.0, kld=0.1))
        assert s.count("evaluations") == 4
    with Store(path, seed_dir=None) as s:  # reopening does not migrate again
        assert s.count("evaluations") == 4 and len(s.evaluations(eval_spec="prefix-v0")) == 3


def test_an_upgraded_store_gets_the_new_seed_rows_and_keeps_its_own(tmp_path):
    seed = tmp_path / "seed"
    with _store(tmp_path, "src.duckdb") as src:
        new = _fill(src)  # strided-v1 rows, as the shipped seed now holds
        for t in TABLES:
            src.export_table(t, seed / f"{t}.parquet")
    path = tmp_path / "old.duckdb"
    old = [_ev(new[0].config_hash, ppl=99.0), _ev("e" * 16, ppl=5.0)]
    _v1_store(path, old)
    with Store(path, seed_dir=seed) as s:
        assert {e.key for e in s.evaluations(eval_spec="strided-v1")} == {e.key for e in new}
        assert sorted(e.ppl for e in s.evaluations(eval_spec="prefix-v0")) == [5.0, 99.0]
        assert s.count("search_rounds") == 2 and s.count("models") == 1  # the store's own model row kept


def test_seed_files_without_spec_columns_read_as_prefix_v0(tmp_path):
    """A seed / export file written by a schema-1 store (no eval_spec, kld, window sums) still loads."""
    import duckdb

    _v1_store(tmp_path / "old.duckdb", [_ev("h" * 16, ppl=3.0)])
    seed = tmp_path / "seed"
    seed.mkdir()
    f = seed / "evaluations.parquet"
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute(f"COPY (SELECT * FROM evaluations) TO '{f}' (FORMAT PARQUET)")
    con.close()
    with Store(tmp_path / "r.duckdb", seed_dir=seed) as s:
        (ev,) = s.evaluations()
        assert (ev.eval_spec, ev.kld, ev.ppl) == ("prefix-v0", None, 3.0)
    with _store(tmp_path, "b.duckdb") as b:
        assert b.import_table("evaluations", f) == 1
        assert b.find_evaluation(*_ev("h" * 16).key[:-1], "prefix-v0").ppl == 3.0


# ---- seeding


def test_new_store_is_seeded_from_parquet_once(tmp_path):
    seed = tmp_path / "seed"
    with _store(tmp_path, "src.duckdb") as src:
        evs = _fill(src)
        want = _counts(src)
        for t in TABLES:
            src.export_table(t, seed / f"{t}.parquet")
    assert all(want.values())
    path = tmp_path / "seeded.duckdb"
    with Store(path, seed_dir=seed) as s:
        assert _counts(s) == want
        assert {e.key for e in s.evaluations()} == {e.key for e in evs}
        assert s.find_evaluation(*evs[1].key) == evs[1]
    with Store(path, seed_dir=seed) as s:  # reopening does not seed again
        assert _counts(s) == want
        s._cursor().execute("DELETE FROM evaluations")
    with Store(path, seed_dir=seed) as s:  # nor re-add rows deleted since
        assert s.count("evaluations") == 0
        assert s.count("configs") == want["configs"]


def test_missing_seed_files_give_an_empty_store(tmp_path):
    (tmp_path / "empty_seed").mkdir()
    with Store(tmp_path / "r.duckdb", seed_dir=tmp_path / "empty_seed") as s:
        assert all(n == 0 for n in _counts(s).values())


# ---- export / import


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_export_import_round_trips(tmp_path, ext):
    with _store(tmp_path, "a.duckdb") as a:
        evs = _fill(a)
        files = {t: a.export_table(t, tmp_path / "out" / f"{t}.{ext}") for t in TABLES}
        want = _counts(a)
        want_rounds = a.search_rounds()
        assert a.import_table("evaluations", files["evaluations"]) == 0  # all already there
    with _store(tmp_path, "b.duckdb") as b:
        for t in TABLES:
            assert b.import_table(t, files[t]) == want[t]
        assert _counts(b) == want
        for ev in evs:
            assert b.find_evaluation(*ev.key) == ev
        empty = b.find_evaluation(*evs[1].key)
        assert empty.adapter_id == "" and b.evaluations(adapter_id="") == [evs[1]]
        assert b.config_ids(evs[0].config_hash) == ("tiny-llama", list(_cfg(1).ids))
        assert [(r["run"], r["round"], r["hypervolume"]) for r in b.search_rounds()] == \
            [(r["run"], r["round"], r["hypervolume"]) for r in want_rounds]
        for t in TABLES:
            assert b.import_table(t, files[t]) == 0
        assert _counts(b) == want


def test_export_import_keeps_config_ids(tmp_path):
    cfg = _cfg(7)
    with _store(tmp_path, "a.duckdb") as a:
        a.add_config(cfg)
        f = a.export_table("configs", tmp_path / "configs.csv")
    with _store(tmp_path, "b.duckdb") as b:
        assert b.import_table("configs", f) == 1
        assert b.config_ids(cfg.hash) == ("tiny-llama", list(cfg.ids))


def test_import_rejects_bad_files_and_tables(tmp_path):
    with _store(tmp_path) as s:
        _fill(s)
        f = s.export_table("search_rounds", tmp_path / "rounds.parquet")
        with pytest.raises(CoaloraError, match="lacks column"):
            s.import_table("evaluations", f)
        bad = tmp_path / "rows.json"
        bad.write_text("[]")
        with pytest.raises(CoaloraError, match=r"\.parquet or \.csv"):
            s.import_table("evaluations", bad)
        with pytest.raises(CoaloraError, match=r"\.parquet or \.csv"):
            s.export_table("evaluations", tmp_path / "out.json")
        with pytest.raises(CoaloraError, match="no file"):
            s.import_table("evaluations", tmp_path / "missing.csv")
        with pytest.raises(CoaloraError, match="unknown table"):
            s.export_table("nope", tmp_path / "x.csv")
        with pytest.raises(CoaloraError, match="unknown table"):
            s.import_table("nope", f)
        with pytest.raises(CoaloraError, match="unknown table"):
            s.count("evaluations; DROP TABLE models")
        assert s.count("models") == 1


# ---- threads


def _run_threads(n, fn):
    errors = []

    def wrap(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_share_one_store(tmp_path):
    with _store(tmp_path) as s:
        errors = _run_threads(8, lambda i: [s.add_evaluation(_ev(config_hash=f"{i:08d}{j:08d}")) for j in range(25)])
        assert errors == []
        assert s.count("evaluations") == 200
        assert len(s.evaluations()) == 200


def test_threads_writing_one_key_leave_one_row(tmp_path):
    results = []
    with _store(tmp_path) as s:
        errors = _run_threads(8, lambda i: results.append(s.add_evaluation(_ev(ppl=10.0 + i))))
        assert errors == []
        assert s.count("evaluations") == 1
        assert sorted(results) == [False] * 7 + [True]


# ---- a second process


_CHILD = textwrap.dedent("""
    import sys
    from coalora.errors import CoaloraError
    from coalora.store import Evaluation, Store

    path = sys.argv[1]
    s = Store(path, seed_dir=None)
    print("warning:", s.warning)
    print("read_only:", s.read_only)
    print("rows:", s.count("evaluations"))
    try:
        s.add_evaluation(Evaluation("m", "h", "none", "", "e", 1, 1, 1, 1.0, 0.0, 3.0))
        print("write: ok")
    except CoaloraError as e:
        print("write error:", e)
    s.close()
    try:
        Store(path, seed_dir=None, fallback=False)
        print("strict: opened")
    except CoaloraError as e:
        print("strict error:", e)
""")


def test_second_process_gets_a_read_only_snapshot(tmp_path):
    path = tmp_path / "locked.duckdb"
    with _store(tmp_path, "locked.duckdb") as s:
        _fill(s)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
        assert "in use by another process" in lines["warning"] and "read-only snapshot" in lines["warning"]
        assert lines["read_only"] == "True"
        assert lines["rows"] == "3"
        assert "write" not in lines and "in use by another process" in lines["write error"]
        assert "strict" not in lines and "in use by another process" in lines["strict error"]
        assert "\n" not in lines["strict error"]
        assert "Traceback" not in out.stderr
        assert s.count("evaluations") == 3  # the child's write did not land
        assert s.add_evaluation(_ev(windows=99))  # and this process still writes


# ---- bad files and versions


def test_garbage_file_is_reported_as_damaged(tmp_path):
    path = tmp_path / "results.duckdb"
    path.write_bytes(os.urandom(64) * 64)
    with pytest.raises(CoaloraError, match="damaged or not a DuckDB file"):
        Store(path, seed_dir=None)


def test_truncated_store_is_a_coalora_error(tmp_path):
    path = tmp_path / "results.duckdb"
    with Store(path, seed_dir=None) as s:
        _fill(s)
        s._cursor().execute("CHECKPOINT")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CoaloraError, match="damaged or not a DuckDB file"):
        Store(path, seed_dir=None)


def test_newer_schema_is_refused(tmp_path):
    import duckdb

    path = tmp_path / "results.duckdb"
    with Store(path, seed_dir=None) as s:
        assert s.schema_version() == SCHEMA_VERSION
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    with pytest.raises(CoaloraError, match="newer"):
        Store(path, seed_dir=None)


def test_reopening_keeps_rows_and_version(tmp_path):
    with _store(tmp_path) as s:
        evs = _fill(s)
    with _store(tmp_path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.find_evaluation(*evs[0].key) == evs[0]


# ---- validation, transactions, read-only


@pytest.mark.parametrize("kw", [{"ppl": float("nan")}, {"windows": 0}, {"seqlen": 0}, {"nll": "1.0"}])
def test_bad_evaluations_are_refused(kw):
    with pytest.raises(CoaloraError):
        _ev(**kw)


def test_failed_write_leaves_no_partial_row(tmp_path):
    cfg = _cfg(2)
    with _store(tmp_path) as s:
        with pytest.raises(CoaloraError, match="config"):
            s.add_evaluation(_ev("0" * 16), cfg)
        assert s.count("evaluations") == 0 and s.count("configs") == 0
        # a failure inside the transaction rolls back the config insert too
        with pytest.raises(RuntimeError):
            with s._transaction() as cur:
                cur.execute("INSERT INTO configs (config_hash, model, avg_bits, ids) VALUES ('x', 'm', 3.0, '[]')")
                raise RuntimeError("killed")
        assert s.count("configs") == 0
        assert s.add_evaluation(_ev(cfg.hash), cfg)  # and the store still works
        assert s.count("evaluations") == 1 and s.count("configs") == 1


def test_read_only_store_refuses_writes(tmp_path):
    path = tmp_path / "results.duckdb"
    with Store(path, seed_dir=None) as s:
        _fill(s)
    with Store(path, seed_dir=None, read_only=True) as ro:
        assert ro.read_only and ro.count("evaluations") == 3
        for write in (lambda: ro.add_evaluation(_ev(windows=5)), lambda: ro.add_model("m", "h", 1, 1),
                      lambda: ro.add_config(_cfg(0)), lambda: ro.add_adapter("x", "m", "qlora"),
                      lambda: ro.add_search_round("r", 0, "m", 0, 0.0),
                      lambda: ro.import_table("models", tmp_path / "m.csv")):
            with pytest.raises(CoaloraError, match="read-only"):
                write()
        assert ro.count("evaluations") == 3
    with pytest.raises(CoaloraError, match="no results store"):
        Store(tmp_path / "missing.duckdb", seed_dir=None, read_only=True)


def test_closed_store_raises(tmp_path):
    s = _store(tmp_path)
    s.close()
    with pytest.raises(CoaloraError, match="closed"):
        s.count("evaluations")


def _task_rows(value=0.5, limit=20, task="shakespeare_nextline"):
    from coalora.evaluation.tasks import TaskMetric

    return [TaskMetric(task, "acc", value, 0.1, limit, limit, "0.4.13", "1.0+abc"),
            TaskMetric(task, "acc_norm", value + 0.05, None, limit, limit, "0.4.13", "1.0+abc")]


def test_schema_2_store_is_upgraded_to_task_metrics_and_keeps_its_rows(tmp_path):
    import duckdb

    path = tmp_path / "v2.duckdb"
    with Store(path, seed_dir=None) as s:
        added = _fill(s)
    con = duckdb.connect(str(path))  # as a schema-2 coalora left it: no task_metrics table
    con.execute("DROP TABLE task_metrics")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with Store(path, seed_dir=None) as s:
        assert s.schema_version() == SCHEMA_VERSION == 3
        assert {e.key for e in s.evaluations()} == {e.key for e in added}
        assert s.count("task_metrics") == 0
        c = _cfg(3)
        assert s.add_task_metrics("tiny-llama", c, "a1", "coalora", _task_rows()) == 2


def test_task_metrics_round_trip_keep_the_first_row_and_filter(tmp_path):
    with _store(tmp_path) as s:
        c = _cfg(4)
        assert s.add_task_metrics("tiny-llama", c, "a1", "coalora", _task_rows(0.6)) == 2
        assert s.add_task_metrics("tiny-llama", c, "a1", "coalora", _task_rows(0.9)) == 0  # same key: first kept
        assert s.add_task_metrics("tiny-llama", c, "a1", "coalora", _task_rows(0.7, limit=40)) == 2  # a new limit
        assert s.add_task_metrics("tiny-llama", None, "", "none", _task_rows(0.8)) == 2  # the unquantized model
        rows = s.task_metrics(config_hash=c.hash, metric="acc", doc_limit=20)
        assert len(rows) == 1 and rows[0]["value"] == 0.6 and rows[0]["stderr"] == 0.1
        assert rows[0]["avg_bits"] == pytest.approx(c.avg_bits) and rows[0]["lm_eval_version"] == "0.4.13"
        assert s.task_metrics(config_hash=c.hash, metric="acc_norm", doc_limit=20)[0]["stderr"] is None
        assert [r["value"] for r in s.task_metrics(config_hash="unquantized", metric="acc")] == [0.8]
        assert s.config_ids(c.hash) is not None  # the configuration is stored with its metrics
        assert s.count("task_metrics") == 6


def test_a_non_finite_task_metric_writes_nothing(tmp_path):
    with _store(tmp_path) as s:
        rows = _task_rows() + _task_rows(float("nan"), limit=5)
        with pytest.raises(CoaloraError, match="not a finite number"):
            s.add_task_metrics("tiny-llama", _cfg(5), "a1", "coalora", rows)
        assert s.count("task_metrics") == 0 and s.count("configs") == 0
