"""Dense forward throughput of the default model: tokens/s for batch 4 x 256 tokens (fp32, CPU).

This is the reference the other figures are divided by (adapter generation, quantized eval).
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> dict:
    import torch

    from coalora.models import load_model

    batch, seqlen, repeats = 4, 256, 3
    model, _ = load_model("smollm2-135m")
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(input_ids=ids)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "model": "smollm2-135m",
        "batch": batch,
        "seqlen": seqlen,
        "threads": torch.get_num_threads(),
        "best_seconds": best,
        "median_seconds": sorted(times)[len(times) // 2],
        "tokens_per_s": batch * seqlen / best,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
