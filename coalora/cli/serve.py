"""``coalora serve`` and ``coalora bench``: the Gradio app, and the benchmarks of a source checkout."""

from __future__ import annotations

import argparse
import subprocess
import sys

from coalora.errors import CoaloraError
from coalora.paths import CHECKOUT


def args_serve(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1 keeps it private)")
    sp.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    sp.add_argument("--model", default="smollm2-135m", help="registry name of the model to explore")


def run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CoaloraError(f"--port must be in 0..65535, got {args.port}")
    # The one place that builds and launches the UI (app.py, the Space's entry point, calls it too); the
    # only import of ui/ from the package.
    from ui.serve import main as serve_main

    return serve_main(["--host", args.host, "--port", str(args.port), "--model", args.model])


def args_bench(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("names", nargs="*", help="e.g. forward quant apply allocate adapter train")


def run_bench(args: argparse.Namespace) -> int:
    if not (CHECKOUT / "bench" / "__main__.py").is_file():
        raise CoaloraError("the benchmarks live in the source checkout (bench/); run coalora bench from a git clone")
    return subprocess.call([sys.executable, "-m", "bench", *args.names], cwd=CHECKOUT)
