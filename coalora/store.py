"""The results store: every evaluation, configuration, adapter and search round, in one DuckDB file.

The app and the CLI are views on this table (``$COALORA_HOME/results.duckdb``). Rules:

* **Idempotent writes.** An evaluation's key is (model, config hash, adapter id, method, eval set,
  seqlen, windows, eval spec); writing the same key twice leaves one row (the first: a cached result is never
  silently replaced). Every write is one transaction, so a killed process leaves no partial row.
* **Seeded.** A new store loads the Parquet files shipped in ``data/seed/`` (the measured SmolLM2
  results), so a fresh clone starts with a populated front; a store upgraded from before the
  seed's schema (:data:`SEED_SCHEMA`) gets the seed's new keys too.
* **Versioned.** ``meta.schema_version`` plus a list of migrations (:mod:`coalora.store_schema`); a
  store written by a newer coalora is refused with a message rather than misread.
* **One writer process.** DuckDB lets one process hold the file read-write, and then no other
  process may open it at all (stack.md). A second process gets a read-only *snapshot copy* and a
  warning (or, with ``fallback=False``, one clear error); writes to a snapshot raise. Within one
  process, share one :class:`Store`: each thread gets its own cursor and writes are serialised.

Rows are :class:`~coalora.store_rows.Evaluation` and plain dicts (:mod:`coalora.store_rows`); files
in and out of the tables are :mod:`coalora.store_files`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from coalora import __version__
from coalora.errors import CoaloraError
from coalora.evaluation.spec import DEFAULT_SPEC
from coalora.paths import SEED_DIR
from coalora.store_files import check_table, file_format, first_line, insert_from_file, seed, write_table
from coalora.store_rows import Evaluation, eval_row, insert_config, where_clause
from coalora.store_schema import (
    EVAL_KEY,
    LEGACY_SPEC,
    MIGRATIONS,
    SCHEMA_VERSION,
    SEED_SCHEMA,
    TABLES,
    TASK_KEY,
    UNQUANTIZED,
)

__all__ = [
    "EVAL_KEY", "LEGACY_SPEC", "SCHEMA_VERSION", "SEED_DIR", "SEED_SCHEMA", "STORE_FILE", "TABLES", "TASK_KEY",
    "UNQUANTIZED", "Evaluation", "Store", "default_path",
]

STORE_FILE = "results.duckdb"


def default_path() -> Path:
    """``$COALORA_STORE`` if set, else ``$COALORA_HOME/results.duckdb``."""
    from coalora import assets

    if os.environ.get("COALORA_STORE"):
        return Path(os.environ["COALORA_STORE"]).expanduser()
    return assets.home() / STORE_FILE


class Store:
    """A DuckDB results store (see the module docstring).

    ``Store()`` opens ``$COALORA_HOME/results.duckdb`` (created and seeded on first use);
    ``Store(":memory:")`` is a throwaway one. Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, seed_dir: str | os.PathLike | None = SEED_DIR,
                 fallback: bool = True, read_only: bool = False) -> None:
        import duckdb

        self.path = str(path) if path is not None else str(default_path())
        self.read_only = read_only
        self.warning: str | None = None
        self._snapshot: str | None = None
        self._local = threading.local()
        self._write_lock = threading.RLock()
        memory = self.path == ":memory:"
        if not memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if read_only and not Path(self.path).exists():
                raise CoaloraError(f"no results store at {self.path}")
        try:
            self._con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as e:
            msg = str(e)
            if "lock" not in msg.lower():
                raise CoaloraError(_damaged(self.path, msg)) from None
            holder = _lock_holder(msg)
            if not fallback:
                raise CoaloraError(f"results store {self.path} is in use by another process{holder}; close it "
                                   "(for example the running app) or point COALORA_HOME elsewhere") from None
            self._con = self._open_snapshot(holder)
        try:
            self._migrate(seed_dir)
        except duckdb.Error as e:  # the file opened but cannot be read (e.g. truncated)
            self.close()
            raise CoaloraError(_damaged(self.path, str(e))) from None
        except BaseException:
            self.close()
            raise

    # ---- opening

    def _open_snapshot(self, holder: str):
        """A read-only copy of the locked file (and its WAL), for a second process that only reads."""
        import duckdb

        tmp = tempfile.mkdtemp(prefix="coalora-store-")
        dst = os.path.join(tmp, STORE_FILE)
        shutil.copyfile(self.path, dst)
        if os.path.exists(self.path + ".wal"):
            shutil.copyfile(self.path + ".wal", dst + ".wal")
        self._snapshot = tmp
        self.read_only = True
        self.warning = (f"results store {self.path} is in use by another process{holder}; showing a read-only "
                        "snapshot (new results are not recorded by this process)")
        try:
            return duckdb.connect(dst, read_only=False)  # a private copy: writable file, but we refuse writes
        except duckdb.Error as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CoaloraError(f"results store {self.path} is locked{holder} and its snapshot is unreadable "
                               f"({first_line(str(e))}); close the other process and retry") from None

    def _migrate(self, seed_dir) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise CoaloraError(f"results store {self.path} has schema version {version}, newer than this coalora "
                               f"({__version__}, schema {SCHEMA_VERSION}); upgrade coalora or use another COALORA_HOME")
        if version == SCHEMA_VERSION:
            return
        if self.read_only and not self._snapshot:
            raise CoaloraError(f"results store {self.path} needs a schema upgrade ({version} -> {SCHEMA_VERSION}); "
                               "open it once read-write")
        with self._transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for sql in MIGRATIONS[v]:
                    cur.execute(sql)
            cur.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [str(SCHEMA_VERSION)])
            if version < SEED_SCHEMA and seed_dir is not None:
                seed(cur, Path(seed_dir))

    def schema_version(self) -> int:
        """The store's ``meta.schema_version`` (0 for a file without one)."""
        cur = self._cursor()
        has_meta = cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]
        if not has_meta:
            return 0
        row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the connection and remove a snapshot copy; closing twice is harmless."""
        con = getattr(self, "_con", None)
        if con is not None:
            con.close()
            self._con = None
        if self._snapshot:
            shutil.rmtree(self._snapshot, ignore_errors=True)
            self._snapshot = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing

    def _cursor(self):
        if self._con is None:
            raise CoaloraError("the results store is closed")
        cur = getattr(self._local, "cur", None)
        if cur is None or getattr(self._local, "con", None) is not self._con:
            cur = self._local.cur = self._con.cursor()
            self._local.con = self._con
        return cur

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction; serialised across threads (DuckDB would abort conflicting ones)."""
        with self._write_lock:
            cur = self._cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _check_writable(self) -> None:
        if self.read_only:
            raise CoaloraError(self.warning or f"results store {self.path} was opened read-only; nothing was recorded")

    # ---- writes

    def add_model(self, model: str, weights_hash: str, n_targets: int, target_params: int) -> None:
        """Record (or update) a model's weights hash and target counts."""
        self._check_writable()
        with self._transaction() as cur:
            cur.execute("INSERT INTO models (model, weights_hash, n_targets, target_params) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (model) DO UPDATE SET weights_hash = excluded.weights_hash, "
                        "n_targets = excluded.n_targets, target_params = excluded.target_params",
                        [model, weights_hash, n_targets, target_params])

    def add_config(self, config) -> str:
        """Record a :class:`~coalora.quant.config.ModelQuantConfig` (by hash); returns the hash."""
        self._check_writable()
        with self._transaction() as cur:
            insert_config(cur, config)
        return config.hash

    def add_adapter(self, adapter_id: str, model: str, method: str, path: str = "", sha256: str = "",
                    meta: dict | None = None) -> None:
        """Record an adapter (a stored id keeps its first row)."""
        self._check_writable()
        with self._transaction() as cur:
            cur.execute("INSERT INTO adapters (adapter_id, model, method, path, sha256, meta) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (adapter_id) DO NOTHING",
                        [adapter_id, model, method, path, sha256, json.dumps(meta or {})])

    def add_evaluation(self, ev: Evaluation, config=None) -> bool:
        """Record ``ev`` (and its configuration, when given) in one transaction.

        Returns True if a row was added, False if the key was already stored (the stored row stays).
        """
        self._check_writable()
        if config is not None and config.hash != ev.config_hash:
            raise CoaloraError(f"evaluation is of config {ev.config_hash} but config {config.hash} was given")
        row = eval_row(ev)
        cols = list(row)
        with self._transaction() as cur:
            if config is not None:
                insert_config(cur, config)
            added = cur.execute(f"INSERT INTO evaluations ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                                "ON CONFLICT DO NOTHING RETURNING 1", [row[c] for c in cols]).fetchall()
        return bool(added)

    def add_search_round(self, run: str, round: int, model: str, after_step: int, hypervolume: float,
                         encoding: str = "", loo: dict[str, float] | None = None, pool: int = 0, kept: int = 0,
                         seconds: float = 0.0) -> None:
        """Record one search round of ``run`` (a stored (run, round) keeps its first row)."""
        self._check_writable()
        loo = loo or {}
        with self._transaction() as cur:
            cur.execute("INSERT INTO search_rounds (run, round, model, after_step, hypervolume, encoding, loo_index, "
                        "loo_bits, pool, kept, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [run, round, model, after_step, hypervolume, encoding, loo.get("index"), loo.get("bits"),
                         pool, kept, seconds])

    def add_task_metrics(self, model: str, config, adapter_id: str, method: str, metrics) -> int:
        """Record lm-eval results (:class:`coalora.evaluation.tasks.TaskMetric` rows) of ``config`` (a
        :class:`~coalora.quant.config.ModelQuantConfig`, stored too; None: the unquantized model, stored
        under config hash :data:`UNQUANTIZED`) in one transaction; returns rows added (a key already
        stored keeps its first row, as for evaluations)."""
        self._check_writable()
        from coalora import __version__ as version

        added = 0
        config_hash = config.hash if config is not None else UNQUANTIZED
        bits = config.avg_bits if config is not None else None
        with self._transaction() as cur:
            if config is not None:
                insert_config(cur, config)
            for m in metrics:
                if not math.isfinite(m.value):
                    raise CoaloraError(f"task {m.task} metric {m.metric} is not a finite number: {m.value!r}")
                added += len(cur.execute(
                    f"INSERT INTO task_metrics ({', '.join(TASK_KEY)}, value, stderr, samples, avg_bits, seconds, version)"
                    f" VALUES ({', '.join('?' * (len(TASK_KEY) + 6))}) ON CONFLICT DO NOTHING RETURNING 1",
                    [model, config_hash, adapter_id, method, m.task, m.metric, m.limit, m.lm_eval_version,
                     m.task_version, m.value, m.stderr, m.samples, bits, m.seconds, version]).fetchall())
        return added

    # ---- reads

    def task_metrics(self, model: str | None = None, config_hash: str | None = None, method: str | None = None,
                     adapter_id: str | None = None, task: str | None = None, metric: str | None = None,
                     doc_limit: int | None = None) -> list[dict[str, Any]]:
        """Stored lm-eval task metrics matching every given filter (one dict per row: the key
        columns, ``value``, ``stderr``, ``samples``, ``avg_bits``), oldest first."""
        where, args = where_clause(model=model, config_hash=config_hash, method=method, adapter_id=adapter_id,
                                   task=task, metric=metric, doc_limit=doc_limit)
        cur = self._cursor().execute(f"SELECT * FROM task_metrics{where} ORDER BY created_at, config_hash, task, metric",
                                     args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def find_evaluation(self, model: str, config_hash: str, adapter_id: str, method: str, eval_set: str,
                        seqlen: int, windows: int, eval_spec: str = DEFAULT_SPEC) -> Evaluation | None:
        """The stored evaluation with this key, or None (the quick-eval cache lookup).

        ``eval_spec`` is part of the key: a result measured on other windows is never returned.
        """
        cols = [f.name for f in fields(Evaluation)]
        row = self._cursor().execute(
            f"SELECT {', '.join(cols)} FROM evaluations WHERE {' AND '.join(f'{k} = ?' for k in EVAL_KEY)}",
            [model, config_hash, adapter_id, method, eval_set, seqlen, windows, eval_spec]).fetchone()
        return Evaluation(**dict(zip(cols, row))) if row else None

    def evaluations(self, model: str | None = None, method: str | None = None, eval_set: str | None = None,
                    seqlen: int | None = None, windows: int | None = None, adapter_id: str | None = None,
                    eval_spec: str | None = None) -> list[Evaluation]:
        """Stored evaluations matching every given filter, oldest first (``eval_spec`` None: every spec;
        callers that compare or fit numbers pass one)."""
        cols = [f.name for f in fields(Evaluation)]
        where, args = where_clause(model=model, method=method, eval_set=eval_set, seqlen=seqlen, windows=windows,
                                   adapter_id=adapter_id, eval_spec=eval_spec)
        rows = self._cursor().execute(f"SELECT {', '.join(cols)} FROM evaluations{where} ORDER BY created_at, config_hash",
                                      args).fetchall()
        return [Evaluation(**dict(zip(cols, r))) for r in rows]

    def config_ids(self, config_hash: str) -> tuple[str, list[int]] | None:
        """(model, per-target config ids) of a stored configuration, or None."""
        row = self._cursor().execute("SELECT model, ids FROM configs WHERE config_hash = ?", [config_hash]).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def configs(self, model: str) -> dict[str, list[int]]:
        """Every stored configuration of ``model``: hash -> per-target config ids."""
        rows = self._cursor().execute("SELECT config_hash, ids FROM configs WHERE model = ?", [model]).fetchall()
        return {h: json.loads(ids) for h, ids in rows}

    def search_rounds(self, run: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Stored search rounds matching the given filters, one dict per row, by run and round."""
        where, args = where_clause(run=run, model=model)
        cur = self._cursor().execute(f"SELECT * FROM search_rounds{where} ORDER BY run, round", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def count(self, table: str) -> int:
        """Rows in ``table``."""
        check_table(table)
        return int(self._cursor().execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def models(self) -> list[str]:
        """Every model with a model row or an evaluation, sorted."""
        rows = self._cursor().execute(
            "SELECT model FROM models UNION SELECT DISTINCT model FROM evaluations ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    # ---- export / import

    def export_table(self, table: str, path: str | os.PathLike) -> Path:
        """Write ``table`` to ``path`` (``.parquet`` or ``.csv``, by extension), atomically."""
        from coalora.files import atomic_file

        check_table(table)
        p = Path(path)
        fmt = file_format(p)
        with atomic_file(p) as tmp:
            write_table(self._cursor(), table, tmp, fmt)
        return p

    def import_table(self, table: str, path: str | os.PathLike) -> int:
        """Add the rows of a Parquet/CSV file to ``table`` (existing keys are kept). Returns rows added."""
        self._check_writable()
        check_table(table)
        p = Path(path)
        if not p.is_file():
            raise CoaloraError(f"no file {p} to import")
        file_format(p)
        with self._transaction() as cur:
            before = cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            insert_from_file(cur, table, p)
            after = cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return int(after - before)


def _damaged(path: str, msg: str) -> str:
    if ".wal" in msg:  # the write-ahead log (the last writes) is damaged, not necessarily the file
        return (f"results store {path} cannot be opened: its write-ahead log {path}.wal is damaged "
                f"({first_line(msg)}). Move the log aside (mv {path}.wal {path}.wal.bad) to open the store "
                "without the writes it held")
    return (f"results store {path} cannot be opened ({first_line(msg)}): it is damaged or not a DuckDB file. "
            f"Move it aside (mv {path} {path}.bad) and coalora starts a fresh store, seeded from data/seed/")


def _lock_holder(msg: str) -> str:
    m = re.search(r"PID (\d+)", msg)
    return f" (PID {m.group(1)})" if m else ""
