"""``coalora front``, ``search``, ``export`` and ``results``: the stored front of a model (method.md
section 5), growing it, shipping one of its configurations, and the results store's tables."""

from __future__ import annotations

import argparse

from coalora.cli.common import (
    check_convention,
    check_positive,
    convention_args,
    explorer_for,
    front_metric,
    log,
    model_args,
    output_args,
    pick_config,
    print_json,
)
from coalora.errors import CoaloraError
from coalora.quant.config import check_budget

METHODS = ("coalora", "qlora", "lqlora", "shared", "none")


def args_front(sp: argparse.ArgumentParser) -> None:
    model_args(sp)
    sp.add_argument("--method", default="coalora", choices=METHODS)
    sp.add_argument("--budget", type=float, help="average bits per weight (2.03 .. 8.625)")
    convention_args(sp)
    sp.add_argument("--metric", default="ppl", type=front_metric,
                    help="the front's second objective: perplexity (default), kld, the KL divergence to the "
                         "unquantized model (evaluations without a KL are left out), or task:TASK/METRIC, a stored "
                         "lm-eval metric (e.g. task:shakespeare_nextline/acc_norm; shown as the error rate 1 - acc)")
    sp.add_argument("--validate", action="store_true",
                    help="k-fold accuracy of the GP on stored evaluations: Spearman, errors of log ppl (log KL) "
                         "and the coverage of its +-2 sigma band")
    sp.add_argument("--folds", type=int, default=5,
                    help="folds of --validate (default 5; the number of evaluations is leave-one-out)")
    sp.add_argument("--fold-seed", dest="fold_seed", type=int, default=0,
                    help="seed of --validate's fold assignment (default 0)")
    output_args(sp, progress=False)


