"""The ``coalora`` command line: a table of subcommands, each a thin call into the package.

User mistakes (:class:`~coalora.errors.CoaloraError`) print one line ``error: ...`` to stderr and
exit with status 2; ``--json`` output goes to stdout alone, so it can be piped. Heavy libraries are
imported inside the commands so that ``coalora --help`` stays fast.
"""

from __future__ import annotations

import argparse
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
    from coalora.evaluate import evaluate_corpus
    from coalora.models import load_model

    _check_positive(args, "seqlen", "windows", "batch_size")
    if args.config and args.preset:
        raise CoaloraError("give either --config or --preset, not both")
    model, tok = load_model(args.model)
    qcfg = _load_quant_config(args, model) if (args.config or args.preset) else None
    if qcfg is not None:
        from coalora.apply import ConfigApplier

        stats = ConfigApplier(model, args.model, list(qcfg.targets)).apply(qcfg)
        _log(f"applied {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) to {stats.changed} matrices in {stats.seconds:.1f} s")
    res = evaluate_corpus(
        model,
        tok,
        corpus=args.corpus,
        split=args.split,
        seqlen=args.seqlen,
        windows=args.windows,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    out = {"model": args.model, **res.to_dict()}
    if qcfg is not None:
        out.update(avg_bits=qcfg.avg_bits, config_hash=qcfg.hash)
    else:
        out.update(avg_bits=None, config_hash=None)  # unquantized
    if args.json:
        _print_json(out)
    else:
        bits = f" at {qcfg.avg_bits:.4f} avg bits" if qcfg is not None else " (unquantized)"
        print(
            f"{args.model}{bits} on {res.dataset}: ppl {res.ppl:.3f} (nll {res.nll:.4f}) over {res.windows} windows x "
            f"{res.seqlen} tokens, {res.tokens_per_s:.0f} tokens/s"
        )
    return 0


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


def cmd_serve(args: argparse.Namespace) -> int:
    from app import main as serve_main  # app.py is the one place that builds and launches the UI

    return serve_main(["--host", args.host, "--port", str(args.port), "--model", args.model])


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CoaloraError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


# --------------------------------------------------------------------------------------------
# parser


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    p = argparse.ArgumentParser(
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
        "Token perplexity over non-overlapping windows of the held-out text (GPTQ/LQ-LoRA convention).",
    )
    sp.add_argument("--model", default="smollm2-135m", help="registry name or local checkpoint directory")
    sp.add_argument("--corpus", default="shakespeare", help="shakespeare, a .txt/.jsonl file or directory, or hf:<dataset>[:<config>]:<split>")
    sp.add_argument("--split", default="eval", choices=["train", "eval"], help="corpus split (shakespeare: by play)")
    sp.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    sp.add_argument("--windows", type=int, default=8, help="evaluate the first N windows (quick mode); default 8")
    sp.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    sp.add_argument("--config", help="quantize with this configuration file (coalora.quant_config/1 JSON) first")
    sp.add_argument("--preset", help="quantize every target uniformly: nf2-dq, nf3-dq, nf4-dq, nf8-dq or uniform:b0,b1,b2,B0,B1")
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
    sp.add_argument("--weighting", choices=["none", "activation"], default="activation",
                    help="error weighting: plain Frobenius, or by mean squared input activations on calibration text")
    sp.add_argument("--out", help="write the configuration file here")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sp.add_argument("--json", action="store_true", help="print one JSON object")

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
        return commands[args.command](args)
    except CoaloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
