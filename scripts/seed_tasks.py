"""Add lm-eval task accuracies to the store's seed (data/seed/task_metrics.parquet).

The local task ``shakespeare_nextline`` (:mod:`coalora.evaluation.nextline`) on the fast allocator's
configurations at ``--budgets`` budgets over 2.25..7.25 bits (6: 2.25, 3.25, ..., 7.25), with the
shipped CoA-LoRA adapter (``coalora``) and without an adapter (``none``), ``--limit`` documents each
(:data:`coalora.evaluation.tasks.APP_LIMIT`, the app's Quick eval default), so that the app's
*Next-line error rate* axis shows a front on a fresh store. The other seed tables are read, not
rewritten; ``scripts/seed_results.py`` calls :func:`add_task_rows` too, so a full remake has them.

    .venv/bin/python scripts/seed_tasks.py [--out data/seed] [--budgets 6] [--limit 100]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coalora.evaluation import tasks
from coalora.evaluation.nextline import TASK_NAME
from coalora.explorer import Explorer
from coalora.store import Store

GRID = (2.25, 7.25)


def add_task_rows(ex: Explorer, budgets: int, limit: int, methods: tuple[str, ...] = ("coalora", "none")) -> int:
    """Score :data:`TASK_NAME` on the allocator's configuration at ``budgets`` budgets spread over
    :data:`GRID`, per method, and store the rows in ``ex``'s store; returns the rows added."""
    t0, added = time.time(), 0
    for method in methods:
        for b in np.linspace(*GRID, budgets):
            cfg = ex.allocate(float(b))
            rows = tasks.run_for_config(ex, cfg, [TASK_NAME], limit=limit, method=method)
            added += len(rows)
            acc = ", ".join(f"{r.metric} {r.value:.3f} +- {r.stderr:.3f}" for r in rows)
            print(f"{method:7s} {cfg.avg_bits:.2f} bits: {acc}  ({time.time() - t0:.0f} s)", flush=True)
    return added


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/seed")
    ap.add_argument("--budgets", type=int, default=6)
    ap.add_argument("--limit", type=int, default=tasks.APP_LIMIT)
    args = ap.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed"  # the shipped seed without its task rows, which this remakes
        seed.mkdir()
        for f in out.glob("*.parquet"):
            if f.name != "task_metrics.parquet":
                shutil.copy2(f, seed / f.name)
        store = Store(Path(tmp) / "seed.duckdb", seed_dir=seed)
        ex = Explorer("smollm2-135m", adapter="default", store=store)
        add_task_rows(ex, args.budgets, args.limit)
        store.export_table("task_metrics", out / "task_metrics.parquet")
        print({"task_metrics": store.count("task_metrics")})
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
