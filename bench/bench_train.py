"""CoA-LoRA training throughput vs plain PEFT LoRA training on the same model and batch.

Both train rank-``TrainConfig().rank`` LoRA on all 210 target matrices of SmolLM2-135M with the
base quantized (CoA-LoRA: two sampled allocator configurations per step, as in training; PEFT: the
uniform nf4-dq configuration, applied once), batch 4 x 128 tokens, AdamW + clipping at 1.0.
Tokens/s counts every token that went through a forward and backward pass (CoA-LoRA passes each
batch once per sampled configuration). Median of 6 steps after 2 warm-up steps, in the same run.
Target: ratio at least 0.8. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _timing import timings  # noqa: E402

BATCH, SEQLEN, WARMUP, STEPS = 4, 128, 2, 6


def _median_step(step_fn) -> float:
    return statistics.median(timings(step_fn, STEPS, WARMUP))


def main() -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from coalora.adapter.apply import ConfigApplier
    from coalora.adapter.model import CoALoRAModel
    from coalora.lqlora.allocate import allocate_many
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ALL_CONFIGS, CONFIG_BITS, PRESETS, ModelQuantConfig
    from coalora.train.trainer import TrainConfig

    cfg = TrainConfig()
    x = torch.randint(0, 49152, (BATCH, SEQLEN), generator=torch.Generator().manual_seed(0))

    # ---- plain PEFT LoRA on the nf4-dq-quantized model
    model, _ = load_model("smollm2-135m")
    targets = find_targets(model)
    ConfigApplier(model, "smollm2-135m", targets).apply(ModelQuantConfig.uniform("smollm2-135m", targets, PRESETS["nf4-dq"]))
    peft_model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                                  target_modules=sorted({t.module_type for t in targets})))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def peft_step():
        peft_model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    peft_s = _median_step(peft_step)

    # ---- CoA-LoRA: K = 2 configurations per step from a pool of allocator solutions
    model, _ = load_model("smollm2-135m")
    targets = find_targets(model)
    rng = np.random.default_rng(0)
    costs = rng.gamma(1.0, 1.0, (len(targets), len(ALL_CONFIGS))) / np.array(CONFIG_BITS) ** 3
    allocs = allocate_many(costs, [t.numel for t in targets], list(CONFIG_BITS), np.linspace(2.25, 7.25, 8).tolist(), method="fast")
    pool = [ModelQuantConfig.from_ids("smollm2-135m", targets, list(a.choice)) for a in allocs]
    coa = CoALoRAModel(model, "smollm2-135m", targets, cfg.adapter)
    params = coa.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Every step draws fresh configurations (so the weight cache is exercised as in training).
    schedule = iter(rng.choice(len(pool), size=(WARMUP + STEPS, cfg.configs_per_step)).tolist())

    def coa_step():
        for j in next(schedule):
            coa(input_ids=x, labels=x, config=pool[j]).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    coa_s = _median_step(coa_step)
    peft_tps = BATCH * SEQLEN / peft_s
    coa_tps = BATCH * SEQLEN * cfg.configs_per_step / coa_s
    return {
        "model": "smollm2-135m",
        "rank": cfg.rank,
        "batch": [BATCH, SEQLEN],
        "threads": torch.get_num_threads(),
        "peft_lora_step_s": peft_s,
        "peft_lora_tokens_per_s": peft_tps,
        "coalora_step_s": coa_s,
        "coalora_configs_per_step": cfg.configs_per_step,
        "coalora_tokens_per_s": coa_tps,
        "tokens_per_s_ratio": coa_tps / peft_tps,
        "ratio_target": 0.8,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
