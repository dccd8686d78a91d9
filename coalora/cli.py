"""The ``coalora`` command line: a table of subcommands, each a thin call into the package.

User mistakes (:class:`~coalora.errors.CoaloraError`) print one line ``error: ...`` to stderr and
exit with status 2; ``--json`` output goes to stdout alone, so it can be piped. Heavy libraries are
imported inside the commands so that ``coalora --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable

from coalora import __version__
from coalora.errors import CoaloraError


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# commands


def cmd_prepare(args: argparse.Namespace) -> int:
    from coalora import assets

    paths = assets.prepare(force=args.force, log=_log)
    if args.verify:
        for what, p in paths.items():
            assets.verify(__import__("pathlib").Path(p), deep=True, what=what)
        _log("all files match their recorded sha256")
    if args.json:
        _print_json(paths)
    else:
        for what, p in paths.items():
            print(f"{what}: {p}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from coalora.models import REGISTRY

    rows = [{"name": s.name, "source": s.source, "description": s.description} for s in REGISTRY.values()]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:28s} {r['source']:8s} {r['description']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from coalora.evaluate import eval_windows, perplexity
    from coalora.models import context_length, load_model

    _check_positive(args, "seqlen", "windows", "batch_size")
    if args.config and args.preset:
        raise CoaloraError("give either --config or --preset, not both")
    if args.adapter and not (args.config or args.preset):
        raise CoaloraError("--adapter needs a quantization configuration: give --config or --preset too")
    model, tok = load_model(args.model)
    if args.seqlen > context_length(model):
        raise CoaloraError(f"seqlen {args.seqlen} exceeds the model's context length {context_length(model)}")
    qcfg = _load_quant_config(args, model) if (args.config or args.preset) else None
    from coalora.models import find_targets
    from coalora.sensitivity import weights_fingerprint

    weights_hash = weights_fingerprint(model, find_targets(model)) if qcfg is not None else ""
    coa = None
    if args.adapter:  # checked before any text is read: a bad adapter file is the error to report
        from coalora.trained import load_trained

        coa = load_trained(args.adapter, model, args.model)
        coa.eval()
    ew = eval_windows(tok, corpus=args.corpus, split=args.split, seqlen=args.seqlen,
                      windows=None if args.full else args.windows, spec=args.spec)
    # KL's reference: the unquantized model's log-probs on these windows, taken before any
    # configuration touches the weights (with the adapter's LoRA switched off).
    ref = None
    if qcfg is not None:
        with coa.disabled() if coa is not None else contextlib.nullcontext():
            ref = _eval_reference(args, model, ew, weights_hash)
    if coa is not None:
        import torch

        with torch.no_grad():
            coa.set_config(qcfg)
        _log(f"applied {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) with the CoA-LoRA adapter {args.adapter}")
    elif qcfg is not None:
        from coalora.apply import ConfigApplier

        stats = ConfigApplier(model, args.model, list(qcfg.targets)).apply(qcfg)
        _log(f"applied {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) to {stats.changed} matrices in {stats.seconds:.1f} s")
    res = perplexity(model, ew.windows, batch_size=args.batch_size, dataset=ew.dataset,
                     progress=not args.no_progress, reference=ref, spec=ew.spec)
    body = res.to_dict()
    body["eval_spec"] = body.pop("spec")
    out = {"model": args.model, "adapter": args.adapter, **body, "positions": len(ew.positions),
           "documents": list(ew.documents)}
    if qcfg is not None:
        out.update(avg_bits=qcfg.avg_bits, config_hash=qcfg.hash)
    else:
        out.update(avg_bits=None, config_hash=None)  # unquantized: no KL (it is 0 by definition)
    if args.json:
        _print_json(out)
    else:
        bits = f" at {qcfg.avg_bits:.4f} avg bits" if qcfg is not None else " (unquantized)"
        kl = f", KL to the unquantized model {res.kld:.4f} nats/token" if res.kld is not None else ""
        print(
            f"{args.model}{bits} on {res.dataset}: ppl {res.ppl:.3f} (nll {res.nll:.4f}){kl} over {res.windows} "
            f"windows x {res.seqlen} tokens ({ew.spec}: {len(ew.documents)} documents), {res.tokens_per_s:.0f} tokens/s"
        )
    return 0


def _eval_reference(args: argparse.Namespace, model, ew, weights_hash: str):
    """KL's reference for ``coalora eval``: the unquantized ``model``'s log-probs on ``ew``.

    Cached on disk when it fits (:mod:`coalora.reference`). Too large to cache (``--full``): a
    second, unquantized copy of the model computes them batch by batch during the evaluation,
    since ``model`` itself is about to be quantized.
    """
    from coalora import reference
    from coalora.models import load_model

    key = reference.key(args.model, weights_hash, ew.key)
    ref = reference.build(model, ew.windows, key, batch_size=args.batch_size, progress=not args.no_progress)
    if not ref.cached:
        _log(f"the KL reference of {ew.n} windows is too large to cache; computing it with a second, unquantized "
             "copy of the model")
        second, _ = load_model(args.model)
        ref = reference.build(second, ew.windows, key, batch_size=args.batch_size)
    return ref


def _load_quant_config(args: argparse.Namespace, model):
    from coalora.config import ModelQuantConfig, resolve_preset
    from coalora.models import find_targets

    targets = find_targets(model)
    if args.preset:
        return ModelQuantConfig.uniform(args.model, targets, resolve_preset(args.preset))
    return ModelQuantConfig.load(args.config, targets, model=args.model)


def cmd_allocate(args: argparse.Namespace) -> int:
    import math

    from coalora.allocate import allocate
    from coalora.config import ALL_CONFIGS, MAX_BITS, MIN_BITS, ModelQuantConfig
    from coalora.models import find_targets, load_model
    from coalora.sensitivity import model_error_table

    if not math.isfinite(args.budget) or not MIN_BITS <= args.budget <= MAX_BITS:
        raise CoaloraError(
            f"budget {args.budget} bits is outside the feasible range {MIN_BITS:.4f}..{MAX_BITS:.4f} average bits"
        )
    model, tok = load_model(args.model)
    targets = find_targets(model)
    table = model_error_table(model, args.model, targets, args.weighting, tokenizer=tok, progress=not args.no_progress)
    alloc = allocate(table, [t.numel for t in targets], [c.bits for c in ALL_CONFIGS], args.budget, method=args.method)
    cfg = ModelQuantConfig.from_ids(args.model, targets, alloc.choice)
    if args.out:
        cfg.save(args.out)
    out = {
        "model": args.model,
        "budget": args.budget,
        "avg_bits": cfg.avg_bits,
        "hash": cfg.hash,
        "method": alloc.method,
        "weighting": args.weighting,
        "cost": alloc.cost,
        "lower_bound": alloc.lower_bound,
        "optimal": alloc.optimal,
        "seconds": alloc.seconds,
        "out": args.out,
        "b0_histogram": {b: sum(c.b0 == b for c in cfg.configs) for b in (2, 3, 4, 8)},
    }
    if args.json:
        _print_json(out)
    else:
        print(
            f"{args.model}: {cfg.avg_bits:.4f} avg bits (budget {args.budget}), error {alloc.cost:.4g}, "
            f"{alloc.method} in {alloc.seconds * 1000:.0f} ms; matrices per b0: {out['b0_histogram']}"
            + (f"; wrote {args.out}" if args.out else "")
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from coalora.dataclass_cli import values
    from coalora.train import TrainConfig, Trainer

    cfg = TrainConfig(**values(args, tuple(f.name for f in fields(TrainConfig))))
    trainer = Trainer(cfg, args.out, log=_log, progress=not args.no_progress)
    state = trainer.run()
    if trainer.acc.is_main_process:
        out = {"out": args.out, "step": state.step, "train_set": len(state.train_set), "seconds": round(state.seconds, 1),
               "search_seconds": round(state.search_seconds, 1), "tokens": state.tokens, "searches": state.searches}
        if args.json:
            _print_json(out)
        else:
            print(f"trained {cfg.method} to step {state.step} in {state.seconds:.0f} s ({state.searches} search rounds, "
                  f"{state.search_seconds:.0f} s); training set {len(state.train_set)} configs; checkpoint in {args.out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import time

    from coalora.export_peft import save_peft_adapter
    from coalora.models import load_model
    from coalora.trained import load_trained

    if bool(args.config) == bool(args.preset):
        raise CoaloraError("give exactly one of --config or --preset")
    model, _ = load_model(args.model)
    qcfg = _load_quant_config(args, model)
    coa = load_trained(args.adapter, model, args.model, cache_bytes=0)
    t0 = time.perf_counter()
    lora = coa.generate(qcfg)
    gen_ms = (time.perf_counter() - t0) * 1000
    path = save_peft_adapter(lora, args.out, rank=coa.adapter_config.rank, alpha=coa.adapter_config.alpha,
                             base_model=args.model)
    out = {"out": str(path), "config_hash": qcfg.hash, "avg_bits": qcfg.avg_bits, "generate_ms": gen_ms,
           "rank": coa.adapter_config.rank, "modules": len(lora)}
    if args.json:
        _print_json(out)
    else:
        print(f"generated the LoRA for {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) in {gen_ms:.1f} ms; "
              f"PEFT adapter in {path}")
    return 0


def cmd_export_trained(args: argparse.Namespace) -> int:
    from coalora.train import CHECKPOINT
    from coalora.trained import export_checkpoint

    path = export_checkpoint(os.path.join(args.run, CHECKPOINT), args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from coalora import protocol, protocol_report
    from coalora.dataclass_cli import values

    cfg = protocol.ProtocolConfig(**values(args, tuple(f.name for f in fields(protocol.ProtocolConfig))))
    if args.arm:
        try:
            options = json.loads(args.arm_options or "{}")
        except ValueError:
            raise CoaloraError("--arm-options must be a JSON object, e.g. '{\"base\": \"lq\"}'") from None
        if not isinstance(options, dict):
            raise CoaloraError("--arm-options must be a JSON object of training options")
        protocol.add_arm(args.out, protocol.Arm(args.arm, options, args.arm_why or ""))
        _log(f"arm {args.arm} registered in {args.out}/arms.json")
    elif args.arm_options or args.arm_why:
        raise CoaloraError("--arm-options and --arm-why need --arm NAME")
    if not args.report_only:
        protocol.run(cfg, args.out, max_units=args.max_units, only=args.only, log=_log, progress=not args.no_progress)
    summary = protocol_report.write(args.out)
    print(summary)
    return 0


def _explorer(args: argparse.Namespace, store=None):
    from coalora.explorer import Explorer

    adapter = None if args.adapter == "none" else args.adapter
    return Explorer(args.model, adapter=adapter, store=store)


def _pick_config(args: argparse.Namespace, ex):
    """The configuration named by exactly one of --config / --preset / --budget / --hash."""
    from coalora.config import ModelQuantConfig, resolve_preset

    given = [k for k in ("config", "preset", "budget", "hash") if getattr(args, k, None) is not None]
    if len(given) != 1:
        raise CoaloraError("give exactly one of --config FILE, --preset NAME, --budget BITS or --hash HASH")
    if args.config:
        return ModelQuantConfig.load(args.config, ex.targets, model=ex.model_name)
    if args.preset:
        return ModelQuantConfig.uniform(ex.model_name, ex.targets, resolve_preset(args.preset))
    if args.hash:
        return ex.config(args.hash)
    return ex.allocate(args.budget)


def cmd_front(args: argparse.Namespace) -> int:
    from coalora.front import check_budget, check_metric

    _check_positive(args, "seqlen", "windows")
    check_metric(args.metric)
    if args.budget is not None:
        check_budget(args.budget)
    if args.validate and args.folds < 2:
        raise CoaloraError(f"--folds must be at least 2 (k-fold validation), got {args.folds}")
    ex = _explorer(args)
    _check_convention(args, ex)
    if ex.store.warning:
        _log(f"warning: {ex.store.warning}")
    if args.validate:
        v = ex.front_service().validate(ex.query(args.method, args.seqlen, args.windows, metric=args.metric),
                                        folds=args.folds)
        if args.json:
            _print_json(v)
        else:
            print(f"GP on {v['n']} stored {args.method} evaluations ({v['folds']}-fold, {v['eval_spec']}): Spearman "
                  f"{v['spearman']:.3f}, RMSE of log {args.metric} {v['rmse_log_ppl']:.4f}")
        return 0
    res = ex.front(args.method, args.budget, args.seqlen, args.windows, metric=args.metric)
    if args.json:
        _print_json(res.to_json())
        return 0
    name, fmt = ("ppl", ".2f") if args.metric == "ppl" else ("KL", ".4f")
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


def cmd_search(args: argparse.Namespace) -> int:
    """Grow the stored front: evaluate the EHVI proposals, refit, repeat."""
    from tqdm.auto import tqdm

    _check_positive(args, "rounds", "evaluate", "seqlen", "windows")
    ex = _explorer(args)
    _check_convention(args, ex)
    if ex.store.read_only:
        raise CoaloraError(ex.store.warning or "the results store is read-only")
    rows = []
    for r in range(args.rounds):
        res = ex.front(args.method, None, args.seqlen, args.windows)
        if not res.proposals:
            seeds = [ex.allocate(b) for b in (2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0)][: max(3, args.evaluate)]
            todo = [(c.hash, c) for c in seeds]
        else:
            todo = [(p.config_hash, None) for p in res.proposals[: args.evaluate]]
        for h, c in tqdm(todo, desc=f"search round {r + 1}", unit="config", disable=args.no_progress):
            ex.evaluate(c if c is not None else ex.config(h), args.method, args.seqlen, args.windows)
        after = ex.front(args.method, None, args.seqlen, args.windows)
        hv = after.hypervolume.get("measured", 0.0)
        ex.store.add_search_round(f"front-search:{ex.model_name}:{args.method}", len(ex.store.search_rounds(
            f"front-search:{ex.model_name}:{args.method}")), ex.model_name, -1, hv, "bits", None, len(after.measured),
            len(todo), after.seconds)
        rows.append({"round": r + 1, "evaluated": len(todo), "measured": len(after.measured), "hypervolume": hv})
        _log(f"round {r + 1}: evaluated {len(todo)}, {len(after.measured)} measured, hypervolume {hv:.3f}")
    if args.json:
        _print_json(rows)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _check_positive(args, "seqlen", "windows")
    if args.budget is not None:  # before loading the model and its error table, not after
        from coalora.front import check_budget

        check_budget(args.budget)
    ex = _explorer(args)
    _check_convention(args, ex)
    cfg = _pick_config(args, ex)
    path = ex.export(cfg, args.out, make_zip=args.zip, force=args.force, measure=not args.no_eval,
                     seqlen=args.seqlen, windows=args.windows)
    from coalora.bundle import read_bundle_meta

    _, meta = read_bundle_meta(path)
    out = {"out": str(path), "config_hash": cfg.hash, "avg_bits": cfg.avg_bits, "packed_bytes": meta["packed_bytes"],
           "size_vs_bits": meta["packed_bytes"] / meta["bits_bytes"], "measured": meta["measured"],
           "predicted": meta["predicted"]}
    if args.json:
        _print_json(out)
    else:
        mm = meta["measured"]
        m = f", measured ppl {mm['ppl']:.3f}" if mm else ""
        if mm and mm.get("kld") is not None:
            m += f" and KL {mm['kld']:.4f} nats/token ({mm.get('eval_spec')})"
        print(f"exported {cfg.hash} ({cfg.avg_bits:.4f} avg bits) to {path}: packed weights {meta['packed_bytes'] / 1e6:.2f} MB "
              f"({out['size_vs_bits']:.4f} x avg_bits * params / 8){m}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from coalora.bundle import load_bundle

    b = load_bundle(args.bundle)
    meta = b.meta
    out = {"bundle": str(b.path), "model": meta["model"], "config_hash": b.config.hash, "avg_bits": b.config.avg_bits,
           "adapter": meta["adapter"], "recorded": meta["measured"], "reproduced": None}
    if args.eval:
        from coalora import data, evalspec
        from coalora.evaluate import perplexity
        from coalora.store import LEGACY_SPEC

        m = meta["measured"]
        if not m:
            raise CoaloraError("this bundle has no recorded perplexity to reproduce (it was exported with --no-eval)")
        corpus = data.load_corpus("shakespeare", "eval")
        if corpus.id != m["eval_set"]:
            raise CoaloraError(f"the bundle's perplexity is on {m['eval_set']}, but this machine's eval set is {corpus.id}")
        spec = m.get("eval_spec") or LEGACY_SPEC  # bundles from before eval specs measured the prefix
        w = evalspec.select(corpus, b.tokenizer, m["seqlen"], m["windows"], spec).windows
        r = perplexity(b.model, w, dataset=corpus.id, progress=not args.no_progress, spec=spec)
        out["reproduced"] = {"ppl": r.ppl, "relative_diff": abs(r.ppl - m["ppl"]) / m["ppl"]}
    if args.json:
        _print_json(out)
    else:
        print(f"loaded {meta['model']} at {b.config.avg_bits:.4f} avg bits ({b.config.hash})"
              + (f" with its {meta['adapter']['method']} adapter (rank {meta['adapter']['rank']})" if meta["adapter"] else ""))
        if out["reproduced"]:
            print(f"perplexity {out['reproduced']['ppl']:.4f} (recorded {meta['measured']['ppl']:.4f}, relative "
                  f"difference {out['reproduced']['relative_diff']:.2e})")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
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
            rows = {t: st.count(t) for t in ("models", "configs", "adapters", "evaluations", "search_rounds")}
            if args.json:
                _print_json({"path": st.path, "rows": rows})
            else:
                print(f"{st.path}: " + ", ".join(f"{v} {k}" for k, v in rows.items()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__main__.py").is_file():
        raise CoaloraError("the benchmarks live in the source checkout (bench/); run coalora bench from a git clone")
    return subprocess.call([sys.executable, "-m", "bench", *args.names], cwd=root)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CoaloraError(f"--port must be in 0..65535, got {args.port}")
    from app import main as serve_main  # app.py is the one place that builds and launches the UI

    return serve_main(["--host", args.host, "--port", str(args.port), "--model", args.model])


def _check_convention(args: argparse.Namespace, ex) -> None:
    """--seqlen / --windows name a perplexity convention the model can evaluate (as Explorer.windows)."""
    from coalora.explorer import MAX_WINDOWS  # one limit for the CLI and the app
    from coalora.models import context_length

    n = context_length(ex.model)
    if not 2 <= args.seqlen <= n:
        raise CoaloraError(f"--seqlen must be in [2, {n}] (the model's context length), got {args.seqlen}")
    if args.windows > MAX_WINDOWS:
        raise CoaloraError(f"--windows must be in [1, {MAX_WINDOWS}], got {args.windows}")


def _check_not_empty(args: argparse.Namespace) -> None:
    """An empty string (``--config ""``) is a mistake, never "not given": the commands test options by truth."""
    for name, value in vars(args).items():
        if isinstance(value, str) and not value.strip():
            raise CoaloraError(f"--{name.replace('_', '-')} is empty; give a value or leave the option out")


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CoaloraError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


# --------------------------------------------------------------------------------------------
# parser


def _model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default="smollm2-135m", help="registry name (see coalora models)")
    sp.add_argument("--adapter", default="default", help="trained CoA-LoRA file; 'default' = the shipped one, "
                    "'none' = quantization only")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one line ``error: ...`` and status 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    from coalora.dataclass_cli import add_options

    p = _Parser(
        prog="coalora",
        description="CoA-LoRA for mixed-precision quantized LLMs: quantize, allocate bits, train, search, evaluate, export.",
    )
    p.add_argument("--version", action="version", version=f"coalora {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        commands[name] = fn
        return sp

    sp = add("prepare", cmd_prepare, "Fetch and cache the offline default model (SmolLM2-135M) and corpus (Shakespeare).")
    sp.add_argument("--force", action="store_true", help="rebuild even if the cache looks complete")
    sp.add_argument("--verify", action="store_true", help="re-hash every cached file against its manifest")
    sp.add_argument("--json", action="store_true", help="print the asset paths as JSON")

    sp = add("models", cmd_models, "List the registered models.")
    sp.add_argument("--json", action="store_true")

    sp = add(
        "eval",
        cmd_eval,
        "Token perplexity over non-overlapping windows of the held-out text (GPTQ/LQ-LoRA convention) and, "
        "with --config or --preset, the KL divergence to the unquantized model.",
    )
    sp.add_argument("--model", default="smollm2-135m", help="registry name or local checkpoint directory")
    sp.add_argument("--corpus", default="shakespeare", help="shakespeare, a .txt/.jsonl file or directory, or hf:<dataset>[:<config>]:<split>")
    sp.add_argument("--split", default="eval", choices=["train", "eval"], help="corpus split (shakespeare: by play)")
    sp.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    sp.add_argument("--windows", type=int, default=8,
                    help="evaluate N windows picked by --spec (quick mode; default 8)")
    sp.add_argument("--full", action="store_true", help="evaluate every window of the split (full mode; ignores --windows)")
    sp.add_argument("--spec", default="strided-v1", choices=["strided-v1", "prefix-v0"],
                    help="which windows: strided-v1 (default) spreads them evenly over every held-out document; "
                         "prefix-v0 is the old rule, the first N windows of the joined text")
    sp.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    sp.add_argument("--config", help="quantize with this configuration file (coalora.quant_config/1 JSON) first")
    sp.add_argument("--preset", help="quantize every target uniformly: nf2-dq, nf3-dq, nf4-dq, nf8-dq or uniform:b0,b1,b2,B0,B1")
    sp.add_argument("--adapter", help="also add the CoA-LoRA adapter generated for that configuration (a trained "
                    "adapter file, e.g. data/default/smollm2-135m-coalora.safetensors)")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sp.add_argument("--json", action="store_true", help="print one JSON object")

    sp = add(
        "allocate",
        cmd_allocate,
        "Choose one quantization config per matrix that minimises total quantization error within an average-bits "
        "budget (LQ-LoRA's knapsack; exact MILP with HiGHS or a fast Lagrangian).",
    )
    sp.add_argument("--model", default="smollm2-135m", help="registry name or local checkpoint directory")
    sp.add_argument("--budget", type=float, required=True, help="target average bits per parameter (2.0322..8.625)")
    sp.add_argument("--method", choices=["exact", "fast"], default="exact", help="exact MILP (HiGHS) or fast Lagrangian")
    sp.add_argument("--weighting", choices=["none", "activation", "fisher"], default="fisher",
                    help="error weighting: diagonal empirical Fisher (LQ-LoRA, default), mean squared input activations, or plain Frobenius")
    sp.add_argument("--out", help="write the configuration file here")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sp.add_argument("--json", action="store_true", help="print one JSON object")

    sp = add(
        "train",
        cmd_train,
        "Train CoA-LoRA (or a baseline) with checkpoints; rerunning the same command resumes. "
        "Data-parallel: accelerate launch --num_processes P -m coalora train ...",
    )
    sp.add_argument("--out", required=True, help="run directory (checkpoint.safetensors, log.jsonl)")
    from coalora.train import TrainConfig

    add_options(sp, TrainConfig)
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sp.add_argument("--json", action="store_true", help="print the final state as one JSON object")

    sp = add("generate", cmd_generate,
             "Generate the LoRA adapter of one quantization configuration from a trained CoA-LoRA adapter "
             "(no fine-tuning) and save it in PEFT's format.")
    sp.add_argument("--adapter", required=True, help="trained adapter file (coalora.adapter/1)")
    sp.add_argument("--model", default="smollm2-135m")
    sp.add_argument("--config", help="configuration file (coalora.quant_config/1 JSON)")
    sp.add_argument("--preset", help="or a uniform preset, e.g. nf3-dq")
    sp.add_argument("--out", required=True, help="output directory (adapter_config.json + adapter_model.safetensors)")
    sp.add_argument("--json", action="store_true")

    sp = add("export-trained", cmd_export_trained,
             "Write the adapter of a training run (theta + shared LoRA, bf16) as one small file.")
    sp.add_argument("--run", required=True, help="training run directory (holds checkpoint.safetensors)")
    sp.add_argument("--out", required=True, help="output .safetensors file")

    sp = add("compare", cmd_compare,
             "The equal-compute, multi-seed comparison of CoA-LoRA, its theta-off ablation, Shared-LoRA, QLoRA, "
             "LQ-LoRA and no adapter (learning-rate grid on a validation split, then every method at the same "
             "token-passes, perplexity and KL with 95%% intervals). Runs in resumable units: rerun to continue.")
    sp.add_argument("--out", required=True,
                    help="output directory (units/, eval_configs.json, points.parquet, runs.parquet, summary.md, front.png)")
    sp.add_argument("--max-units", dest="max_units", type=int, help="stop after this many units (default: all)")
    sp.add_argument("--only", choices=("grid", "theta-grid", "none", "headline", "arm", "scale"),
                    help="run only units of this kind")
    sp.add_argument("--report-only", dest="report_only", action="store_true",
                    help="write the report from the finished units without training")
    sp.add_argument("--arm", help="register a CoA-LoRA ablation arm NAME (runs at coalora's rates, seeds and compute)")
    sp.add_argument("--arm-options", dest="arm_options",
                    help="the arm's training options as JSON, e.g. '{\"base\": \"lq\", \"sampling\": \"excess\"}'")
    sp.add_argument("--arm-why", dest="arm_why", help="one line on what the arm tests (shown in the report)")
    sp.add_argument("--no-progress", action="store_true")
    from coalora.protocol import ProtocolConfig

    add_options(sp, ProtocolConfig)

    sp = add("front", cmd_front,
             "The GP-predicted Pareto front (avg bits vs perplexity or KL) from stored evaluations of the default "
             "eval spec; with --budget, the best "
             "predicted configuration within it; with --validate, the GP's held-out accuracy.")
    _model_args(sp)
    sp.add_argument("--method", default="coalora", choices=["coalora", "qlora", "lqlora", "shared", "none"])
    sp.add_argument("--budget", type=float, help="average bits per weight (2.03 .. 8.625)")
    sp.add_argument("--seqlen", type=int, default=256, help="perplexity convention of the stored points: window length")
    sp.add_argument("--windows", type=int, default=8, help="... and number of windows")
    sp.add_argument("--metric", default="ppl", choices=["ppl", "kld"],
                    help="the front's second objective: perplexity (default) or kld, the KL divergence to the "
                         "unquantized model (evaluations without a KL are left out)")
    sp.add_argument("--validate", action="store_true", help="k-fold Spearman and RMSE of log ppl (log KL) on stored evaluations")
    sp.add_argument("--folds", type=int, default=5)
    sp.add_argument("--json", action="store_true")

    sp = add("search", cmd_search,
             "Grow the stored front: evaluate the configurations with the highest expected hypervolume improvement, "
             "store them, refit, repeat.")
    _model_args(sp)
    sp.add_argument("--method", default="coalora", choices=["coalora", "none"])
    sp.add_argument("--rounds", type=int, default=1)
    sp.add_argument("--evaluate", type=int, default=4, help="configurations evaluated per round")
    sp.add_argument("--seqlen", type=int, default=256)
    sp.add_argument("--windows", type=int, default=8)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("export", cmd_export,
             "Export a configuration as a bundle: PEFT adapter, packed quantized weights, coalora_config.json, "
             "GPTQModel/HQQ maps, README.")
    _model_args(sp)
    sp.add_argument("--config", help="configuration file (coalora.quant_config/1 JSON)")
    sp.add_argument("--preset", help="uniform preset, e.g. nf4-dq")
    sp.add_argument("--budget", type=float, help="the allocator's configuration at this many average bits")
    sp.add_argument("--hash", help="a stored or front configuration, by hash")
    sp.add_argument("--out", required=True, help="bundle directory (with --zip: DIR.zip)")
    sp.add_argument("--zip", action="store_true", help="write one zip file instead of a directory")
    sp.add_argument("--force", action="store_true", help="replace an existing bundle")
    sp.add_argument("--no-eval", action="store_true", help="do not measure the perplexity when none is stored")
    sp.add_argument("--seqlen", type=int, default=256)
    sp.add_argument("--windows", type=int, default=8)
    sp.add_argument("--json", action="store_true")

    sp = add("load", cmd_load, "Rebuild a bundle's quantized model and adapter (checking every file's hash); "
             "--eval re-measures the recorded perplexity.")
    sp.add_argument("bundle", help="bundle directory or zip file")
    sp.add_argument("--eval", action="store_true", help="re-measure the perplexity and compare with the recorded one")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("results", cmd_results, "The results store ($COALORA_HOME/results.duckdb): row counts, or export/import "
             "a table as Parquet or CSV.")
    sp.add_argument("action", choices=["info", "export", "import"])
    sp.add_argument("--table", default="evaluations", choices=["models", "configs", "adapters", "evaluations", "search_rounds"])
    sp.add_argument("--file", help="a .parquet or .csv file (export: written; import: read)")
    sp.add_argument("--json", action="store_true")

    sp = add("bench", cmd_bench, "Run the benchmarks under bench/ (all, or the named ones) and write bench/results/latest.json.")
    sp.add_argument("names", nargs="*", help="e.g. forward quant apply allocate adapter train")

    sp = add("serve", cmd_serve, "Serve the Gradio app (default http://127.0.0.1:7860).")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1 keeps it private)")
    sp.add_argument("--port", type=int, default=7860)
    sp.add_argument("--model", default="smollm2-135m")
    return p, commands


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _check_not_empty(args)
        return commands[args.command](args)
    except CoaloraError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
