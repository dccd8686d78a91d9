"""Benchmark coalora.search.front: the GP-predicted front over stored evaluations (issue target: < 3 s on
2 cores for 300 stored evaluations and ~3,000 candidates).

A SmolLM2-shaped problem (210 matrices, the synthetic error table of
:func:`coalora.lqlora.allocate.synthetic_instance`), an in-memory store filled with n evaluations of
candidate configurations (log ppl from the log of the table error plus noise), then per n in 100/300/1000:
the cold query (full GP fit + prediction + EHVI proposals), a query after one new evaluation
(conditioning only) and a cached query. Candidate generation (once per model) is timed apart.
Then, at 300 evaluations, the cached query (GP fitted: prediction, Pareto filter, EHVI proposals)
over ~1,400 / 3,000 / 6,200 candidates (10 / 22 / 46 neighbours per allocator solution), best of 3:
the issue asks that the front grow no faster than linearly in candidates.
Prints ONE JSON object.

``--search ROUNDS`` instead replays the training-time search on the same surrogate
(:func:`coalora.search.round.propose` then the segment-wise Pareto filter over 2.25-7.25 bits, 40
segments), on the synthetic oracle above (log ppl from the log table error, a fixed 0.01 noise per
configuration) from the allocator's solutions at 20 budgets: per round the hypervolume of the kept set
(reference (7.5 bits, 1.1 x the worst initial loss)), the proposals kept, the GP's LOO RMSE and the
seconds, with the error table given to the search and without it (the weight-free stand-in).

    python bench/bench_front.py [--sizes 100 300 1000] [--search 4]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from coalora.lqlora.allocate import SMOLLM2_SHAPES, synthetic_instance  # noqa: E402
from coalora.models import Target  # noqa: E402
from coalora.quant.config import ModelQuantConfig  # noqa: E402
from coalora.search.front import FrontQuery, FrontService, FrontSettings  # noqa: E402
from coalora.store import Evaluation, Store  # noqa: E402

MODEL = "smollm2-shaped"


def candidate_scaling(store, targets, table, q) -> dict:
    """Cached-front seconds (best of 3) as the candidate set grows, at a fixed GP."""
    rows = []
    for k in (10, 22, 46):
        svc = FrontService(store, MODEL, targets, table, settings=FrontSettings(neighbours=k))
        svc.front(q, budget=3.0)  # fits the GP and builds the candidates
        best = min(svc.front(q, budget=3.0).seconds for _ in range(3))
        rows.append({"neighbours": k, "candidates": len(svc.candidates()[0]), "cached_seconds": best})
        print(f"{rows[-1]['candidates']} candidates: {best:.2f} s", file=sys.stderr)
    grow_c = rows[-1]["candidates"] / rows[0]["candidates"]
    grow_t = rows[-1]["cached_seconds"] / rows[0]["cached_seconds"]
    return {"rows": rows, "candidates_growth": grow_c, "seconds_growth": grow_t}


def _oracle(table: np.ndarray):
    """The synthetic loss of config ids ``[N]``: log 30 + 0.5 log(table error / its minimum) + fixed noise."""
    import zlib

    floor = float(table.min(1).sum())

    def loss(ids: np.ndarray) -> float:
        err = float(table[np.arange(len(ids)), ids].sum())
        noise = np.random.default_rng(zlib.crc32(ids.astype(np.int64).tobytes())).normal(0, 0.01)
        return math.log(30.0) + 0.5 * math.log(err / floor) + noise
    return loss


def search_replay(rounds: int, with_table: bool) -> dict:
    """Hypervolume and cost of ``rounds`` training-search rounds (module docstring)."""
    from coalora.lqlora.allocate import allocate_many
    from coalora.quant.config import ALL_CONFIGS
    from coalora.search.encoding import config_ids
    from coalora.search.pareto import hypervolume_2d, segment_pareto_filter
    from coalora.search.round import SearchSettings, propose

    table, numels, bits = synthetic_instance(seed=0)
    loss, index = _oracle(table), np.array([c.index for c in ALL_CONFIGS])
    sols = allocate_many(table, numels, bits, np.linspace(2.25, 7.25, 20).tolist(), method="fast")
    pool = list({np.asarray(a.choice).tobytes(): np.asarray(a.choice) for a in sols}.values())
    ys, bs = [loss(p) for p in pool], [float(bits[p] @ numels / numels.sum()) for p in pool]
    ref = (7.5, 1.1 * max(ys))
    out = {"table": with_table, "hv0": hypervolume_2d(list(zip(bs, ys)), ref), "rounds": []}
    for r in range(rounds):
        t0 = time.perf_counter()
        rnd = propose(np.stack([index[p] for p in pool]), bs, ys, numels.tolist(), SearchSettings(5, 20, seed=r),
                      table=table if with_table else None)
        new = [config_ids(c) for c in rnd.candidates]
        pool, ys, bs = pool + new, ys + [loss(p) for p in new], bs + [float(bits[p] @ numels / numels.sum()) for p in new]
        keep = segment_pareto_filter(bs, ys, 2.25, 7.25, 40).tolist()
        kept_new = sum(i >= len(pool) - len(new) for i in keep)
        pool, ys, bs = [pool[i] for i in keep], [ys[i] for i in keep], [bs[i] for i in keep]
        out["rounds"].append({"hv": hypervolume_2d(list(zip(bs, ys)), ref), "new": len(new), "kept_new": kept_new,
                              "loo_rmse": next(iter(rnd.loo_rmse.values())), "seconds": time.perf_counter() - t0})
        print(f"search round {r} (table {with_table}): HV {out['rounds'][-1]['hv']:.4f}", file=sys.stderr)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--search", type=int, default=0, help="replay this many training-search rounds instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.search:
        print(json.dumps({"threads": 2, "search_replay": [search_replay(args.search, t) for t in (True, False)]}))
        return 0
    table, _, _ = synthetic_instance(seed=0)
    targets = [Target(f"model.layers.{b}.{kind}", b, kind, shape) for b in range(30) for kind, shape in SMOLLM2_SHAPES.items()]
    rng = np.random.default_rng(0)
    out: dict = {"threads": 2, "matrices": len(targets), "sizes": {}}
    for n in args.sizes:
        store = Store(":memory:", seed_dir=None)
        svc = FrontService(store, MODEL, targets, table)
        t0 = time.perf_counter()
        cids, _, _ = svc.candidates()
        out["candidates"] = len(cids)
        out["candidates_seconds"] = time.perf_counter() - t0
        floor = float(table.min(1).sum())
        rows = cids[rng.choice(len(cids), n + 1, replace=n + 1 > len(cids))]

        def add(ids, store=store, floor=floor) -> None:
            c = ModelQuantConfig.from_ids(MODEL, targets, ids.tolist())
            # log ppl grows with the log of the table error relative to the best possible
            err = float(table[np.arange(len(ids)), ids].sum())
            y = math.log(30.0) + 0.5 * math.log(err / floor) + rng.normal(0, 0.01)
            store.add_evaluation(Evaluation(MODEL, c.hash, "coalora", "a", "bench", 256, 8, 2040, math.exp(y), y,
                                            c.avg_bits), config=c)

        for ids in rows[:n]:
            add(ids)
        q = FrontQuery(MODEL, eval_set="bench")
        r_cold = svc.front(q, budget=3.0)
        add(rows[n])
        r_new = svc.front(q, budget=3.0)
        r_cached = svc.front(q, budget=3.0)
        out["sizes"][str(n)] = {"measured": len(r_new.measured), "candidates": r_cold.n_candidates,
                                "cold_seconds": r_cold.seconds, "after_one_new_seconds": r_new.seconds,
                                "after_one_new_refit": r_new.refit, "cached_seconds": r_cached.seconds}
        print(f"n={n}: cold {r_cold.seconds:.2f} s, +1 eval ({r_new.refit}) {r_new.seconds:.2f} s, "
              f"cached {r_cached.seconds:.2f} s", file=sys.stderr)
        if n == 300:
            out["candidate_scaling"] = candidate_scaling(store, targets, table, q)
        store.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
