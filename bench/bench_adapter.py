"""Adapter generation for all 210 layers of SmolLM2-135M vs one dense 256-token forward.

``CoALoRAModel.lora_for(config)``: one batched theta call and 210 folds A' = U A, at the default
rank (``TrainConfig().rank``). Reference, in the same run: one forward of the plain model on a
256-token sequence (no grad). Both best of 7 after a warm-up. Target: generation under 20 ms.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _timing import best_of  # noqa: E402


def main() -> dict:
    import torch

    from coalora.adapter.model import CoALoRAModel
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig
    from coalora.train.trainer import TrainConfig

    model, _ = load_model("smollm2-135m")
    ids = torch.randint(0, 49152, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        forward_s = best_of(lambda: model(input_ids=ids), repeats=7)
    targets = find_targets(model)
    cfg = TrainConfig()
    coa = CoALoRAModel(model, "smollm2-135m", targets, cfg.adapter)
    rng = random.Random(0)
    qc = ModelQuantConfig.from_ids("smollm2-135m", targets, [rng.randrange(len(ALL_CONFIGS)) for _ in targets])
    gen_s = best_of(lambda: coa.lora_for(qc), repeats=7)
    return {
        "model": "smollm2-135m",
        "layers": len(targets),
        "rank": cfg.rank,
        "threads": torch.get_num_threads(),
        "generate_ms": gen_s * 1000,
        "generate_target_ms": 20.0,
        "dense_forward_256_ms": forward_s * 1000,
        "generate_ratio_vs_forward": gen_s / forward_s,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
