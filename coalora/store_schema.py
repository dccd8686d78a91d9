"""The results store's schema: tables, keys and the migrations between versions (stack.md).

``meta.schema_version`` records a store's version; migration k brings a store from version k-1 to
k in one transaction (:class:`coalora.store.Store` runs them on open). Schema 2 added the eval spec
(:mod:`coalora.evaluation.spec`) to the evaluation key, the KL divergence to the unquantized model
and the per-window sums; rows of a schema-1 store (and seed files without those columns) were
measured on the old rule, so they read as ``prefix-v0`` with no KL, and a number of one spec is
never returned for another. Schema 3 added ``task_metrics``: lm-evaluation-harness accuracies
(:mod:`coalora.evaluation.tasks`) beside perplexity, keyed by (model, config, adapter, method, task,
metric, limit, lm-eval version, task version); the upgrade only creates the table, every row is kept.
"""

from __future__ import annotations

SCHEMA_VERSION = 3
SEED_SCHEMA = 2
"""The schema of the shipped seed's results (strided-v1, with KL): a new store loads the seed, and
so does one upgraded from an older schema (new keys only; its own rows are kept), so that an old
store's front, whose rows are all prefix-v0, is not left empty under the new default spec."""
TABLES = ("models", "configs", "adapters", "evaluations", "search_rounds", "task_metrics")
"""The store's tables; ``data/seed/<table>.parquet`` seeds each (absent in a wheel install: the store
then starts empty)."""
EVAL_KEY = ("model", "config_hash", "adapter_id", "method", "eval_set", "seqlen", "windows", "eval_spec")
LEGACY_SPEC = "prefix-v0"
"""The spec of every evaluation stored before schema 2 (or imported from a file without ``eval_spec``)."""
TASK_KEY = ("model", "config_hash", "adapter_id", "method", "task", "metric", "doc_limit", "lm_eval_version",
            "task_version")
"""Key of a stored task metric (``doc_limit`` 0: every document of the task)."""
UNQUANTIZED = "unquantized"
"""The config hash of task metrics measured on the unquantized model."""
EVAL_KEY_V1 = EVAL_KEY[:-1]
"""The evaluation key of schema 1 (no eval spec)."""
EVAL_COLS_V1 = ("model", "config_hash", "adapter_id", "method", "eval_set", "seqlen", "windows", "tokens", "ppl",
                 "nll", "avg_bits", "seconds", "version", "created_at")
"""The evaluation columns of schema 1."""
IMPLIED = {"evaluations": ("eval_spec",)}
"""Key columns a file may lack: the table's default fills them (``eval_spec``: :data:`LEGACY_SPEC`)."""

MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE models (model VARCHAR PRIMARY KEY, weights_hash VARCHAR, n_targets INTEGER,"
        " target_params BIGINT, created_at TIMESTAMP DEFAULT current_timestamp)",
        "CREATE TABLE configs (config_hash VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, avg_bits DOUBLE NOT NULL,"
        " ids VARCHAR NOT NULL, created_at TIMESTAMP DEFAULT current_timestamp)",
        "CREATE TABLE adapters (adapter_id VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, method VARCHAR NOT NULL,"
        " path VARCHAR, sha256 VARCHAR, meta VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp)",
        "CREATE TABLE evaluations (model VARCHAR NOT NULL, config_hash VARCHAR NOT NULL, adapter_id VARCHAR NOT NULL,"
        " method VARCHAR NOT NULL, eval_set VARCHAR NOT NULL, seqlen INTEGER NOT NULL, windows INTEGER NOT NULL,"
        " tokens BIGINT NOT NULL, ppl DOUBLE NOT NULL, nll DOUBLE NOT NULL, avg_bits DOUBLE NOT NULL,"
        " seconds DOUBLE, version VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp,"
        f" PRIMARY KEY ({', '.join(EVAL_KEY_V1)}))",
        "CREATE TABLE search_rounds (run VARCHAR NOT NULL, round INTEGER NOT NULL, model VARCHAR, after_step INTEGER,"
        " hypervolume DOUBLE, encoding VARCHAR, loo_index DOUBLE, loo_bits DOUBLE, pool INTEGER, kept INTEGER,"
        " seconds DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (run, round))",
    ],
    # The eval spec joins the key (DuckDB cannot alter a primary key: the table is rebuilt, its rows
    # kept as prefix-v0, the only rule before), with KL and the per-window sums (JSON lists).
    2: [
        "CREATE TABLE evaluations_v2 (model VARCHAR NOT NULL, config_hash VARCHAR NOT NULL,"
        " adapter_id VARCHAR NOT NULL, method VARCHAR NOT NULL, eval_set VARCHAR NOT NULL, seqlen INTEGER NOT NULL,"
        " windows INTEGER NOT NULL, tokens BIGINT NOT NULL, ppl DOUBLE NOT NULL, nll DOUBLE NOT NULL,"
        " avg_bits DOUBLE NOT NULL, seconds DOUBLE, version VARCHAR,"
        f" eval_spec VARCHAR NOT NULL DEFAULT '{LEGACY_SPEC}', kld DOUBLE, window_nll VARCHAR, window_kld VARCHAR,"
        " created_at TIMESTAMP DEFAULT current_timestamp,"
        f" PRIMARY KEY ({', '.join(EVAL_KEY)}))",
        f"INSERT INTO evaluations_v2 ({', '.join(EVAL_COLS_V1)}, eval_spec) SELECT {', '.join(EVAL_COLS_V1)},"
        f" '{LEGACY_SPEC}' FROM evaluations",
        "DROP TABLE evaluations",
        "ALTER TABLE evaluations_v2 RENAME TO evaluations",
    ],
    # lm-eval task metrics (coalora.evaluation.tasks): one row per (task, metric) of a model state.
    3: [
        "CREATE TABLE task_metrics (model VARCHAR NOT NULL, config_hash VARCHAR NOT NULL, adapter_id VARCHAR NOT NULL,"
        " method VARCHAR NOT NULL, task VARCHAR NOT NULL, metric VARCHAR NOT NULL, doc_limit INTEGER NOT NULL,"
        " lm_eval_version VARCHAR NOT NULL, task_version VARCHAR NOT NULL, value DOUBLE NOT NULL, stderr DOUBLE,"
        " samples INTEGER, avg_bits DOUBLE, seconds DOUBLE, version VARCHAR,"
        " created_at TIMESTAMP DEFAULT current_timestamp,"
        f" PRIMARY KEY ({', '.join(TASK_KEY)}))",
    ],
}
"""Migration k: the SQL that brings a store from version k-1 to k (one transaction)."""
PRIMARY_KEYS = {"models": ("model",), "configs": ("config_hash",), "adapters": ("adapter_id",),
                 "evaluations": EVAL_KEY, "search_rounds": ("run", "round"), "task_metrics": TASK_KEY}
"""Each table's primary key: a file imported into a table must hold it (:data:`IMPLIED` aside)."""
