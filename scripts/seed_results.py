"""Make the store's seed (data/seed/*.parquet): measured SmolLM2 results the app's front starts from.

For the shipped CoA-LoRA adapter (method ``coalora``) and for the quantized model alone (``none``):
the fast allocator's configurations on a budget grid, then rounds of the front's EHVI proposals
(the same loop as ``coalora search``). Perplexity and KL divergence to the unquantized model on
the held-out plays, 8 windows x 256 tokens picked by the default eval spec (``strided-v1``: spread
evenly over the four plays); each row records its spec, KL and per-window sums. Then the lm-eval
task ``shakespeare_nextline`` on the allocator's configurations at 6 budgets over the same range
(``scripts/seed_tasks.py``, which remakes only that table).

    .venv/bin/python scripts/seed_results.py [--out data/seed] [--rounds 4] [--per-round 6]

Deterministic given the model, the adapter and the error table; about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coalora.evaluation.tasks import APP_LIMIT
from coalora.explorer import Explorer
from coalora.store import TABLES, Store

sys.path.insert(0, str(Path(__file__).parent))
from seed_tasks import add_task_rows  # noqa: E402 (the sibling script's step)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/seed")
    ap.add_argument("--grid", type=float, nargs=3, default=(2.25, 7.25, 21), metavar=("LO", "HI", "N"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=6)
    ap.add_argument("--none-rounds", type=int, default=2)
    ap.add_argument("--task-budgets", type=int, default=6, help="allocator budgets scored on the lm-eval task (0: none)")
    ap.add_argument("--task-limit", type=int, default=APP_LIMIT, help="lm-eval task documents per configuration")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "seed.duckdb", seed_dir=None)
        ex = Explorer("smollm2-135m", adapter="default", store=store)
        t0 = time.time()
        grid = np.linspace(args.grid[0], args.grid[1], int(args.grid[2]))
        for method, rounds in (("coalora", args.rounds), ("none", args.none_rounds)):
            for b in grid:
                ev, _ = ex.evaluate(ex.allocate(float(b)), method)
                print(f"{method:7s} allocator {b:.2f} bits: ppl {ev.ppl:.3f}, KL {ev.kld:.4f}  ({time.time() - t0:.0f} s)",
                      flush=True)
            for r in range(rounds):
                res = ex.front(method)
                for p in res.proposals[: args.per_round]:
                    ev, _ = ex.evaluate(ex.config(p.config_hash), method)
                    print(f"{method:7s} round {r + 1} {p.avg_bits:.2f} bits: predicted {p.pred_ppl:.2f}, measured "
                          f"{ev.ppl:.3f}, KL {ev.kld:.4f}  ({time.time() - t0:.0f} s)", flush=True)
                after = ex.front(method)
                store.add_search_round(f"seed:{method}", r, ex.model_name, -1, after.hypervolume["measured"], "bits",
                                       None, len(after.measured), len(res.proposals[: args.per_round]), after.seconds)
        if args.task_budgets:
            add_task_rows(ex, args.task_budgets, args.task_limit)
        out = Path(args.out)
        for t in TABLES:
            store.export_table(t, out / f"{t}.parquet")
        print({t: store.count(t) for t in TABLES})
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
