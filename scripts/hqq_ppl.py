"""The bundle's HQQ map applied by HQQ itself, on the CPU: does the map load, and what does it measure?

Quantizes SmolLM2-135M with the per-tag HQQ config that a bundle writes (``hqq_quant_config.json``,
:func:`coalora.export.bundle.hqq_tag_map`) for a uniform preset, through HQQ's own
``AutoHQQHFModel.quantize_model`` (float32 compute, CPU), then measures perplexity on the same
strided-v1 windows coalora uses (4 x 128 by default). HQQ is not a coalora dependency; install it
for this check: ``pip install hqq==0.2.8.post1 termcolor==3.2.0``.

    .venv/bin/python scripts/hqq_ppl.py --preset nf4-dq
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nf4-dq")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    args = ap.parse_args()

    import torch
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.export.bundle import hqq_tag_map
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ModelQuantConfig, resolve_preset

    model, tok = load_model("smollm2-135m")
    cfg = ModelQuantConfig.uniform("smollm2-135m", find_targets(model), resolve_preset(args.preset))
    tags, why = hqq_tag_map(cfg)
    if tags is None:
        raise SystemExit(why)
    ew = eval_windows(tok, seqlen=args.seqlen, windows=args.windows)
    t0 = time.perf_counter()
    AutoHQQHFModel.quantize_model(model, quant_config={t: BaseQuantizeConfig(**v) for t, v in tags.items()},
                                  compute_dtype=torch.float32, device="cpu")
    seconds = time.perf_counter() - t0
    r = perplexity(model, ew.windows, batch_size=4, progress=False)
    print(json.dumps({"preset": args.preset, "hqq_map": tags, "quantize_seconds": seconds, "ppl": r.ppl,
                      "windows": args.windows, "seqlen": args.seqlen, "eval_spec": ew.spec}))


if __name__ == "__main__":
    main()
