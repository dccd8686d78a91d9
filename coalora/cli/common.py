"""What the subcommands share: output, the checks on their options, and the options several take.

User mistakes raise :class:`~coalora.errors.CoaloraError`; :func:`coalora.cli.table.main` prints them as one
line. Heavy libraries are imported inside the functions so that ``coalora --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    from coalora.explorer import Explorer
    from coalora.quant.config import ModelQuantConfig


def print_json(obj: object) -> None:
    """``--json`` output: one JSON document on stdout (progress and logs go to stderr)."""
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def emit(args: argparse.Namespace, obj: object, text: str) -> int:
    """A command's result: ``obj`` as JSON with ``--json``, else the one-line summary ``text``; status 0."""
    if getattr(args, "json", False):
        print_json(obj)
    else:
        print(text)
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr)


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Each named integer option, when given, is at least 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CoaloraError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def check_not_empty(args: argparse.Namespace) -> None:
    """An empty string (``--config ""``) is a mistake, never "not given": the commands test options by truth."""
    for name, value in vars(args).items():
        if isinstance(value, str) and not value.strip():
            raise CoaloraError(f"--{name.replace('_', '-')} is empty; give a value or leave the option out")


def check_convention(args: argparse.Namespace, ex: Explorer) -> None:
    """--seqlen / --windows name a perplexity convention the model can evaluate (as Explorer.windows)."""
    from coalora.limits import MAX_WINDOWS  # one limit for the CLI and the app
    from coalora.models import context_length

    n = context_length(ex.model)
    if not 2 <= args.seqlen <= n:
        raise CoaloraError(f"--seqlen must be in [2, {n}] (the model's context length), got {args.seqlen}")
    if args.windows > MAX_WINDOWS:
        raise CoaloraError(f"--windows must be in [1, {MAX_WINDOWS}], got {args.windows}")


def front_metric(value: str) -> str:
    """argparse type of ``--metric``: the metric itself, or a usage error naming the choices."""
    from coalora.search.front import check_metric

    try:
        return check_metric(value)
    except CoaloraError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def dtype_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the model's weights and compute (default float32; bfloat16 halves the memory of "
                         "what stays in full precision)")
    sp.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")


def model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default="smollm2-135m", help="registry name (see coalora models)")
    sp.add_argument("--adapter", default="default", help="trained CoA-LoRA file; 'default' = the shipped one, "
                    "'none' = quantization only")


def convention_args(sp: argparse.ArgumentParser) -> None:
    """--seqlen / --windows: the perplexity convention (window length and count) of stored evaluations."""
    sp.add_argument("--seqlen", type=int, default=256, help="tokens per eval window (default 256)")
    sp.add_argument("--windows", type=int, default=8, help="eval windows (default 8)")


def output_args(sp: argparse.ArgumentParser, progress: bool = True) -> None:
    if progress:
        sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sp.add_argument("--json", action="store_true", help="print one JSON document")


def explorer_for(args: argparse.Namespace, store=None) -> Explorer:
    """The explorer of ``--model`` with ``--adapter`` ('none': quantization only)."""
    from coalora.explorer import Explorer

    adapter = None if args.adapter == "none" else args.adapter
    return Explorer(args.model, adapter=adapter, store=store)


def pick_config(args: argparse.Namespace, ex: Explorer) -> ModelQuantConfig:
    """The configuration named by exactly one of --config / --preset / --budget / --hash."""
    from coalora.quant.config import ModelQuantConfig, resolve_preset

    given = [k for k in ("config", "preset", "budget", "hash") if getattr(args, k, None) is not None]
    if len(given) != 1:
        raise CoaloraError("give exactly one of --config FILE, --preset NAME, --budget BITS or --hash HASH")
    if args.config:
        return ModelQuantConfig.load(args.config, ex.targets, model=ex.model_name)
    if args.preset:
        return ModelQuantConfig.uniform(ex.model_name, ex.targets, resolve_preset(args.preset))
    if args.hash:
        return ex.config(args.hash)
    return ex.allocate(args.budget)


def load_quant_config(args: argparse.Namespace, model) -> ModelQuantConfig:
    """``--preset`` or ``--config`` as a configuration of ``model``'s target matrices."""
    from coalora.models import find_targets
    from coalora.quant.config import ModelQuantConfig, resolve_preset

    targets = find_targets(model)
    if args.preset:
        return ModelQuantConfig.uniform(args.model, targets, resolve_preset(args.preset))
    return ModelQuantConfig.load(args.config, targets, model=args.model)
