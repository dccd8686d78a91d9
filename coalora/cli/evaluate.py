"""``coalora eval`` and ``coalora load``: measure a configured model, or a bundle as shipped.

``eval`` scores perplexity (and, on a quantized model, the KL divergence to the unquantized one) over
the eval spec's windows, or lm-evaluation-harness tasks with ``--tasks``; ``load`` rebuilds a bundle and
can re-measure the perplexity it recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from coalora.cli.common import check_positive, dtype_args, load_quant_config, log, output_args, print_json
from coalora.errors import CoaloraError


def args_eval(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default="smollm2-135m", help="registry name or local checkpoint directory")
    sp.add_argument("--corpus", default="shakespeare",
                    help="shakespeare, a .txt/.jsonl file or directory, or hf:<dataset>[:<config>]:<split>")
    sp.add_argument("--split", default="eval", choices=["train", "eval"], help="corpus split (shakespeare: by play)")
    sp.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    sp.add_argument("--windows", type=int, default=8, help="evaluate N windows picked by --spec (quick mode; default 8)")
    sp.add_argument("--full", action="store_true", help="evaluate every window of the split (full mode; ignores --windows)")
    sp.add_argument("--spec", default="strided-v1", choices=["strided-v1", "prefix-v0"],
                    help="which windows: strided-v1 (default) spreads them evenly over every held-out document; "
                         "prefix-v0 is the old rule, the first N windows of the joined text")
    sp.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    sp.add_argument("--config", help="quantize with this configuration file (coalora.quant_config/1 JSON) first")
    sp.add_argument("--preset", help="quantize every target uniformly: nf2-dq, nf3-dq, nf4-dq, nf8-dq or uniform:b0,b1,b2,B0,B1")
    sp.add_argument("--adapter", help="also add the CoA-LoRA adapter generated for that configuration (a trained "
                    "adapter file, e.g. data/default/smollm2-135m-coalora.safetensors)")
    sp.add_argument("--tasks", help="instead of perplexity, run these lm-evaluation-harness tasks (comma-separated, "
                    "zero-shot), e.g. shakespeare_nextline (local, offline) or hellaswag,arc_easy,piqa (hub datasets); "
                    "results are stored beside perplexity")
    sp.add_argument("--limit", type=int, help="with --tasks: at most N documents per task (default: all)")
    sp.add_argument("--runtime", choices=["packed", "fake"],
                    help="packed: keep only the bit-packed codes and dequantize per layer in each forward (the "
                         "default; memory ~ avg_bits/8 per weight); fake: dequantized weights beside the originals "
                         "(the default with --adapter, which switches configurations)")
    dtype_args(sp)
    output_args(sp)


def _runtime(args: argparse.Namespace) -> str:
    """The checked option combination of ``eval``, and the runtime it implies."""
    check_positive(args, "seqlen", "windows", "batch_size")
    if args.config and args.preset:
        raise CoaloraError("give either --config or --preset, not both")
    if args.adapter and not (args.config or args.preset):
        raise CoaloraError("--adapter needs a quantization configuration: give --config or --preset too")
    runtime = args.runtime or ("fake" if args.adapter else "packed")
    if runtime == "packed" and args.adapter:
        raise CoaloraError("--runtime packed cannot switch a CoA-LoRA adapter's configuration; use --runtime fake "
                           "(the default with --adapter)")
    return runtime


def _configure(args: argparse.Namespace, model, qcfg, coa, runtime: str) -> dict[str, Any]:
    """Put ``qcfg`` on ``model`` for ``runtime`` (with ``coa``'s generated adapter when given); returns what
    the packed runtime reports about its memory (empty otherwise)."""
    import torch

    t0 = time.perf_counter()
    if coa is not None:
        with torch.no_grad():
            coa.set_config(qcfg)
        log(f"applied {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) with the CoA-LoRA adapter {args.adapter}")
        return {}
    if runtime == "packed":
        from coalora.quant.packed import describe_packed, pack_model

        pack_model(model, qcfg)
        info = describe_packed(model)
        log(f"packed {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) in {time.perf_counter() - t0:.1f} s: resident weights "
            f"{info['resident_weight_bytes'] / 2**20:.1f} MiB ({info['packed_bytes'] / 2**20:.1f} MiB packed targets)")
        return info
    from coalora.adapter.apply import ConfigApplier

    stats = ConfigApplier(model, args.model, list(qcfg.targets)).apply(qcfg)
    log(f"applied {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) to {stats.changed} matrices in {stats.seconds:.1f} s")
    return {}


def run_eval(args: argparse.Namespace) -> int:
    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import context_length, find_targets, load_model, resolve_device

    runtime = _runtime(args)
    args.device = resolve_device(args.device)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.seqlen > context_length(model):
        raise CoaloraError(f"seqlen {args.seqlen} exceeds the model's context length {context_length(model)}")
    qcfg = load_quant_config(args, model) if (args.config or args.preset) else None
    weights_hash = weights_fingerprint(model, find_targets(model)) if qcfg is not None else ""
    coa = None
    if args.adapter:  # checked before any text is read: a bad adapter file is the error to report
        from coalora.adapter.trained import load_trained

        coa = load_trained(args.adapter, model, args.model)
        coa.eval()
    if args.tasks:
        return _eval_tasks(args, model, tok, qcfg, coa, runtime)
    ew = eval_windows(tok, corpus=args.corpus, split=args.split, seqlen=args.seqlen,
                      windows=None if args.full else args.windows, spec=args.spec)
    # KL's reference: the unquantized model's log-probs on these windows, taken before any
    # configuration touches the weights (with the adapter's LoRA switched off).
    ref, packed_info = None, {}
    if qcfg is not None:
        with coa.disabled() if coa is not None else contextlib.nullcontext():
            ref = _eval_reference(args, model, ew, weights_hash)
        packed_info = _configure(args, model, qcfg, coa, runtime)
    res = perplexity(model, ew.windows, batch_size=args.batch_size, dataset=ew.dataset,
                     progress=not args.no_progress, reference=ref, spec=ew.spec)
    _report_eval(args, res, ew, qcfg, runtime, packed_info)
    return 0


def _report_eval(args: argparse.Namespace, res, ew, qcfg, runtime: str, packed_info: dict[str, Any]) -> None:
    body = res.to_dict()
    body["eval_spec"] = body.pop("spec")
    out = {"model": args.model, "adapter": args.adapter, **body, "positions": len(ew.positions),
           "documents": list(ew.documents), "dtype": args.dtype, "device": args.device,
           "runtime": runtime if qcfg is not None else None, **packed_info,
           # unquantized: no configuration and no KL (it is 0 by definition)
           "avg_bits": qcfg.avg_bits if qcfg is not None else None,
           "config_hash": qcfg.hash if qcfg is not None else None}
    if args.json:
        print_json(out)
        return
    bits = f" at {qcfg.avg_bits:.4f} avg bits" if qcfg is not None else " (unquantized)"
    kl = f", KL to the unquantized model {res.kld:.4f} nats/token" if res.kld is not None else ""
    print(f"{args.model}{bits} on {res.dataset}: ppl {res.ppl:.3f} (nll {res.nll:.4f}){kl} over {res.windows} "
          f"windows x {res.seqlen} tokens ({ew.spec}: {len(ew.documents)} documents), {res.tokens_per_s:.0f} tokens/s")


def _eval_tasks(args: argparse.Namespace, model, tok, qcfg, coa, runtime: str) -> int:
    """``coalora eval --tasks``: lm-eval tasks (:mod:`coalora.evaluation.tasks`) on the model with ``qcfg``
    applied (and the adapter generated for it), printed and stored beside perplexity."""
    from coalora.evaluation import tasks
    from coalora.store import Store

    names = tasks.parse_tasks(args.tasks)
    limit = tasks.check_limit(args.limit)
    adapter_id = ""
    if qcfg is not None:
        _configure(args, model, qcfg, coa, runtime)
    if coa is not None:
        from coalora.explorer import file_id

        adapter_id = file_id(args.adapter)
    rows = tasks.run_tasks(model, tok, names, limit=limit or None, batch_size=args.batch_size)
    method = "coalora" if coa is not None else "none"
    with Store() as st:
        stored = 0 if st.read_only else st.add_task_metrics(args.model, qcfg, adapter_id, method, rows)
        if st.read_only:
            log(f"warning: {st.warning}")
    out = {"model": args.model, "adapter": args.adapter, "config_hash": qcfg.hash if qcfg else None,
           "avg_bits": qcfg.avg_bits if qcfg else None, "method": method, "limit": limit,
           "tasks": [r.to_dict() for r in rows], "stored": stored}
    if args.json:
        print_json(out)
    else:
        bits = f"{qcfg.avg_bits:.4f} avg bits" if qcfg else "unquantized"
        for r in rows:
            se = f" +- {r.stderr:.4f}" if r.stderr is not None else ""
            print(f"{args.model} ({bits}) {r.task} {r.metric}: {r.value:.4f}{se} over {r.samples} documents")
    return 0


def _eval_reference(args: argparse.Namespace, model, ew, weights_hash: str):
    """KL's reference for ``coalora eval``: the unquantized ``model``'s log-probs on ``ew``.

    Cached on disk when it fits (:mod:`coalora.evaluation.reference`). Too large to cache (``--full``): a
    second, unquantized copy of the model computes them batch by batch during the evaluation,
    since ``model`` itself is about to be quantized.
    """
    from coalora.evaluation import reference
    from coalora.models import load_model

    key = reference.key(args.model, weights_hash, ew.key)
    ref = reference.build(model, ew.windows, key, batch_size=args.batch_size, progress=not args.no_progress)
    if not ref.cached:
        log(f"the KL reference of {ew.n} windows is too large to cache; computing it with a second, unquantized "
            "copy of the model")
        second, _ = load_model(args.model, dtype=args.dtype, device=args.device)
        ref = reference.build(second, ew.windows, key, batch_size=args.batch_size)
    return ref


def args_load(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("bundle", help="bundle directory or zip file")
    sp.add_argument("--eval", action="store_true", help="re-measure the perplexity and compare with the recorded one")
    sp.add_argument("--runtime", default="packed", choices=["packed", "fake"],
                    help="packed (default): keep the bundle's bit-packed codes, dequantize per layer in each forward; "
                         "fake: write the dequantized weights into the base model")
    dtype_args(sp)
    output_args(sp)


def run_load(args: argparse.Namespace) -> int:
    from coalora.export.bundle import load_bundle
    from coalora.models import resolve_device
    from coalora.quant.packed import describe_packed

    args.device = resolve_device(args.device)
    b = load_bundle(args.bundle, device=args.device, dtype=args.dtype, runtime=args.runtime)
    meta = b.meta
    out = {"bundle": str(b.path), "model": meta["model"], "config_hash": b.config.hash, "avg_bits": b.config.avg_bits,
           "adapter": meta["adapter"], "recorded": meta["measured"], "reproduced": None, "runtime": args.runtime,
           "dtype": args.dtype, "device": args.device, **describe_packed(b.model)}
    if args.eval:
        out["reproduced"] = _reproduce(b, meta, progress=not args.no_progress)
    if args.json:
        print_json(out)
        return 0
    print(f"loaded {meta['model']} at {b.config.avg_bits:.4f} avg bits ({b.config.hash})"
          + (f" with its {meta['adapter']['method']} adapter (rank {meta['adapter']['rank']})" if meta["adapter"] else "")
          + f", {args.runtime} runtime, {args.dtype} on {args.device}: resident weights "
          f"{out['resident_weight_bytes'] / 2**20:.1f} MiB")
    if out["reproduced"]:
        print(f"perplexity {out['reproduced']['ppl']:.4f} (recorded {meta['measured']['ppl']:.4f}, relative "
              f"difference {out['reproduced']['relative_diff']:.2e})")
    return 0


def _reproduce(b, meta: dict[str, Any], progress: bool) -> dict[str, float]:
    """A loaded bundle's perplexity on the windows its recorded perplexity was measured on."""
    from coalora import data
    from coalora.evaluation.perplexity import perplexity
    from coalora.evaluation.spec import select
    from coalora.store import LEGACY_SPEC

    m = meta["measured"]
    if not m:
        raise CoaloraError("this bundle has no recorded perplexity to reproduce (it was exported with --no-eval)")
    corpus = data.load_corpus("shakespeare", "eval")
    if corpus.id != m["eval_set"]:
        raise CoaloraError(f"the bundle's perplexity is on {m['eval_set']}, but this machine's eval set is {corpus.id}")
    spec = m.get("eval_spec") or LEGACY_SPEC  # bundles from before eval specs measured the prefix
    w = select(corpus, b.tokenizer, m["seqlen"], m["windows"], spec).windows
    r = perplexity(b.model, w, dataset=corpus.id, progress=progress, spec=spec)
    return {"ppl": r.ppl, "relative_diff": abs(r.ppl - m["ppl"]) / m["ppl"]}
