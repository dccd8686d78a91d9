"""A 1B-class model end to end on the CPU: error table, allocation, 20 CoA-LoRA steps, a front, export, load.

The model is built from TinyLlama-1.1B's shape (hidden 2048, 22 blocks, intermediate 5632, 32 heads /
4 KV heads) with random weights in bf16 and SmolLM2's tokenizer (so its vocabulary, 49,152), saved
as a local checkpoint: 1.17 B parameters, 2.3 GB in bf16. Each stage runs in its own process, so
its wall time and peak RSS (``ru_maxrss``) are its own:

1. ``build``: the random model, saved (``save_pretrained``) with the tokenizer;
2. ``error_table``: the [154, 432] error table over every configuration (sampled mode, unweighted);
3. ``allocate``: fast allocations at 4 budgets;
4. ``train``: 20 CoA-LoRA steps (:class:`coalora.train.trainer.Trainer`, bf16 originals, seqlen 64, batch 2,
   K = 2, no search), the training set being the 4 allocations;
5. ``front``: the trained adapter on the 4 allocations, perplexity over 2 x 64 tokens each, the
   non-dominated (avg bits, ppl) set;
6. ``export_load``: a bundle of one allocation with its generated LoRA, loaded back through the
   packed runtime in bf16 and re-evaluated.

``train_peak_over_bf16_weights`` (stage 4 peak RSS / bf16 bytes of all weights) has target <= 3.
``--shape small`` runs the same stages on a 4-block hidden-256 model in a minute (for development).
A stage that exceeds ``--stage-limit`` seconds (default 1200, or ``$COALORA_BENCH_STAGE_LIMIT``) is
stopped and reported as such. ``--keep DIR`` (or ``$COALORA_BENCH_SCALE_KEEP``) keeps the model and
each finished stage's row in DIR, so a rerun resumes at the first unfinished stage.
Prints one JSON object (``python bench/bench_scale.py [--shape small]``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHAPES = {
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
           "num_key_value_heads": 4},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 704, "num_attention_heads": 8,
              "num_key_value_heads": 2},
}
STAGES = ("build", "error_table", "allocate", "train", "front", "export_load")
OUTPUTS = {"build": ("model",), "allocate": ("configs.json",), "train": ("run",), "front": ("front.json", "adapter.safetensors"),
           "export_load": ("bundle",)}
"""What each stage writes in the run directory, removed before the stage (re)runs so a resumed run
never reads a half-finished or older stage's output (the error table lives in coalora's cache)."""
BUDGETS = (2.5, 3.0, 4.0, 5.0)
SEQLEN, WINDOWS = 64, 2


def _stage_build(d: Path, shape: str) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from coalora import assets

    tok = AutoTokenizer.from_pretrained(str(assets.model_dir("smollm2-135m")))
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=False, **SHAPES[shape])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(d / "model"))
    tok.save_pretrained(str(d / "model"))
    n = sum(p.numel() for p in model.parameters())
    return {"parameters": n, "bf16_weight_bytes": 2 * n}


def _load(d: Path):
    from coalora.models import find_targets, load_model

    model, tok = load_model(str(d / "model"), dtype="bfloat16")
    return model, tok, find_targets(model)


def _stage_error_table(d: Path) -> dict:
    from coalora.lqlora.sensitivity import cached_error_table

    model, _, targets = _load(d)
    table = cached_error_table(model, str(d / "model"), targets, "none", progress=False)
    return {"matrices": len(targets), "configs": int(table.shape[1]), "sampled": True}


def _stage_allocate(d: Path) -> dict:
    from coalora.lqlora.allocate import allocate_many
    from coalora.lqlora.sensitivity import cached_error_table
    from coalora.quant.config import CONFIG_BITS, ModelQuantConfig

    model, _, targets = _load(d)
    table = cached_error_table(model, str(d / "model"), targets, "none", progress=False)  # cached by stage 2
    allocs = allocate_many(table.numpy(), [t.numel for t in targets], list(CONFIG_BITS), list(BUDGETS),
                           method="fast")
    configs = [ModelQuantConfig.from_ids(str(d / "model"), targets, list(a.choice)) for a in allocs]
    (d / "configs.json").write_text(json.dumps([c.to_json() for c in configs]))
    return {"budgets": list(BUDGETS), "avg_bits": [c.avg_bits for c in configs]}


def _stage_train(d: Path) -> dict:
    from coalora.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(model=str(d / "model"), steps=20, seqlen=SEQLEN, batch_size=2, budgets=BUDGETS,
                      search_every=0, weighting="none", probe_windows=2, checkpoint_every=20, cache_gib=0.5)
    state = Trainer(cfg, d / "run", progress=False, dtype="bfloat16").run()
    return {"steps": state.step, "tokens": state.tokens, "train_set": len(state.train_set), "cache_gib": cfg.cache_gib}


def _configs(d: Path, targets) -> list:
    from coalora.quant.config import ModelQuantConfig

    return [ModelQuantConfig.from_json(j, targets, model=str(d / "model")) for j in json.loads((d / "configs.json").read_text())]


def _adapter(d: Path, model, targets):
    from coalora.adapter.trained import export_checkpoint, load_trained
    from coalora.train.trainer import CHECKPOINT

    path = export_checkpoint(d / "run" / CHECKPOINT, d / "adapter.safetensors")
    coa = load_trained(path, model, str(d / "model"), targets, cache_bytes=0)
    coa.eval()
    return coa


def _stage_front(d: Path) -> dict:
    import torch

    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.search.pareto import pareto_mask

    model, tok, targets = _load(d)
    coa = _adapter(d, model, targets)
    ew = eval_windows(tok, seqlen=SEQLEN, windows=WINDOWS)
    points = []
    for c in _configs(d, targets):
        with torch.no_grad():
            coa.set_config(c)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the fp32 adapter meets bf16 activations
            points.append((c.avg_bits, perplexity(model, ew.windows, progress=False, batch_size=1).ppl))
    mask = pareto_mask(points)
    (d / "front.json").write_text(json.dumps(points))
    return {"evaluations": len(points), "points": points, "front": [p for p, m in zip(points, mask) if m]}


def _stage_export_load(d: Path) -> dict:
    import torch

    from coalora.evaluation.perplexity import eval_windows, perplexity
    from coalora.export.bundle import export_bundle, load_bundle
    from coalora.lqlora.sensitivity import weights_fingerprint
    from coalora.models import target_modules_of

    model, tok, targets = _load(d)
    coa = _adapter(d, model, targets)
    config = _configs(d, targets)[1]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lora = coa.lora_for(config)
    a = coa.adapter_config
    originals = {n: lin.weight.detach() for n, lin in target_modules_of(model, targets).items()}
    fp = weights_fingerprint(model, targets)
    t0 = time.perf_counter()
    out = export_bundle(str(d / "model"), config, originals, d / "bundle", weights_hash=fp, lora=lora,
                        adapter={"id": "bench", "method": "coalora", "rank": a.rank, "alpha": a.alpha})
    export_s = time.perf_counter() - t0
    del coa, model, originals, lora
    t0 = time.perf_counter()
    b = load_bundle(out, dtype="bfloat16")
    load_s = time.perf_counter() - t0
    ew = eval_windows(tok, seqlen=SEQLEN, windows=WINDOWS)
    ppl = perplexity(b.model, ew.windows, progress=False, batch_size=1).ppl
    front = json.loads((d / "front.json").read_text())
    return {"export_s": export_s, "load_s": load_s, "bundle_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
            "avg_bits": config.avg_bits, "ppl_packed_bundle": ppl, "ppl_front_fake": front[1][1],
            "rel_diff": abs(ppl - front[1][1]) / front[1][1]}


def _child(stage: str, d: Path, shape: str) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    fn = globals()[f"_stage_{stage}"]
    out = fn(d, shape) if stage == "build" else fn(d)
    return {"stage": stage, "seconds": time.perf_counter() - t0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **out}


def main(shape: str = "1b", limit: float = 1200.0, keep: str | None = None) -> dict:
    """Run the stages in order; with ``keep`` (a directory kept between runs) each finished stage's
    row is saved to ``<keep>/stages.json`` and a rerun starts at the first stage without one, so an
    hour-long run survives an interrupted session."""
    d = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="coalora-scale-"))
    d.mkdir(parents=True, exist_ok=True)
    saved = d / "stages.json"
    done = json.loads(saved.read_text()) if keep and saved.is_file() else {}
    if done.get("shape") != shape:
        done = {"shape": shape, "stages": []}
    rows, status = list(done["stages"]), "completed"
    try:
        for stage in STAGES[len(rows):]:
            for name in OUTPUTS.get(stage, ()):
                p = d / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", stage, str(d), shape], capture_output=True,
                                      text=True, timeout=limit)
            except subprocess.TimeoutExpired:
                rows.append({"stage": stage, "seconds": limit, "stopped": f"exceeded the {limit:.0f} s stage limit"})
                status = f"stopped at {stage}"
                break
            if proc.returncode != 0:
                rows.append({"stage": stage, "failed": proc.stderr.strip().splitlines()[-1:]})
                status = f"failed at {stage}"
                break
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if keep:
                saved.write_text(json.dumps({"shape": shape, "stages": rows}))
    finally:
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
    by = {r["stage"]: r for r in rows}
    weights = by.get("build", {}).get("bf16_weight_bytes")
    train_peak = by.get("train", {}).get("peak_rss_mib")
    ratio = train_peak * 2**20 / weights if weights and train_peak else None
    return {"shape": shape, **SHAPES[shape], "status": status, "stages": rows, "bf16_weight_bytes": weights,
            "train_peak_over_bf16_weights": ratio, "target_train_peak_ratio": 3.0,
            "machine_memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--child"]:
        print(json.dumps(_child(args[1], Path(args[2]), args[3])))
    else:
        shape = args[args.index("--shape") + 1] if "--shape" in args else os.environ.get("COALORA_BENCH_SCALE", "1b")
        limit = float(args[args.index("--stage-limit") + 1] if "--stage-limit" in args
                      else os.environ.get("COALORA_BENCH_STAGE_LIMIT", 1200))
        keep = args[args.index("--keep") + 1] if "--keep" in args else os.environ.get("COALORA_BENCH_SCALE_KEEP")
        print(json.dumps(main(shape, limit, keep)))
