"""Perplexity and KL of a trained CoA-LoRA adapter vs the bare quantized model at allocator budgets.

For each budget the (fast) allocator's configuration is generated on the fly: no fine-tuning for
that configuration. Marks whether the configuration was in the adapter's final training set
("seen") or not ("unseen"). The windows are the eval spec's (``--spec``, default strided-v1:
spread evenly over the four held-out plays); KL is per token against the unquantized model's
log-probs on the same windows (cached, :mod:`coalora.evaluation.reference`). For an adapter on the
``lq`` base it also scores that base without the LoRA (Q_c(W - L1 L2) + L1 L2); "quantized" is always
the plainly quantized Q_c(W). Writes JSON and prints a markdown table.

    python scripts/eval_adapter.py --adapter data/default/smollm2-135m-coalora.safetensors \\
        [--budgets 2.5,3,3.5,4,5,6] [--windows 16] [--out data/default/eval.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--budgets", default="2.5,3,3.5,4,5,6")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--spec", default="strided-v1", choices=["strided-v1", "prefix-v0"])
    p.add_argument("--seen", action="store_true",
                   help="also evaluate the training-set configuration nearest to each budget (seen vs unseen)")
    p.add_argument("--out")
    args = p.parse_args(argv)

    from dataclasses import asdict

    import torch

    from coalora.adapter.apply import BaseSpec
    from coalora.adapter.trained import load_trained
    from coalora.evaluation import reference
    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.files import write_json_atomic
    from coalora.lqlora.allocate import allocate_many
    from coalora.lqlora.sensitivity import cached_error_table, weights_fingerprint
    from coalora.models import find_targets, load_model
    from coalora.quant.config import CONFIG_BITS, ModelQuantConfig

    model, tok = load_model(args.model)
    targets = find_targets(model)
    table = cached_error_table(model, args.model, targets, "fisher", tokenizer=tok, progress=False)
    ew = eval_windows(tok, seqlen=args.seqlen, windows=args.windows, spec=args.spec)
    # the unquantized model's log-probs, before any configuration or adapter touches the weights
    ref = reference.build(model, ew.windows, reference.key(args.model, weights_fingerprint(model, targets), ew.key))
    if not ref.cached:
        raise SystemExit(f"{ew.n} windows need a reference over the cache limit; use fewer --windows")
    with torch.no_grad():
        fp = perplexity(model, ew.windows, progress=False, spec=ew.spec).ppl
    budgets = [float(b) for b in args.budgets.split(",")]
    allocs = allocate_many(table.numpy(), [t.numel for t in targets], list(CONFIG_BITS), budgets, method="fast")
    configs = [ModelQuantConfig.from_ids(args.model, targets, list(a.choice)) for a in allocs]
    coa = load_trained(args.adapter, model, args.model)
    meta = coa.trained_meta  # type: ignore[attr-defined]
    train_set = [ModelQuantConfig.from_ids(args.model, targets, ids) for ids in meta["train"].get("train_set", [])]
    seen = {c.hash for c in train_set}
    if args.seen and train_set:
        extra = [min(train_set, key=lambda c, b=b: abs(c.avg_bits - b)) for b in budgets]
        budgets, configs = budgets + budgets, configs + extra
    coa.eval()
    split_base = coa.adapter_config.base != "quant"  # then also score the split base without the LoRA
    rows = []
    for b, qc in zip(budgets, configs):
        with torch.no_grad():
            coa.set_config(qc)
            with_adapter = perplexity(coa.model, ew.windows, progress=False, reference=ref, spec=ew.spec)
            with coa.disabled():
                split = perplexity(coa.model, ew.windows, progress=False, reference=ref, spec=ew.spec) \
                    if split_base else None
                coa.applier.apply(qc, base=BaseSpec())  # the plainly quantized model
                bare = perplexity(coa.model, ew.windows, progress=False, reference=ref, spec=ew.spec)
        rows.append({"budget": b, "avg_bits": qc.avg_bits, "hash": qc.hash, "seen": qc.hash in seen,
                     "ppl_quantized": bare.ppl, "ppl_coalora": with_adapter.ppl,
                     "kld_quantized": bare.kld, "kld_coalora": with_adapter.kld,
                     **({"ppl_split_base": split.ppl, "kld_split_base": split.kld} if split else {})})
        print(json.dumps(rows[-1]), file=sys.stderr)
    out = {"adapter": args.adapter, "model": args.model, "base": asdict(coa.adapter_config.base_spec),
           "eval": {"windows": ew.n, "seqlen": args.seqlen, "spec": ew.spec, "documents": list(ew.documents),
                    "positions": [list(p) for p in ew.positions], "kld": "nats/token, KL(unquantized || model)"},
           "unquantized_ppl": fp, "rows": rows}
    if args.out:
        from coalora.train.protocol.prepare import versions

        out["remake"] = {"command": "python scripts/eval_adapter.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                         "versions": versions()}
        write_json_atomic(args.out, out)
    sb = split_base
    print("| budget | avg bits | in training set | ppl quantized |" + " ppl split base |" * sb + " ppl + CoA-LoRA |"
          " KL quantized |" + " KL split base |" * sb + " KL + CoA-LoRA |")
    print("|---|---|---|---|" + "---|" * sb + "---|---|" + "---|" * sb + "---|")
    for r in rows:
        print(f"| {r['budget']} | {r['avg_bits']:.3f} | {'seen' if r['seen'] else 'unseen'} | {r['ppl_quantized']:.2f} |"
              + (f" {r['ppl_split_base']:.2f} |" if sb else "") + f" {r['ppl_coalora']:.2f} | {r['kld_quantized']:.4f} |"
              + (f" {r['kld_split_base']:.4f} |" if sb else "") + f" {r['kld_coalora']:.4f} |")
    print(f"unquantized: {fp:.2f} ({ew.n} windows x {args.seqlen}, {ew.spec})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
