"""Serving the explorer: the command line of ``app.py`` / ``coalora serve``, then build the UI and launch it.

It lives in the ``ui`` package (not in ``app.py``) so that ``coalora serve`` works from an installed
wheel, where the checkout's top-level ``app.py`` (the Hugging Face Space's entry point) is absent.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``app.py`` / ``coalora serve`` (defaults from the environment where a Space sets them)."""
    p = argparse.ArgumentParser(description="Serve the coalora explorer.")
    # A Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0 (its proxy must reach the app); anywhere
    # else the default is this machine only.
    host = os.environ.get("COALORA_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    p.add_argument("--host", default=host,
                   help="bind address (default 127.0.0.1, or $COALORA_HOST / $GRADIO_SERVER_NAME when set; "
                        "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("COALORA_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))))
    p.add_argument("--model", default=os.environ.get("COALORA_MODEL", "smollm2-135m"), help="the model shown first")
    p.add_argument("--share", action="store_true", help="also open a temporary public *.gradio.live link")
    p.add_argument("--public-url", default=os.environ.get("COALORA_PUBLIC_URL"), metavar="URL",
                   help="the page's public address in share links (default $COALORA_PUBLIC_URL; on a Hugging Face "
                        "Space https://$SPACE_HOST/; else http://HOST:PORT/ of this app)")
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME=PATH",
                   help="also offer a local text file or directory as an eval set (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve the explorer until stopped; 2 with one ``error:`` line when the options or the model are bad."""
    args = parse_args(argv)
    from ui import scratch

    scratch.claim()  # before gradio is imported: its cache and the exports are this process's own
    from coalora.errors import CoaloraError

    try:
        from coalora.assets import prepare

        if args.model == "smollm2-135m":
            prepare(log=lambda m: print(m, file=sys.stderr))  # a fresh Space: fetch the offline model once
        from ui import convention, share
        from ui.layout import build_app, launch_kwargs

        share.set_public_url(share.public_url(args.public_url, args.host, args.port))
        for spec in args.eval_set:
            convention.add_eval_set(spec)

        demo = build_app(args.model)
    except CoaloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
    return 0
