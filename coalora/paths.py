"""Where coalora's committed artefacts live: the checkout's ``data/``, or the copy a wheel installs.

From a source checkout (``pip install -e .`` or ``python -m coalora``) the package sits next to
``data/``; a wheel installs the same files under ``<prefix>/share/coalora/data`` (pyproject's
``data-files``). Every module that reads a committed artefact takes its path from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The source checkout holding this package (its ``bench/`` and git history exist only there).
CHECKOUT = Path(__file__).resolve().parent.parent


def _data_dir() -> Path:
    checkout = CHECKOUT / "data"
    if (checkout / "README.md").is_file():
        return checkout
    return Path(sys.prefix) / "share" / "coalora" / "data"


DATA_DIR = _data_dir()
DEFAULT_DIR = DATA_DIR / "default"  # the trained default adapters, one file per model
SEED_DIR = DATA_DIR / "seed"  # the results store's seed rows (Parquet)
TASKS_DIR = DATA_DIR / "tasks"  # local lm-eval tasks (YAML + items)
RESULTS_DIR = DATA_DIR / "results"  # committed comparison results
PROTOCOL_DIR = RESULTS_DIR / "protocol"  # the equal-compute protocol's files
