"""How close is CoA-LoRA's ``lq`` base to the model before any training, and what does it cost?

The ``lq`` base computes LQ-LoRA's split ``Q_c(W - L1 L2) + L1 L2`` whenever a configuration is
applied (:class:`coalora.adapter.apply.BaseSpec`, the best of at most ``lq_iters`` alternations with
randomized SVDs). This scores the protocol's evaluation configurations at 2.5, 3 and 6 bits with no
adapter on strided-v1's first 4 x 256 windows, plain (``quant``) and with the ``lq`` base at 1, 5 and
10 alternations, with the seconds each whole-model apply took on one thread.

    .venv/bin/python scripts/lq_base.py [--out data/results/lq_base.json]   # ~3 min on one core
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (2.5, 3.0, 6.0)
ITERS = (1, 5, 10)


def main() -> int:
    import torch

    from coalora.adapter.apply import BaseSpec, ConfigApplier
    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.files import write_json_atomic
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ModelQuantConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "data/results/lq_base.json"))
    ap.add_argument("--configs", default=str(ROOT / "data/results/protocol/eval_configs.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m")
    targets = find_targets(model)
    ew = eval_windows(tok, windows=4, seqlen=256)
    rows = []
    for e in json.loads(Path(args.configs).read_text())["configs"]:
        if e["role"] != "budget" or e["budget"] not in BUDGETS:
            continue
        qc = ModelQuantConfig.from_ids("smollm2-135m", targets, e["ids"])
        for base in [BaseSpec()] + [BaseSpec("lq", 8, i) for i in ITERS]:
            applier = ConfigApplier(model, "smollm2-135m", targets, base=base, cache_bytes=0)
            t0 = time.perf_counter()
            applier.apply(qc)
            seconds = time.perf_counter() - t0
            ppl = perplexity(model, ew.windows, progress=False).ppl
            applier.restore()
            rows.append({"budget": e["budget"], "avg_bits": e["avg_bits"], "config_hash": e["hash"], "base": base.kind,
                         "lq_rank": base.lq_rank if base.kind == "lq" else None,
                         "lq_iters": base.lq_iters if base.kind == "lq" else None,
                         "apply_seconds": round(seconds, 2), "ppl": ppl})
            print(f"{e['budget']:g} bits {base.kind} {rows[-1]['lq_iters'] or ''}: ppl {ppl:.1f} "
                  f"(apply {seconds:.1f} s)", flush=True)
    write_json_atomic(Path(args.out), {
        "command": "python scripts/lq_base.py", "eval_spec": ew.spec, "windows": 4, "seqlen": 256, "threads": 1,
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
