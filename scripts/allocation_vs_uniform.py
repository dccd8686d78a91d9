"""Allocated mixed precision vs uniform quantization on the default model (issue 3's quality table).

For each budget, the exact allocator (activation-weighted error table) picks one config per
matrix; the uniform baseline is the single config, applied to every matrix, with the lowest
total table error among those whose bits do not exceed the allocated average bits (the strongest
uniform competitor at equal or lower storage), plus the named presets for reference. Everything is
scored by held-out perplexity (Shakespeare eval plays, non-overlapping windows).

    python scripts/allocation_vs_uniform.py [--windows 16] [--out data/results/allocation_vs_uniform.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--budgets", default="2.5,3,4,6")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--weighting", default="fisher", choices=["none", "activation", "fisher"])
    p.add_argument("--out", default="data/results/allocation_vs_uniform.json")
    args = p.parse_args(argv)

    import torch

    from coalora.adapter.apply import ConfigApplier
    from coalora.evaluation.perplexity import evaluate_corpus
    from coalora.files import write_json_atomic
    from coalora.lqlora.allocate import allocate
    from coalora.lqlora.sensitivity import cached_error_table
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ALL_CONFIGS, CONFIG_BITS, PRESETS, ModelQuantConfig

    model, tok = load_model(args.model)
    targets = find_targets(model)
    numels = torch.tensor([t.numel for t in targets], dtype=torch.float64)
    t0 = time.perf_counter()
    table = cached_error_table(model, args.model, targets, args.weighting, tokenizer=tok)
    table_s = time.perf_counter() - t0
    applier = ConfigApplier(model, args.model, targets)
    bits = list(CONFIG_BITS)
    uniform_cost = table.sum(0)  # [432]: total error if every matrix used config c

    def ppl(cfg: ModelQuantConfig | None) -> float:
        if cfg is None:
            applier.restore()
        else:
            applier.apply(cfg)
        r = evaluate_corpus(model, tok, split="eval", seqlen=args.seqlen, windows=args.windows, batch_size=4, progress=False)
        return r.ppl

    rows = []
    fp_ppl = ppl(None)
    print(f"unquantized ppl {fp_ppl:.3f}", file=sys.stderr)
    for budget in [float(b) for b in args.budgets.split(",")]:
        alloc = allocate(table.numpy(), numels.numpy(), bits, budget, method="exact")
        cfg = ModelQuantConfig.from_ids(args.model, targets, list(alloc.choice))
        ok = [i for i, c in enumerate(ALL_CONFIGS) if c.bits <= cfg.avg_bits + 1e-12]
        best_u = min(ok, key=lambda i: float(uniform_cost[i]))
        ucfg = ModelQuantConfig.uniform(args.model, targets, ALL_CONFIGS[best_u])
        row = {
            "budget": budget,
            "allocated_avg_bits": cfg.avg_bits,
            "allocated_ppl": ppl(cfg),
            "allocated_error": float(alloc.cost),
            "allocated_hash": cfg.hash,
            "uniform_config": str(ALL_CONFIGS[best_u]),
            "uniform_avg_bits": ucfg.avg_bits,
            "uniform_ppl": ppl(ucfg),
            "uniform_error": float(uniform_cost[best_u]),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    presets = []
    for name, c in PRESETS.items():
        ucfg = ModelQuantConfig.uniform(args.model, targets, c)
        presets.append({"preset": name, "avg_bits": ucfg.avg_bits, "ppl": ppl(ucfg), "error": float(uniform_cost[c.id])})
    out = {
        "model": args.model,
        "eval": {"corpus": "shakespeare", "split": "eval", "seqlen": args.seqlen, "windows": args.windows},
        "weighting": args.weighting,
        "error_table_seconds": table_s,
        "unquantized_ppl": fp_ppl,
        "rows": rows,
        "presets": presets,
        "torch_threads": torch.get_num_threads(),
    }
    path = write_json_atomic(args.out, out)

    print("| budget | allocated avg bits | allocated ppl | best uniform <= those bits | uniform bits | uniform ppl |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['allocated_avg_bits']:.4f} | {r['allocated_ppl']:.3f} | {r['uniform_config']} | "
              f"{r['uniform_avg_bits']:.4f} | {r['uniform_ppl']:.3f} |")
    for r in presets:
        print(f"| preset {r['preset']} | | | | {r['avg_bits']:.4f} | {r['ppl']:.3f} |")
    print(f"unquantized ppl {fp_ppl:.3f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
