"""The ``coalora`` command line as a table: one row per subcommand (name, options, function, help).

User mistakes (:class:`~coalora.errors.CoaloraError`) print one line ``error: ...`` to stderr and exit
with status 2; ``--json`` output goes to stdout alone, so it can be piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from coalora import __version__
from coalora.cli import evaluate, explore, quantize, serve, training
from coalora.cli.common import check_not_empty
from coalora.errors import CoaloraError


@dataclass(frozen=True)
class Command:
    name: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("prepare", quantize.args_prepare, quantize.run_prepare,
            "Fetch and cache the offline default model (SmolLM2-135M) and corpus (Shakespeare)."),
    Command("models", quantize.args_models, quantize.run_models, "List the registered models."),
    Command("eval", evaluate.args_eval, evaluate.run_eval,
            "Token perplexity over non-overlapping windows of the held-out text (GPTQ/LQ-LoRA convention) and, "
            "with --config or --preset, the KL divergence to the unquantized model."),
    Command("allocate", quantize.args_allocate, quantize.run_allocate,
            "Choose one quantization config per matrix that minimises total quantization error within an "
            "average-bits budget (LQ-LoRA's knapsack; exact MILP with HiGHS or a fast Lagrangian)."),
    Command("train", training.args_train, training.run_train,
            "Train CoA-LoRA (or a baseline) with checkpoints; rerunning the same command resumes. "
            "Data-parallel: accelerate launch --num_processes P -m coalora train ..."),
    Command("generate", training.args_generate, training.run_generate,
            "Generate the LoRA adapter of one quantization configuration from a trained CoA-LoRA adapter "
            "(no fine-tuning) and save it in PEFT's format."),
    Command("export-trained", training.args_export_trained, training.run_export_trained,
            "Write the adapter of a training run (theta + shared LoRA, bf16) as one small file."),
    Command("compare", training.args_compare, training.run_compare,
            "The equal-compute, multi-seed comparison of CoA-LoRA, its theta-off ablation, Shared-LoRA, QLoRA, "
            "LQ-LoRA and no adapter (learning-rate grid on a validation split, then every method at the same "
            "token-passes, perplexity and KL with 95%% intervals). Runs in resumable units: rerun to continue."),
    Command("front", explore.args_front, explore.run_front,
            "The GP-predicted Pareto front (avg bits vs perplexity or KL) from stored evaluations of the default "
            "eval spec; with --budget, the best predicted configuration within it; with --validate, the GP's "
            "held-out accuracy."),
    Command("search", explore.args_search, explore.run_search,
            "Grow the stored front: evaluate the configurations with the highest expected hypervolume "
            "improvement, store them, refit, repeat."),
    Command("export", explore.args_export, explore.run_export,
            "Export a configuration as a bundle: PEFT adapter, packed quantized weights, coalora_config.json, "
            "GPTQModel/HQQ maps, README."),
    Command("load", evaluate.args_load, evaluate.run_load,
            "Rebuild a bundle's quantized model and adapter (checking every file's hash); --eval re-measures "
            "the recorded perplexity."),
    Command("results", explore.args_results, explore.run_results,
            "The results store ($COALORA_HOME/results.duckdb): row counts, or export/import a table as Parquet "
            "or CSV."),
    Command("bench", serve.args_bench, serve.run_bench,
            "Run the benchmarks under bench/ (all, or the named ones) and write bench/results/latest.json."),
    Command("serve", serve.args_serve, serve.run_serve, "Serve the Gradio app (default http://127.0.0.1:7860)."),
)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one line ``error: ...`` and status 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand in :data:`COMMANDS`; ``args.command`` names the one given."""
    p = _Parser(prog="coalora", description="CoA-LoRA for mixed-precision quantized LLMs: quantize, allocate bits, "
                "train, search, evaluate, export.")
    p.add_argument("--version", action="version", version=f"coalora {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS:
        c.add_args(sub.add_parser(c.name, help=c.help, description=c.help))
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    run = {c.name: c.run for c in COMMANDS}[args.command]
    try:
        check_not_empty(args)
        return run(args)
    except CoaloraError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
