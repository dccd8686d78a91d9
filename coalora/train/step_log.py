"""A run's JSONL log (``log.jsonl``): one record per step, per search round and at the start.

Step records carry ``"step"``, search records ``"after_step"``. On resume the records written after
the checkpoint's step (a crash between two saves) are dropped, so the log of a resumed run reads as
the log of an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coalora.files import write_text_atomic

LOG = "log.jsonl"
"""File name of a run's log inside its directory."""


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_after(path: Path, step: int) -> None:
    """Drop the records of steps (and search rounds) after ``step``, and any line a crash cut short."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the crash
        if rec.get("step", 0) <= step and rec.get("after_step", 0) <= step:
            keep.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))
