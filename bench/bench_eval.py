"""Evaluation throughput of the quantized model with its adapter vs the dense model, and the peak
memory of apply + eval.

SmolLM2-135M with the shipped CoA-LoRA adapter under uniform nf4-dq (4.13 bits) vs the same
model unquantized without adapter: forward tokens/s on batch 4 x 256 tokens (no grad), best of 3
interleaved rounds after a warm-up, in one process. Quantization is simulated (dequantized fp32
weights) and the explorer merges each layer's LoRA into its weight for inference (``CoALoRAModel.merge``), so the ratio measures what is left
of the adapter's cost; ``unmerged_ratio`` is the training-time path (LoRA computed per token).
Target: ratio >= 0.95. Memory: peak RSS after loading, and after apply + eval.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> dict:
    import torch

    from coalora.adapter.trained import load_trained
    from coalora.explorer import default_adapter
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ModelQuantConfig, resolve_preset

    batch, seqlen = 4, 256
    model, _ = load_model("smollm2-135m")
    targets = find_targets(model)
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(input_ids=ids)
    loaded_mib = _peak_mib()
    coa = load_trained(default_adapter("smollm2-135m"), model, "smollm2-135m", targets)
    coa.eval()
    coa.merge()  # what the explorer does: LoRA merged into each weight for inference
    cfg = ModelQuantConfig.uniform("smollm2-135m", targets, resolve_preset("nf4-dq"))
    t0 = time.perf_counter()
    with torch.no_grad():
        coa.set_config(cfg)
    apply_s = time.perf_counter() - t0

    def dense() -> None:  # original weights, no adapter
        coa.applier.restore()
        with coa.disabled():
            model(input_ids=ids)

    def quantized(merge: bool):
        def run() -> None:
            # the flag only: the merged copies stay built
            coa.merge() if merge else coa.unmerge(keep_weights=True)
            coa.applier.apply(cfg)  # cached: a pointer swap per matrix
            model(input_ids=ids)
        return run

    # Interleaved rounds, best of each: drifts of the machine (frequency, other load) hit all three.
    times: dict[str, list[float]] = {"dense": [], "merged": [], "unmerged": []}
    with torch.inference_mode():
        for _ in range(4):
            for name, fn in (("dense", dense), ("merged", quantized(True)), ("unmerged", quantized(False))):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    dense_s, quant_s, unmerged_s = (min(times[k][1:]) for k in ("dense", "merged", "unmerged"))  # [0]: warm-up
    tokens = batch * seqlen
    return {
        "model": "smollm2-135m",
        "config": "nf4-dq (uniform)",
        "avg_bits": cfg.avg_bits,
        "batch": batch,
        "seqlen": seqlen,
        "threads": torch.get_num_threads(),
        "dense_tokens_per_s": tokens / dense_s,
        "quantized_adapter_tokens_per_s": tokens / quant_s,
        "ratio": dense_s / quant_s,
        "unmerged_ratio": dense_s / unmerged_s,
        "target_ratio": 0.95,
        "apply_s": apply_s,
        "peak_rss_loaded_mib": loaded_mib,
        "peak_rss_apply_eval_mib": _peak_mib(),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
