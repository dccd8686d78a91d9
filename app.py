"""coalora's Gradio app (also a Hugging Face Space entry point): build the UI from ui/ and launch it."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve the coalora explorer.")
    p.add_argument("--host", default=os.environ.get("COALORA_HOST", "127.0.0.1"), help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("COALORA_PORT", "7860")))
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args(argv)
    from ui.layout import build_app

    build_app(args.model).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