def run_front(args: argparse.Namespace) -> int:
    check_positive(args, "seqlen", "windows")
    if args.budget is not None:  # before building the explorer
        check_budget(args.budget)
    if args.validate and args.folds < 2:
        raise CoaloraError(f"--folds must be at least 2 (k-fold validation), got {args.folds}")
    if args.fold_seed < 0:
        raise CoaloraError(f"--fold-seed must be a non-negative integer, got {args.fold_seed}")
    ex = explorer_for(args)
    check_convention(args, ex)
    if ex.store.warning:
        log(f"warning: {ex.store.warning}")
    if args.validate:
        return _validate(args, ex)
    res = ex.front(args.method, args.budget, args.seqlen, args.windows, metric=args.metric)
    if args.json:
        print_json(res.to_json())
        return 0
    name, fmt = ("ppl", ".2f") if args.metric == "ppl" else ("KL", ".4f")
    if args.metric.startswith("task:"):
        name, fmt = f"error rate (1 - {args.metric[5:]})", ".3f"
    print(f"{ex.model_name} / {args.method} on {res.query['eval_set']} ({args.windows} x {args.seqlen}, "
          f"{res.query['eval_spec']}), {name}: {len(res.measured)} measured, {res.n_candidates} candidates, "
          f"GP {res.refit}, {res.seconds:.2f} s")
    print(f"hypervolume (avg bits, log {args.metric}) to ({res.hv_reference['bits']}, {name} "
          f"{res.hv_reference[args.metric]:g}): " + ", ".join(f"{k} {v:.3f}" for k, v in res.hypervolume.items()))
    if res.front:
        print(f"predicted front (bits: {name} [-2 sigma, +2 sigma], measured):")
        step = max(1, len(res.front) // 20)
        for p in res.front[::step]:
            meas = f"  measured {p.ppl:{fmt}}" if p.ppl is not None else ""
            print(f"  {p.avg_bits:6.3f}: {p.pred_ppl:10{fmt}} [{p.pred_lo:{fmt}}, {p.pred_hi:{fmt}}]  {p.config_hash}{meas}")
    if res.best is not None:
        b = res.best
        print(f"best within {args.budget} bits: {b.config_hash} at {b.avg_bits:.3f} bits, predicted {name} "
              f"{b.pred_ppl:{fmt}} [{b.pred_lo:{fmt}}, {b.pred_hi:{fmt}}]"
              + (f", measured {b.ppl:{fmt}}" if b.ppl is not None else ""))
    return 0


def _validate(args: argparse.Namespace, ex) -> int:
    v = ex.front_service().validate(ex.query(args.method, args.seqlen, args.windows, metric=args.metric),
                                    folds=args.folds, seed=args.fold_seed)
    if args.json:
        print_json(v)
        return 0
    folds = "leave-one-out" if v["folds"] == v["n"] else f"{v['folds']}-fold, fold seed {v['fold_seed']}"
    line = (f"GP on {v['n']} stored {args.method} evaluations ({folds}, {v['eval_spec']}): Spearman "
            f"{v['spearman']:.3f}, RMSE of log {args.metric} {v['rmse_log_ppl']:.4f}")
    if "median_abs_err_log" in v:
        line += f", median |error| of log {v['median_abs_err_log']:.4f}"
    if "coverage_2sigma" in v:
        line += f", +-2 sigma band holds {100 * v['coverage_2sigma']:.1f}% of held-out points"
    print(line)
    return 0


def args_search(sp: argparse.ArgumentParser) -> None:
    model_args(sp)
    sp.add_argument("--method", default="coalora", choices=["coalora", "none"])
    sp.add_argument("--rounds", type=int, default=1, help="search rounds (default 1)")
    sp.add_argument("--evaluate", type=int, default=4, help="configurations evaluated per round")
    convention_args(sp)
    output_args(sp)


def run_search(args: argparse.Namespace) -> int:
    from coalora.front_growth import grow_front

    check_positive(args, "rounds", "evaluate", "seqlen", "windows")
    ex = explorer_for(args)
    check_convention(args, ex)
    rows = grow_front(ex, args.method, args.rounds, args.evaluate, args.seqlen, args.windows,
                      progress=not args.no_progress, log=log)
    if args.json:
        print_json(rows)
    return 0


def args_export(sp: argparse.ArgumentParser) -> None:
    model_args(sp)
    sp.add_argument("--config", help="configuration file (coalora.quant_config/1 JSON)")
    sp.add_argument("--preset", help="uniform preset, e.g. nf4-dq")
    sp.add_argument("--budget", type=float, help="the allocator's configuration at this many average bits")
    sp.add_argument("--hash", help="a stored or front configuration, by hash")
    sp.add_argument("--out", required=True, help="bundle directory (with --zip: DIR.zip)")
    sp.add_argument("--zip", action="store_true", help="write one zip file instead of a directory")
    sp.add_argument("--force", action="store_true", help="replace an existing bundle")
    sp.add_argument("--no-eval", action="store_true", help="do not measure the perplexity when none is stored")
    sp.add_argument("--gguf", action="store_true",
                    help="also write model.gguf (llama.cpp: the adapter merged, each matrix in the nearest ggml type) "
                         "and measure its perplexity in llama.cpp on the same windows (needs llama-cpp-python)")
    convention_args(sp)
    output_args(sp, progress=False)


def run_export(args: argparse.Namespace) -> int:
    from coalora.export.bundle import read_bundle_meta

    check_positive(args, "seqlen", "windows")
    if args.budget is not None:  # before loading the model and its error table
        check_budget(args.budget)
    ex = explorer_for(args)
    check_convention(args, ex)
    cfg = pick_config(args, ex)
    path = ex.export(cfg, args.out, make_zip=args.zip, force=args.force, measure=not args.no_eval,
                     seqlen=args.seqlen, windows=args.windows, gguf=args.gguf)
    _, meta = read_bundle_meta(path)
    out = {"out": str(path), "config_hash": cfg.hash, "avg_bits": cfg.avg_bits, "packed_bytes": meta["packed_bytes"],
           "size_vs_bits": meta["packed_bytes"] / meta["bits_bytes"], "measured": meta["measured"],
           "predicted": meta["predicted"]}
    if args.json:
        print_json(out)
        return 0
    mm = meta["measured"]
    m = f", measured ppl {mm['ppl']:.3f}" if mm else ""
    if mm and mm.get("kld") is not None:
        m += f" and KL {mm['kld']:.4f} nats/token ({mm.get('eval_spec')})"
    print(f"exported {cfg.hash} ({cfg.avg_bits:.4f} avg bits) to {path}: packed weights {meta['packed_bytes'] / 1e6:.2f} MB "
          f"({out['size_vs_bits']:.4f} x avg_bits * params / 8){m}")
    return 0


TABLES = ("models", "configs", "adapters", "evaluations", "search_rounds")


def args_results(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", choices=["info", "export", "import"])
    sp.add_argument("--table", default="evaluations", choices=TABLES)
    sp.add_argument("--file", help="a .parquet or .csv file (export: written; import: read)")
    output_args(sp, progress=False)


def run_results(args: argparse.Namespace) -> int:
    from coalora.store import Store

    if args.action != "info" and not args.file:
        raise CoaloraError(f"results {args.action} needs --file (a .parquet or .csv path)")
    with Store(fallback=args.action != "import") as st:
        if args.action == "export":
            path = st.export_table(args.table, args.file)
            print(f"wrote {st.count(args.table)} rows of {args.table} to {path}")
        elif args.action == "import":
            n = st.import_table(args.table, args.file)
            print(f"added {n} new rows to {args.table} (rows already stored were kept)")
        else:
            rows = {t: st.count(t) for t in TABLES}
            if args.json:
                print_json({"path": st.path, "rows": rows})
            else:
                print(f"{st.path}: " + ", ".join(f"{v} {k}" for k, v in rows.items()))
    return 0
