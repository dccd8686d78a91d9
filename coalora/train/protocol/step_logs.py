"""The protocol's kept step logs and what they say about a run's stability (method.md 6; issue 16).

A unit's runs train under ``$COALORA_HOME/protocol/<hash>/runs/<unit>``, which does not outlive its
machine. The step log (:mod:`coalora.train.step_log`: per step the K losses, the gradient norm
before clipping, per parameter group, and whether it was clipped) is the only record of *how* a
run got to its scores, so each finished unit's log is kept, gzipped, as ``<out>/logs/<unit>.jsonl.gz``
and summarised in ``runs.parquet`` and ``summary.md``: a recipe that scores well at one seed and
diverges at another shows it here first.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

from coalora.files import atomic_file
from coalora.train.protocol.units import TRAINED_KINDS
from coalora.train.step_log import LOG

LOGS = "logs"
"""Folder of ``<out>`` that holds the kept logs."""

STABILITY_COLUMNS = ("log_steps", "clipped_steps", "max_grad_norm", "max_grad_norm_step", "max_grad_norm_theta",
                     "worst_loss_rise", "worst_loss_rise_step")
"""The columns :func:`stability` adds to a run's row (NaN where no log was kept)."""


def kept_log(out: Path, unit: str) -> Path:
    """Where unit ``unit``'s step log is kept."""
    return Path(out) / LOGS / f"{unit}.jsonl.gz"


def keep(out: Path, run_dir: Path, unit: str) -> bool:
    """Gzip ``run_dir/log.jsonl`` to :func:`kept_log` (atomically; an existing copy is kept as is).

    Returns whether a kept log exists afterwards."""
    dest = kept_log(out, unit)
    if dest.is_file():
        return True
    src = Path(run_dir) / LOG
    if not src.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as tmp, open(src, "rb") as f, gzip.open(tmp, "wb", compresslevel=9) as g:
        g.write(f.read())
    return True


def keep_finished(out: Path) -> int:
    """Keep the logs of ``out``'s finished training units whose run folders are still on this machine
    (``$COALORA_HOME/protocol/<hash>/runs/<unit>``); how many were new."""
    from coalora.train.protocol.prepare import work_dir
    from coalora.train.protocol.run import load_units

    out = Path(out)
    saved = out / "protocol.json"
    if not saved.is_file():
        return 0
    work = work_dir(json.loads(saved.read_text())["hash"])
    new = 0
    for name, body in load_units(out).items():
        if body["unit"]["kind"] in TRAINED_KINDS and not kept_log(out, name).is_file():
            new += keep(out, work / "runs" / name, name)
    return new


def read(path: Path) -> list[dict[str, Any]]:
    """The step records of a kept log (search rounds and the start record left out)."""
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "step" in rec and isinstance(rec.get("loss"), dict):
                rows.append(rec)
    return rows


def stability(records: list[dict[str, Any]]) -> dict[str, float]:
    """One run's stability from its step records.

    ``clipped_steps``: steps whose gradient norm exceeded ``max_grad_norm`` before clipping;
    ``max_grad_norm`` (and its step), ``max_grad_norm_theta`` (NaN without theta);
    ``worst_loss_rise``: the largest ratio of a configuration's loss at a step to its loss the
    previous time it was drawn (on another batch), and its step."""
    nan = float("nan")
    if not records:
        return dict.fromkeys(STABILITY_COLUMNS, nan)
    norms = [(float(r.get("grad_norm", nan)), int(r["step"])) for r in records]
    top = max(norms, key=lambda x: -math.inf if math.isnan(x[0]) else x[0])
    theta = [float(r["grad_norm_theta"]) for r in records if "grad_norm_theta" in r]
    last: dict[str, float] = {}
    rise, rise_step = nan, nan
    for r in records:
        for h, loss in r["loss"].items():
            if h in last and last[h] > 0 and math.isfinite(loss):
                q = loss / last[h]
                if math.isnan(rise) or q > rise:
                    rise, rise_step = q, int(r["step"])
            last[h] = loss
    return {"log_steps": float(len(records)), "clipped_steps": float(sum(bool(r.get("clipped")) for r in records)),
            "max_grad_norm": top[0], "max_grad_norm_step": float(top[1]),
            "max_grad_norm_theta": max(theta) if theta else nan,
            "worst_loss_rise": rise, "worst_loss_rise_step": rise_step}


def of_unit(out: Path, unit: str) -> dict[str, float]:
    """:func:`stability` of a unit's kept log; NaNs if none was kept."""
    p = kept_log(out, unit)
    return stability(read(p)) if p.is_file() else stability([])
