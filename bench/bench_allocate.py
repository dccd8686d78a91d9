"""Benchmark coalora.lqlora.allocate: exact (HiGHS MILP) vs fast (Lagrangian + greedy) bit allocation.

On the synthetic SmolLM2-sized instance (N = 210 matrices x K = 432 configs, see
:func:`coalora.lqlora.allocate.synthetic_instance`) and on SmolLM2-135M's real Fisher-weighted table it solves each budget with both methods and prints ONE
JSON object: per budget the seconds, costs, average bits, the fast method's optimality gap against
the exact optimum and its gap against its own Lagrangian lower bound.

    python bench/bench_allocate.py [--seed 0] [--budgets 2.5 3.0 3.5 4.0 6.0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from coalora.lqlora.allocate import allocate, optimality_gap, synthetic_instance  # noqa: E402

DEFAULT_BUDGETS = (2.5, 3.0, 3.5, 4.0, 6.0)


def real_instance() -> tuple:
    """SmolLM2-135M's Fisher-weighted error table (cached in $COALORA_HOME; built if missing)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from coalora.lqlora.sensitivity import cached_error_table
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ALL_CONFIGS

    model, tok = load_model("smollm2-135m")
    targets = find_targets(model)
    table = cached_error_table(model, "smollm2-135m", targets, "fisher", tokenizer=tok, progress=False)
    return table.numpy(), [t.numel for t in targets], [c.bits for c in ALL_CONFIGS]


def run(instance: tuple, budgets: list[float], fast_repeats: int, time_limit: float) -> dict:
    costs, numels, bits = instance
    rows = []
    for budget in budgets:
        exact = allocate(costs, numels, bits, budget, "exact", time_limit=time_limit)
        # The fast method takes milliseconds: report the median of a few runs (each one includes
        # validation and pruning, like a single allocate() call).
        fast_runs = [allocate(costs, numels, bits, budget, "fast") for _ in range(fast_repeats)]
        fast = fast_runs[0]
        rows.append(
            {
                "budget": budget,
                "exact": {
                    "seconds": round(exact.seconds, 4),
                    "cost": exact.cost,
                    "avg_bits": exact.avg_bits,
                    "optimal": exact.optimal,
                    "note": exact.note,
                },
                "fast": {
                    "seconds": round(statistics.median(a.seconds for a in fast_runs), 5),
                    "cost": fast.cost,
                    "avg_bits": fast.avg_bits,
                    "lower_bound": fast.lower_bound,
                    "bound_gap": fast.gap,
                },
                "optimality_gap": optimality_gap(fast, exact),
            }
        )
    return {
        "N": int(costs.shape[0]),
        "K": int(costs.shape[1]),
        "results": rows,
        "max_optimality_gap": max(r["optimality_gap"] for r in rows),
        "max_exact_seconds": max(r["exact"]["seconds"] for r in rows),
        "max_fast_seconds": max(r["fast"]["seconds"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument("--fast-repeats", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=60.0, help="HiGHS time limit per budget (s)")
    parser.add_argument("--json", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--no-real", action="store_true", help="skip the real SmolLM2 Fisher table")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = {
        "benchmark": "coalora.lqlora.allocate exact vs fast",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "time_limit": args.time_limit,
        "synthetic": run(synthetic_instance(args.seed), args.budgets, max(1, args.fast_repeats), args.time_limit),
    }
    if not args.no_real:
        report["smollm2-135m-fisher"] = run(real_instance(), args.budgets, max(1, args.fast_repeats), args.time_limit)
    report["total_seconds"] = round(time.perf_counter() - start, 3)
    text = json.dumps(report)  # one line: `python -m bench` reads the last line
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
