"""Does a trained CoA-LoRA adapter use the configuration? Swap U between configurations and see.

For each pair (base configuration C, U configuration C'), the base is quantized under C and every
layer's LoRA is adjusted by theta's U for C' instead of C. If theta has learned what each
configuration needs, the own U (C' = C) scores best; if U is the same for every configuration
(a plain shared LoRA, or a configuration-blind gain), swapping changes nothing. Uses the
comparison's allocator configurations and held-out windows (8 x 256 tokens).

    .venv/bin/python scripts/config_awareness.py --run $COALORA_HOME/compare/runs/coalora \\
        [--budgets 2.5 3.0 4.0 6.0] [--out data/results/config_awareness.json]
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

    from coalora import data
    from coalora.checkpoint import load_checkpoint
    from coalora.evaluation.perplexity import perplexity
    from coalora.files import write_json_atomic
    from coalora.quant.config import ModelQuantConfig
    from coalora.train.compare import allocator_configs
    from coalora.train.trainer import CHECKPOINT, TrainConfig, Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a CoA-LoRA training run directory (checkpoint.safetensors)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3.0, 4.0, 6.0])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--out")
    args = ap.parse_args()

    _, meta = load_checkpoint(Path(args.run) / CHECKPOINT)
    cfg = TrainConfig.from_dict(meta["train_config"])
    tr = Trainer(cfg, args.run, progress=False)
    if not tr.resume():
        raise SystemExit(f"error: no checkpoint in {args.run}")
    tr.coa.applier.restore()
    configs = allocator_configs(tr, args.budgets)
    windows = data.windows(data.tokenize(tr.tok, data.load_corpus("shakespeare", "eval")), args.seqlen, args.windows)
    coa = tr.coa
    coa.eval()

    def ppl(base: ModelQuantConfig, ucfg: ModelQuantConfig) -> float:
        with torch.no_grad():
            coa.applier.apply(base)
            coa.set_u(coa.u_matrices(ucfg))
            return perplexity(coa.model, windows, batch_size=4, progress=False).ppl

    grid = {f"{b:g}": {f"{u:g}": ppl(configs[b], configs[u]) for u in args.budgets} for b in args.budgets}
    print("| base config, U of -> | " + " | ".join(f"{u:g} bits" for u in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    for b, row in grid.items():
        print(f"| {b} bits | " + " | ".join(f"**{v:.2f}**" if u == b else f"{v:.2f}" for u, v in row.items()) + " |")
    if args.out:
        write_json_atomic(Path(args.out), {"run": str(args.run), "train_config": cfg.to_dict(), "grid": grid,
                                            "windows": args.windows, "seqlen": args.seqlen,
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
