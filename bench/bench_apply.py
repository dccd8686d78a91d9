"""Configuration switching on the default model: changing 10% of the matrices vs a full application.

Reference: a full application of ``nf4-dq`` to all 210 matrices with an empty cache. Figure: the
time to switch to a configuration that differs in 21 matrices (10%), cache cold for those
matrices, as a ratio to the full application (target at most 0.15). Also: a switch back (all
cache hits). Best of 3 rounds, each with an empty cache, after a warm-up round. Prints one JSON
object.
"""

from __future__ import annotations

import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> dict:
    from coalora.adapter.apply import ConfigApplier
    from coalora.models import load_model
    from coalora.quant.config import ALL_CONFIGS, PRESETS

    model, _ = load_model("smollm2-135m")
    applier = ConfigApplier(model, "smollm2-135m")
    base = applier.uniform(PRESETS["nf4-dq"])
    rng = random.Random(0)
    names = [t.name for t in applier.targets]
    changed = rng.sample(names, k=len(names) // 10)
    other = base.with_changes({n: ALL_CONFIGS[rng.randrange(432)] for n in changed})
    # Rounds with a fresh applier (empty cache) each; round 0 is a warm-up; best of the rest.
    fulls, switches, backs = [], [], []
    for _ in range(4):
        applier.restore()
        applier = ConfigApplier(model, "smollm2-135m")
        t0 = time.perf_counter()
        full = applier.apply(base)
        fulls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        switch = applier.apply(other)
        switches.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = applier.apply(base)
        backs.append(time.perf_counter() - t0)
    full_s, switch_s, back_s = min(fulls[1:]), min(switches[1:]), min(backs[1:])
    return {
        "model": "smollm2-135m",
        "matrices": len(names),
        "full_apply_seconds": full_s,
        "switch_10pct_seconds": switch_s,
        "switch_10pct_changed": switch.changed,
        "switch_ratio": switch_s / full_s,
        "switch_ratio_target": 0.15,
        "switch_back_cached_seconds": back_s,
        "switch_back_quantized": back.quantized,
        "full_applied": full.changed,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
