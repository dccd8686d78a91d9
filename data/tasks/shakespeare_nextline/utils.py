"""Loads this task's items (items.jsonl, next to this file) for lm-evaluation-harness.

lm-eval calls ``load_docs`` (the YAML's ``custom_dataset``) with the task's metadata as keyword
arguments; the items are offline, so nothing is fetched.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_docs(**_metadata):
    """The items as a ``datasets.DatasetDict`` with one ``test`` split."""
    import datasets

    path = Path(__file__).resolve().parent / "items.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
