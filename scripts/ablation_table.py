"""The CoA-LoRA ablations (data/results/ablations/*) side by side, on the main comparison's scale.

Each ablation directory holds a ``coalora compare --methods coalora ...`` run: the CoA-LoRA arm
only, with one option changed. Their own ``compare.json`` normalises the hypervolume by their own
best perplexity; this recomputes it with the main comparison's reference point and normaliser,
puts every unseen perplexity next to the main comparison's QLoRA, and adds the seen-vs-unseen gap
at matching bits. Prints a markdown table (used in data/README.md).

    .venv/bin/python scripts/ablation_table.py [--main data/results/archive/compare] [--ablations data/results/archive/ablations]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from coalora.train.compare import EvalPoint, hypervolume_normalised, seen_gap

    root = Path(__file__).resolve().parent.parent / "data" / "results" / "archive"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main", default=str(root / "compare"))
    ap.add_argument("--ablations", default=str(root / "ablations"))
    args = ap.parse_args()

    main_body = json.loads((Path(args.main) / "compare.json").read_text())
    ref = main_body["hv_reference"]
    qlora = {p["budget"]: p["ppl"] for p in main_body["points"] if p["method"] == "qlora"}
    budgets = sorted(qlora)
    runs = [("main: " + _recipe(main_body), main_body)]
    runs += [(d.name + ": " + _recipe(b), b) for d in sorted(Path(args.ablations).iterdir())
             if (d / "compare.json").is_file() for b in [json.loads((d / "compare.json").read_text())]]

    head = ["run", "train s"] + [f"{b:g} bits" for b in budgets] + ["HV", "seen gap", "OOD geo-mean"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    print("| QLoRA (main) | " + f"{main_body['train_seconds'].get('qlora', 0):.0f} | "
          + " | ".join(f"{qlora[b]:.2f}" for b in budgets) + f" | {main_body['hypervolume'].get('qlora', 0):.4f} | | |")
    for name, body in runs:
        pts = [EvalPoint(**p) for p in body["points"] if p["method"] == "coalora"]
        unseen = {p.budget: p.ppl for p in pts if p.kind == "unseen"}
        hv = hypervolume_normalised([(p.avg_bits, p.ppl) for p in pts if p.kind == "unseen"], ref["bits_lo"],
                                    ref["bits_ref"], ref["ppl_ref"], ref["ppl_best"])
        gap = seen_gap(pts)["mean"]
        ood = [p.ppl for p in pts if p.kind == "ood"]
        cells = [f"{unseen[b]:.2f} ({100 * (unseen[b] / qlora[b] - 1):+.1f}%)" if b in unseen else "" for b in budgets]
        gap_cell = f"{100 * gap:+.2f}%" if gap is not None else ""
        ood_cell = f"{math.exp(sum(map(math.log, ood)) / len(ood)):.1f}" if ood else ""
        print(f"| {name} | {body['train_seconds']['coalora']:.0f} | " + " | ".join(cells)
              + f" | {hv:.4f} | {gap_cell} | {ood_cell} |")
    return 0


def _recipe(body: dict) -> str:
    c = body["config"]
    frozen = ", frozen set" if c.get("search_every") == 0 else ""
    lr = c.get("lr", 1e-4)
    return f"lr {lr:g}, {c.get('coalora_init', 'lq')} init, theta x{c.get('coalora_theta_lr_scale', 1.0):g}{frozen}"


if __name__ == "__main__":
    sys.exit(main())
