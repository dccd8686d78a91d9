"""The packed runtime on SmolLM2-135M: resident memory at 3 bits, eval tokens/s, ppl fp32 vs bf16.

* **Memory.** A child process imports everything, loads the tokenizer, runs a first forward of a
  tiny Llama (kernels, thread pools), records its RSS, loads SmolLM2 (fp32), packs
  every target under uniform ``nf3-dq`` (3.13 bits) with :func:`coalora.quant.packed.pack_model`, runs
  one forward of 1 x 256 tokens, frees the temporaries (``gc`` + glibc ``malloc_trim``) and records
  its RSS again. ``memory_ratio`` = (RSS growth) / (packed target bytes + bytes of the parameters
  that stay in full precision); target <= 1.3. ``tensor_ratio`` is the same with the bytes the
  model's tensors hold instead of the RSS growth (what the allocator could not give back is the gap).
* **Throughput.** Forward tokens/s (batch 4 x 256, no grad, best of 3 interleaved rounds) of the
  packed model vs the fake-quantized one (``ConfigApplier``, dequantized fp32 weights), same
  configuration; reported, aim >= 0.5 on CPU.
* **Agreement and dtype.** Perplexity of the same configuration over 4 x 256 strided-v1 windows:
  packed fp32 vs fake-quantized fp32 (must agree within 0.5 %), and packed bf16 (its effect).

Prints one JSON object.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL, PRESET = "smollm2-135m", "nf3-dq"


def rss_mib() -> float:
    """Current resident set size of this process, MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def release() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS shows what is held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_child() -> dict:
    import torch
    import transformers

    from coalora import assets
    from coalora.models import find_targets, load_model, tiny_llama
    from coalora.quant.config import ModelQuantConfig, resolve_preset
    from coalora.quant.packed import pack_model, packed_target_bytes, resident_bytes

    torch.set_num_threads(2)
    # The baseline holds what any model needs and this one does not own: the tokenizer and the
    # kernels, thread pools and modeling code a first Llama forward brings in.
    tok = transformers.AutoTokenizer.from_pretrained(str(assets.model_dir(MODEL)))
    with torch.inference_mode():
        tiny_llama()(input_ids=torch.zeros(1, 256, dtype=torch.long))
    release()
    base = rss_mib()
    model, _ = load_model(MODEL)
    loaded = rss_mib()
    targets = find_targets(model)
    cfg = ModelQuantConfig.uniform(MODEL, targets, resolve_preset(PRESET))
    pack_model(model, cfg)
    release()
    packed_rss = rss_mib() - base
    del tok
    ids = torch.randint(0, model.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(input_ids=ids)
    release()
    held = rss_mib() - base
    rb = resident_bytes(model)
    target = packed_target_bytes(cfg) + rb.full_precision
    return {"baseline_rss_mib": base, "loaded_fp32_rss_mib": loaded - base, "configured_rss_mib": held, "packed_before_forward_rss_mib": packed_rss,
            "packed_target_bytes": packed_target_bytes(cfg), "full_precision_bytes": rb.full_precision,
            "tensor_bytes": rb.total, "memory_ratio": held * 2**20 / target, "tensor_ratio": rb.total / target,
            "avg_bits": cfg.avg_bits}


def throughput() -> dict:
    import torch

    from coalora.adapter.apply import ConfigApplier
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ModelQuantConfig, resolve_preset
    from coalora.quant.packed import pack_model

    fake_model, _ = load_model(MODEL)
    packed_model, _ = load_model(MODEL)
    targets = find_targets(fake_model)
    cfg = ModelQuantConfig.uniform(MODEL, targets, resolve_preset(PRESET))
    ConfigApplier(fake_model, MODEL, targets, cache_bytes=4 << 30).apply(cfg)
    pack_model(packed_model, cfg)
    ids = torch.randint(0, fake_model.config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"fake": [], "packed": []}
    with torch.inference_mode():
        for _ in range(4):  # interleaved, so drifts of the machine hit both; round 0 is a warm-up
            for name, m in (("fake", fake_model), ("packed", packed_model)):
                t0 = time.perf_counter()
                m(input_ids=ids)
                times[name].append(time.perf_counter() - t0)
    fake_s, packed_s = min(times["fake"][1:]), min(times["packed"][1:])
    return {"fake_tokens_per_s": ids.numel() / fake_s, "packed_tokens_per_s": ids.numel() / packed_s,
            "tokens_per_s_ratio": fake_s / packed_s, "batch": list(ids.shape)}


def perplexities(windows: int = 4, seqlen: int = 256) -> dict:
    from coalora.adapter.apply import ConfigApplier
    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.models import find_targets, load_model
    from coalora.quant.config import ModelQuantConfig, resolve_preset
    from coalora.quant.packed import pack_model

    out: dict[str, float] = {}
    ew = None
    for name, dtype, runtime in (("packed_fp32", "float32", "packed"), ("fake_fp32", "float32", "fake"),
                                 ("packed_bf16", "bfloat16", "packed"), ("fake_bf16", "bfloat16", "fake")):
        model, tok = load_model(MODEL, dtype=dtype)
        ew = ew or eval_windows(tok, seqlen=seqlen, windows=windows)
        targets = find_targets(model)
        cfg = ModelQuantConfig.uniform(MODEL, targets, resolve_preset(PRESET))
        if runtime == "packed":
            pack_model(model, cfg)
        else:
            ConfigApplier(model, MODEL, targets).apply(cfg)
        r = perplexity(model, ew.windows, progress=False, dataset=ew.dataset)
        out[f"ppl_{name}"] = r.ppl
        out[f"tokens_per_s_{name}"] = r.tokens_per_s
        del model
        release()
    out["packed_vs_fake_rel_diff"] = abs(out["ppl_packed_fp32"] - out["ppl_fake_fp32"]) / out["ppl_fake_fp32"]
    out["bf16_vs_fp32_rel_diff"] = (out["ppl_packed_bf16"] - out["ppl_packed_fp32"]) / out["ppl_packed_fp32"]
    out.update(windows=windows, seqlen=seqlen)
    return out


def main() -> dict:
    import torch

    child = subprocess.run([sys.executable, __file__, "--memory-child"], capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    return {"model": MODEL, "config": f"{PRESET} (uniform)", "threads": torch.get_num_threads(), "device": "cpu",
            **mem, "target_memory_ratio": 1.3, **throughput(), "aim_tokens_per_s_ratio": 0.5, **perplexities()}


if __name__ == "__main__":
    if sys.argv[1:] == ["--memory-child"]:
        print(json.dumps(memory_child()))
    else:
        print(json.dumps(main()))
