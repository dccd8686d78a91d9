"""How each cost grows with model size, on config-built Llama models of three sizes (no download).

Per size (hidden 256 / 512 / 1024, 4 blocks, MLP 2.75x): applying a configuration (quantizing every
target matrix, uniform nf4-dq), switching to a configuration that differs in 10% of the matrices,
generating the adapter (rank 8) and one forward of batch 1 x 256 tokens, dense and quantized with
the adapter. Each figure is also given per million target parameters: flat means linear growth.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _timing import best_of  # noqa: E402

SIZES = (256, 512, 1024)


def one_size(hidden: int) -> dict:
    import torch

    from coalora.adapter.model import AdapterConfig, CoALoRAModel
    from coalora.models import find_targets, tiny_llama
    from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig, resolve_preset

    model = tiny_llama(seed=0, num_layers=4, hidden=hidden, intermediate=int(hidden * 2.75))
    targets = find_targets(model)
    mparams = sum(t.numel for t in targets) / 1e6
    ids = torch.randint(0, 256, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        dense_s = best_of(lambda: model(input_ids=ids))
    coa = CoALoRAModel(model, "tiny-llama", targets, AdapterConfig(rank=8), cache_bytes=0, initialize=False)
    nf4 = ModelQuantConfig.uniform("tiny-llama", targets, resolve_preset("nf4-dq"))
    rng = random.Random(0)
    ids2 = list(nf4.ids)
    for i in rng.sample(range(len(ids2)), max(1, len(ids2) // 10)):
        ids2[i] = rng.randrange(len(ALL_CONFIGS))
    other = ModelQuantConfig.from_ids("tiny-llama", targets, ids2)

    def apply_full() -> None:
        coa.applier.restore()
        coa.applier.apply(nf4)

    def switch() -> None:
        coa.applier.apply(nf4)  # untimed part of the pair is included: halve below
        coa.applier.apply(other)

    with torch.no_grad():
        apply_s = best_of(apply_full)
        switch_s = best_of(switch) / 2
        gen_s = best_of(lambda: coa.lora_for(nf4))
        coa.set_config(nf4)
    with torch.inference_mode():
        quant_s = best_of(lambda: model(input_ids=ids))
    return {
        "hidden": hidden, "target_mparams": mparams, "matrices": len(targets),
        "apply_s": apply_s, "switch_10pct_s": switch_s, "generate_ms": gen_s * 1000,
        "dense_forward_ms": dense_s * 1000, "quantized_adapter_forward_ms": quant_s * 1000,
        "apply_s_per_mparam": apply_s / mparams, "eval_ratio": dense_s / quant_s,
    }


def main() -> dict:
    import torch

    rows = [one_size(h) for h in SIZES]
    first, last = rows[0], rows[-1]
    growth = last["target_mparams"] / first["target_mparams"]
    return {
        "threads": torch.get_num_threads(),
        "sizes": rows,
        "params_growth": growth,
        "apply_growth": last["apply_s"] / first["apply_s"],
        "forward_growth": last["dense_forward_ms"] / first["dense_forward_ms"],
    }


if __name__ == "__main__":
    print(json.dumps(main()))
