"""coalora's Gradio app (also the Hugging Face Space entry point): `python app.py --help`."""

import sys

from ui.serve import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
