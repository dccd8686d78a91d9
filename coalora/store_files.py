"""Parquet / CSV files in and out of the results store's tables, and the shipped seed (``data/seed/``).

A file goes into a table by column name: columns the table lacks are ignored, a key column the file
lacks is an error unless the table's default fills it (:data:`~coalora.store_schema.IMPLIED`), and a
key already stored keeps its row. Each function takes a DuckDB cursor; the caller owns the transaction.
"""

from __future__ import annotations

from pathlib import Path

from coalora.errors import CoaloraError
from coalora.store_schema import IMPLIED, PRIMARY_KEYS, TABLES


def check_table(table: str) -> None:
    """Raise :class:`CoaloraError` unless ``table`` is one of :data:`~coalora.store_schema.TABLES`."""
    if table not in TABLES:
        raise CoaloraError(f"unknown table {table!r}; one of {', '.join(TABLES)}")


def file_format(p: Path) -> str:
    """``parquet`` or ``csv``, by ``p``'s extension (anything else is a :class:`CoaloraError`)."""
    ext = p.suffix.lower()
    if ext not in (".parquet", ".csv"):
        raise CoaloraError(f"{p}: use a .parquet or .csv file")
    return ext[1:]


def sql_path(p: Path) -> str:
    """``p`` as the body of a single-quoted SQL string."""
    return str(p).replace("'", "''")


def first_line(msg: str) -> str:
    """The first line of a (DuckDB) error message."""
    return msg.strip().splitlines()[0] if msg.strip() else msg


def write_table(cur, table: str, path: Path, fmt: str) -> None:
    """Write every row of ``table`` to ``path`` in ``fmt`` (``parquet`` or ``csv``), sorted so the file
    is reproducible; ``path`` may be a temporary name (the format is not taken from it)."""
    import duckdb

    check_table(table)
    opts = "(FORMAT PARQUET)" if fmt == "parquet" else "(FORMAT CSV, HEADER TRUE)"
    try:
        cur.execute(f"COPY (SELECT * FROM {table} ORDER BY ALL) TO '{sql_path(path)}' {opts}")
    except duckdb.Error as e:
        raise CoaloraError(f"cannot write {path}: {first_line(str(e))}") from None


def insert_from_file(cur, table: str, p: Path) -> None:
    """Insert the rows of the Parquet/CSV file ``p`` into ``table`` (keys already stored are kept)."""
    import duckdb

    # CSV: a quoted empty string ("" for "no adapter") must stay a string, not become NULL.
    src = (f"read_parquet('{sql_path(p)}')" if file_format(p) == "parquet"
           else f"read_csv('{sql_path(p)}', header = true, allow_quoted_nulls = false)")
    cols = [r[0] for r in cur.execute(f"DESCRIBE {table}").fetchall()]
    try:
        have = [r[0] for r in cur.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
        missing = [c for c in PRIMARY_KEYS[table] if c not in have and c not in IMPLIED.get(table, ())]
        if missing:
            raise CoaloraError(f"{p} cannot go into table {table}: it lacks column(s) {', '.join(missing)}")
        use = [c for c in cols if c in have]
        cur.execute(f"INSERT INTO {table} ({', '.join(use)}) SELECT {', '.join(use)} FROM {src} "
                    "ON CONFLICT DO NOTHING")
    except duckdb.Error as e:
        raise CoaloraError(f"cannot import {p} into {table}: {first_line(str(e))}") from None


def seed(cur, seed_dir: Path) -> None:
    """Insert the shipped ``<table>.parquet`` files of ``seed_dir`` (those that exist)."""
    for table in TABLES:
        f = seed_dir / f"{table}.parquet"
        if f.is_file():
            insert_from_file(cur, table, f)
