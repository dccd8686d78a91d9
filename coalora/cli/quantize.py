"""``coalora prepare``, ``models`` and ``allocate``: the offline assets, the model registry, and LQ-LoRA's
bit allocation of one model at one budget (method.md section 2.3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from coalora.cli.common import emit, log, output_args, print_json


def args_prepare(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--force", action="store_true", help="rebuild even if the cache looks complete")
    sp.add_argument("--verify", action="store_true", help="re-hash every cached file against its manifest")
    sp.add_argument("--json", action="store_true", help="print the asset paths as JSON")


def run_prepare(args: argparse.Namespace) -> int:
    from coalora import assets

    paths = assets.prepare(force=args.force, log=log)
    if args.verify:
        for what, p in paths.items():
            assets.verify(Path(p), deep=True, what=what)
        log("all files match their recorded sha256")
    if args.json:
        print_json(paths)
    else:
        for what, p in paths.items():
            print(f"{what}: {p}")
    return 0


def args_models(sp: argparse.ArgumentParser) -> None:
    output_args(sp, progress=False)


def run_models(args: argparse.Namespace) -> int:
    from coalora.models import REGISTRY

    rows = [{"name": s.name, "source": s.source, "description": s.description} for s in REGISTRY.values()]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:28s} {r['source']:8s} {r['description']}")
    return 0


def args_allocate(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default="smollm2-135m", help="registry name or local checkpoint directory")
    sp.add_argument("--budget", type=float, required=True, help="target average bits per parameter (2.0322..8.625)")
    sp.add_argument("--method", choices=["exact", "fast"], default="exact", help="exact MILP (HiGHS) or fast Lagrangian")
    sp.add_argument("--weighting", choices=["none", "activation", "fisher"], default="fisher",
                    help="error weighting: diagonal empirical Fisher (LQ-LoRA, default), mean squared input "
                         "activations, or plain Frobenius")
    sp.add_argument("--out", help="write the configuration file here")
    output_args(sp)


def run_allocate(args: argparse.Namespace) -> int:
    from coalora.lqlora.allocate import allocate
    from coalora.lqlora.sensitivity import cached_error_table
    from coalora.models import find_targets, load_model
    from coalora.quant.config import CONFIG_BITS, ModelQuantConfig, check_budget

    check_budget(args.budget)  # before loading the model and its error table, not after
    model, tok = load_model(args.model)
    targets = find_targets(model)
    table = cached_error_table(model, args.model, targets, args.weighting, tokenizer=tok, progress=not args.no_progress)
    alloc = allocate(table, [t.numel for t in targets], CONFIG_BITS, args.budget, method=args.method)
    cfg = ModelQuantConfig.from_ids(args.model, targets, alloc.choice)
    if args.out:
        cfg.save(args.out)
    out = {"model": args.model, "budget": args.budget, "avg_bits": cfg.avg_bits, "hash": cfg.hash,
           "method": alloc.method, "weighting": args.weighting, "cost": alloc.cost, "lower_bound": alloc.lower_bound,
           "optimal": alloc.optimal, "seconds": alloc.seconds, "out": args.out,
           "b0_histogram": {b: sum(c.b0 == b for c in cfg.configs) for b in (2, 3, 4, 8)}}
    return emit(args, out, f"{args.model}: {cfg.avg_bits:.4f} avg bits (budget {args.budget}), error {alloc.cost:.4g}, "
                f"{alloc.method} in {alloc.seconds * 1000:.0f} ms; matrices per b0: {out['b0_histogram']}"
                + (f"; wrote {args.out}" if args.out else ""))
