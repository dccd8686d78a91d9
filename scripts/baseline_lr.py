"""Is the comparison's QLoRA baseline held back by its learning rate? (data/README.md, results/qlora-lr/)

CoA-LoRA's theta can scale every layer's LoRA output through U (its singular values grow to ~20
in a 100-step run with ``theta_lr_scale`` 10), which acts like a larger learning rate for the LoRA
product. This trains the comparison's per-configuration QLoRA baseline at the same unseen budgets
with a larger learning rate, everything else as ``coalora compare`` (rank, batch, steps, windows,
the allocator's configuration at each budget), and scores it on the same 8 x 256 held-out tokens.

    .venv/bin/python scripts/baseline_lr.py --lr 1e-3 --budgets 3.0 5.0 --out data/results/archive/qlora-lr

Each run resumes from its checkpoint under ``--runs``; the JSON is written atomically at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch

    from coalora.assets import home
    from coalora.evaluation.perplexity import perplexity
    from coalora.files import write_json_atomic
    from coalora.train.compare import CompareConfig
    from coalora.train.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--budgets", type=float, nargs="+", default=[3.0, 5.0])
    ap.add_argument("--method", choices=["qlora", "lqlora"], default="qlora")
    ap.add_argument("--out", required=True, help="directory for <method>-lr<lr>.json")
    ap.add_argument("--runs", default=None, help="run directories (default $COALORA_HOME/baseline-lr)")
    args = ap.parse_args()

    cc = CompareConfig(lr=args.lr)
    runs = Path(args.runs or home() / "baseline-lr")
    rows, windows = [], None
    for b in args.budgets:
        cfg = cc.train_config(args.method, (b,))
        tr = Trainer(cfg, runs / f"{args.method}-{b}-lr{args.lr:g}", log=print, progress=False)
        st = tr.run()
        (own,) = tr.training_configs()
        if windows is None:  # the same held-out windows for every budget
            windows = cc.eval_windows_of(tr.tok)
        tr.coa.eval()
        with torch.no_grad():
            tr.coa.applier.apply(own)
            r = perplexity(tr.coa.model, windows, batch_size=4, progress=False)
        rows.append({"budget": b, "avg_bits": own.avg_bits, "config_hash": own.hash, "ppl": r.ppl, "nll": r.nll,
                     "tokens": r.tokens, "train_seconds": st.seconds})
        print(f"{args.method} lr {args.lr:g} {b} bits ({own.hash}): ppl {r.ppl:.3f}, {st.seconds:.0f} s")
        del tr
    out = Path(args.out) / f"{args.method}-lr{args.lr:g}.json"
    write_json_atomic(out, {"method": args.method, "lr": args.lr, "steps": cc.per_config_steps, "rank": cc.rank,
                            "eval": f"{cc.eval_windows} x {cc.eval_seqlen} tokens, {cc.eval_corpus} eval split",
                            "points": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
