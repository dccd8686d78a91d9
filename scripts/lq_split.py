"""Where does LQ-LoRA's low-bit lead come from? Score low-rank-plus-quantized splits before training.

LQ-LoRA quantizes ``W - L1 L2`` instead of ``W`` and starts its LoRA at ``(L2, L1)``, so at step 0
the model is ``Q_C(W - L1 L2) + L1 L2`` (method.md section 2.1). A shared CoA-LoRA adapter could
only use a split that is the same for every configuration. This scores, with no training, the
comparison's allocator configurations (8 x 256 held-out tokens) under:

* ``none``: ``Q_C(W)`` (plain quantization, QLoRA's and CoA-LoRA's base);
* ``svd``: one split for all configurations, ``L = SVD_r(W)`` (LQ-LoRA's first iteration, and the
  official CoA-LoRA code's ``lpq`` initialisation);
* ``ref:<preset>``: one split for all, LQ-LoRA's decomposition at a reference configuration;
* ``per``: LQ-LoRA's own decomposition at each configuration (what the LQ-LoRA baseline starts from).

    .venv/bin/python scripts/lq_split.py [--modes none svd ref:nf3-dq per] [--out data/results/lq_split.json]
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

    from coalora.evaluation.perplexity import perplexity
    from coalora.files import write_json_atomic
    from coalora.lqlora.split import lq_decompose, svd_split
    from coalora.quant.config import resolve_preset
    from coalora.train.compare import CompareConfig, allocator_configs
    from coalora.train.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["none", "svd", "ref:nf3-dq", "per"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3.0, 4.0, 6.0])
    ap.add_argument("--out")
    args = ap.parse_args()

    cc = CompareConfig()
    cfg = cc.train_config("qlora", (args.budgets[0],))
    with __import__("tempfile").TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp, progress=False)
        tr.setup()  # the model, its targets and the adapter wrappers; nothing is trained
    configs = allocator_configs(tr, args.budgets)
    windows = cc.eval_windows_of(tr.tok)
    coa, r = tr.coa, cfg.rank
    coa.eval()
    originals = {t.name: coa.applier.originals[t.name].clone() for t in tr.targets}
    coa.set_u(torch.eye(r).expand(len(tr.targets), r, r))

    @torch.no_grad()
    def score(split: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, qc) -> float:
        """ppl of Q_C(W - L1 L2) + L1 L2 (``split`` None: Q_C(W), no low-rank part)."""
        for t in tr.targets:
            w, layer = originals[t.name], coa.layers[t.name]
            if split is None:
                coa.applier.set_original(t.name, w)
                layer.load_lora_(torch.zeros_like(layer.lora_A), torch.zeros_like(layer.lora_B))
            else:
                l1, l2 = split[t.name]
                coa.applier.set_original(t.name, (w.float() - l1 @ l2).to(w.dtype))
                layer.load_split_(l1, l2)  # s B A = L1 L2
        coa.applier.apply(qc)
        return perplexity(coa.model, windows, batch_size=4, progress=False).ppl

    def lq(configs_by_name) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """LQ-LoRA's split of every target under its configuration ``{name: QuantConfig}``."""
        out = {}
        for t in tr.targets:
            d = lq_decompose(originals[t.name], configs_by_name[t.name], r)
            out[t.name] = (d.l1, d.l2)
        return out

    results: dict[str, dict[str, float]] = {}
    for mode in args.modes:
        t0 = time.perf_counter()
        if mode == "none":
            row = {b: score(None, configs[b]) for b in args.budgets}
        elif mode == "svd":
            split = {t.name: svd_split(originals[t.name].float(), r) for t in tr.targets}
            row = {b: score(split, configs[b]) for b in args.budgets}
        elif mode.startswith("ref:"):
            ref = resolve_preset(mode.removeprefix("ref:"))
            split = lq({t.name: ref for t in tr.targets})
            row = {b: score(split, configs[b]) for b in args.budgets}
        elif mode == "per":
            row = {}
            for b in args.budgets:
                row[b] = score(lq(dict(zip((t.name for t in tr.targets), configs[b].configs))), configs[b])
        else:
            raise SystemExit(f"error: unknown mode {mode!r}; use none, svd, ref:<preset> or per")
        results[mode] = {f"{b:g}": v for b, v in row.items()}
        print(f"{mode:12s} " + "  ".join(f"{b:g} bits: {v:,.2f}" for b, v in row.items())
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        write_json_atomic(Path(args.out), {"rank": r, "windows": cc.eval_windows, "seqlen": cc.eval_seqlen,
                                            "ppl": results, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
