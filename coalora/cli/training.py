"""``coalora train``, ``generate``, ``export-trained`` and ``compare``: training theta and the shared LoRA
(method.md section 4), making one configuration's adapter from them (section 3), and the equal-compute
comparison with the baselines (section 6). ``train`` and ``compare`` take one option per field of
``TrainConfig`` / ``ProtocolConfig``, its help the field's docstring."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import fields
from pathlib import Path

from coalora.cli.common import emit, load_quant_config, log, output_args
from coalora.cli.options import add_options, values
from coalora.errors import CoaloraError


def args_train(sp: argparse.ArgumentParser) -> None:
    from coalora.train.trainer import TrainConfig

    sp.add_argument("--out", required=True, help="run directory (checkpoint.safetensors, log.jsonl)")
    add_options(sp, TrainConfig)
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the base model's weights and compute (default float32)")
    output_args(sp)


def run_train(args: argparse.Namespace) -> int:
    from coalora.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(**values(args, tuple(f.name for f in fields(TrainConfig))))
    trainer = Trainer(cfg, args.out, log=log, progress=not args.no_progress, dtype=args.dtype)
    state = trainer.run()
    if not trainer.acc.is_main_process:
        return 0
    out = {"out": args.out, "step": state.step, "train_set": len(state.train_set), "seconds": round(state.seconds, 1),
           "search_seconds": round(state.search_seconds, 1), "tokens": state.tokens, "searches": state.searches}
    return emit(args, out, f"trained {cfg.method} to step {state.step} in {state.seconds:.0f} s ({state.searches} search "
                f"rounds, {state.search_seconds:.0f} s); training set {len(state.train_set)} configs; checkpoint in "
                f"{args.out}")


def args_generate(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--adapter", required=True, help="trained adapter file (coalora.adapter/1)")
    sp.add_argument("--model", default="smollm2-135m")
    sp.add_argument("--config", help="configuration file (coalora.quant_config/1 JSON)")
    sp.add_argument("--preset", help="or a uniform preset, e.g. nf3-dq")
    sp.add_argument("--out", required=True, help="output directory (adapter_config.json + adapter_model.safetensors)")
    output_args(sp, progress=False)


def run_generate(args: argparse.Namespace) -> int:
    from coalora.adapter.trained import load_trained
    from coalora.export.peft import save_peft_adapter
    from coalora.models import load_model

    if bool(args.config) == bool(args.preset):
        raise CoaloraError("give exactly one of --config or --preset")
    model, _ = load_model(args.model)
    qcfg = load_quant_config(args, model)
    coa = load_trained(args.adapter, model, args.model, cache_bytes=0)
    if coa.adapter_config.base != "quant":
        raise CoaloraError(f"{args.adapter} was trained on the {coa.adapter_config.base} base (Q_c(W - L1 L2) + L1 L2), "
                           "so its LoRA is only right beside weights quantized from W - L1 L2; a PEFT adapter alone "
                           "would run on a plainly quantized model. Export a bundle instead, which holds the "
                           "matching quantized weights and the adapter with L1 L2 folded in: `coalora export "
                           f"--adapter {args.adapter} {'--config ' + args.config if args.config else '--preset ' + args.preset} "
                           "--out bundle` (or the app's Export)")
    t0 = time.perf_counter()
    lora = coa.lora_for(qcfg)
    gen_ms = (time.perf_counter() - t0) * 1000
    path = save_peft_adapter(lora, args.out, rank=coa.adapter_config.rank, alpha=coa.adapter_config.alpha,
                             base_model=args.model)
    out = {"out": str(path), "config_hash": qcfg.hash, "avg_bits": qcfg.avg_bits, "generate_ms": gen_ms,
           "rank": coa.adapter_config.rank, "modules": len(lora)}
    return emit(args, out, f"generated the LoRA for {qcfg.hash} ({qcfg.avg_bits:.4f} avg bits) in {gen_ms:.1f} ms; "
                f"PEFT adapter in {path}")


def args_export_trained(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--run", required=True, help="training run directory (holds checkpoint.safetensors)")
    sp.add_argument("--out", required=True, help="output .safetensors file")


def run_export_trained(args: argparse.Namespace) -> int:
    from coalora.adapter.trained import export_checkpoint
    from coalora.train.trainer import CHECKPOINT

    path = export_checkpoint(os.path.join(args.run, CHECKPOINT), args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def args_compare(sp: argparse.ArgumentParser) -> None:
    from coalora.train.protocol import ProtocolConfig

    sp.add_argument("--out", required=True,
                    help="output directory (units/, eval_configs.json, points.parquet, runs.parquet, summary.md, front.png)")
    sp.add_argument("--max-units", dest="max_units", type=int, help="stop after this many units (default: all)")
    sp.add_argument("--only", choices=("grid", "theta-grid", "none", "headline", "arm", "scale"),
                    help="run only units of this kind")
    sp.add_argument("--report-only", dest="report_only", action="store_true",
                    help="write the report from the finished units without training")
    sp.add_argument("--arm", help="register a CoA-LoRA ablation arm NAME (runs at coalora's rates, seeds and compute)")
    sp.add_argument("--arm-options", dest="arm_options",
                    help="the arm's training options as JSON, e.g. '{\"base\": \"lq\", \"sampling\": \"excess\"}'")
    sp.add_argument("--arm-why", dest="arm_why", help="one line on what the arm tests (shown in the report)")
    sp.add_argument("--arm-seeds", dest="arm_seeds", type=int, nargs="+", metavar="SEED",
                    help="run the arm at these headline seeds only (default: every seed)")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_options(sp, ProtocolConfig)


def run_compare(args: argparse.Namespace) -> int:
    from coalora.train import protocol, protocol_report

    cfg = protocol.ProtocolConfig(**values(args, tuple(f.name for f in fields(protocol.ProtocolConfig))))
    if args.arm:
        try:
            options = json.loads(args.arm_options or "{}")
        except ValueError:
            raise CoaloraError("--arm-options must be a JSON object, e.g. '{\"base\": \"lq\"}'") from None
        if not isinstance(options, dict):
            raise CoaloraError("--arm-options must be a JSON object of training options")
        protocol.add_arm(args.out, protocol.Arm(args.arm, options, args.arm_why or "",
                                                   tuple(args.arm_seeds or ())))
        log(f"arm {args.arm} registered in {args.out}/arms.json")
    elif args.arm_options or args.arm_why or args.arm_seeds:
        raise CoaloraError("--arm-options, --arm-why and --arm-seeds need --arm NAME")
    if not args.report_only:
        protocol.run(cfg, args.out, max_units=args.max_units, only=args.only, log=log, progress=not args.no_progress)
    if kept := protocol.keep_finished(Path(args.out)):
        log(f"kept the step logs of {kept} finished unit(s) in {args.out}/logs")
    print(protocol_report.write(args.out))
    return 0
