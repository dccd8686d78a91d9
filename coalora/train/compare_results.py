"""The comparison harness's results and files (`coalora.train.compare`; method.md 6).

:class:`EvalPoint` is one scored (method, configuration) pair; :class:`CompareResult` a whole
comparison. :func:`write_results` writes ``compare.json``, ``compare.parquet`` and ``compare.md``;
:func:`seen_gap` is the referees' seen-vs-unseen check at matching bits.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError
from coalora.paths import RESULTS_DIR


@dataclass
class EvalPoint:
    """One method scored at one configuration on the held-out windows."""

    method: str
    """``coalora``, ``qlora``, ``lqlora``, ``shared`` or ``none`` (the quantized model alone)."""
    kind: str
    """``unseen``, ``seen``, ``ood`` or ``own`` (a per-config baseline on its own configuration)."""
    budget: float | None
    """The evaluation budget of an ``unseen`` / ``own`` point; None for ``seen`` and ``ood``."""
    avg_bits: float
    """Average bits per weight of the configuration (scales included)."""
    config_hash: str
    """The configuration's hash."""
    ppl: float
    """Held-out perplexity, exp(nll)."""
    nll: float
    """Mean token negative log-likelihood."""
    tokens: int
    """Tokens scored."""


@dataclass
class CompareResult:
    """A whole comparison: its options, every scored point, training seconds and hypervolumes."""

    config: dict[str, Any]
    """The :class:`~coalora.train.compare.CompareConfig` as data."""
    points: list[EvalPoint] = field(default_factory=list)
    """Every scored point, in scoring order."""
    train_seconds: dict[str, float] = field(default_factory=dict)
    """Training wall seconds per method (summed over a per-configuration method's runs)."""
    hypervolume: dict[str, float] = field(default_factory=dict)
    """Normalised hypervolume per method over its unseen / own points."""
    hv_reference: dict[str, Any] = field(default_factory=dict)
    """The hypervolume's reference point and normalisation."""
    device: str = ""
    """The device the runs trained on."""


def seen_gap(points: list[EvalPoint], method: str = "coalora") -> dict[str, Any]:
    """Seen vs unseen perplexity at matching bits: each seen point against the unseen curve.

    Seen and unseen configurations differ in their bits (2.454 vs 2.5), so their raw means are not
    comparable. The unseen points of ``method`` are interpolated linearly in (bits, log ppl), and each
    seen point inside their bit range is compared with the curve at its own bits: ``gap = ppl_seen /
    ppl_curve - 1`` (negative: the seen configuration scores better, i.e. memorised). Seen points
    outside the range would need extrapolation and are listed but not averaged.

    Returns ``{"mean": float | None, "mean_abs": ..., "points": [{"bits", "ppl", "curve", "gap"}]}``.
    """
    unseen = sorted((p.avg_bits, math.log(p.ppl)) for p in points if p.method == method and p.kind == "unseen")
    rows = []
    for p in sorted((q for q in points if q.method == method and q.kind == "seen"), key=lambda q: q.avg_bits):
        inside = len(unseen) >= 2 and unseen[0][0] <= p.avg_bits <= unseen[-1][0]
        curve = math.exp(float(np.interp(p.avg_bits, *zip(*unseen)))) if inside else None
        rows.append({"bits": p.avg_bits, "ppl": p.ppl, "curve": curve, "gap": p.ppl / curve - 1 if curve else None})
    gaps = [r["gap"] for r in rows if r["gap"] is not None]
    return {"mean": float(np.mean(gaps)) if gaps else None,
            "mean_abs": float(np.mean(np.abs(gaps))) if gaps else None, "points": rows}


def write_results(res: CompareResult, out: Path) -> None:
    """``compare.json``, ``compare.parquet`` (via DuckDB) and ``compare.md``, each written atomically."""
    import duckdb
    import pandas as pd

    from coalora.files import atomic_file, write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    body = {"config": res.config, "device": res.device, "train_seconds": res.train_seconds,
            "hypervolume": res.hypervolume, "hv_reference": res.hv_reference, "seen_gap": seen_gap(res.points),
            "points": [asdict(p) for p in res.points], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(out / "compare.json", body)
    con = duckdb.connect()
    try:
        con.register("points", pd.DataFrame([asdict(p) for p in res.points]))
        with atomic_file(out / "compare.parquet") as tmp:
            con.execute(f"COPY points TO '{tmp}' (FORMAT PARQUET)")
    finally:
        con.close()
    write_text_atomic(out / "compare.md", markdown_table(res))


SHIPPED_RESULTS = RESULTS_DIR
"""Where the shipped comparison lives (``compare.json``, ``.parquet``, ``.md``; data/README.md)."""


def load_results(directory: str | os.PathLike = SHIPPED_RESULTS) -> dict[str, Any] | None:
    """A written comparison (``compare.json`` plus ``compare.md``'s table as ``"markdown"``), or None if absent."""
    import json

    d = Path(directory)
    if not (d / "compare.json").is_file():
        return None
    try:
        body = json.loads((d / "compare.json").read_text())
        if not isinstance(body, dict) or not isinstance(body.get("points"), list):
            raise ValueError("no points")
    except (OSError, ValueError) as e:
        raise CoaloraError(f"{d / 'compare.json'} is not a coalora comparison ({e}); rerun `coalora compare`") from None
    md = d / "compare.md"
    body["markdown"] = md.read_text() if md.is_file() else ""
    return body


def markdown_table(res: CompareResult) -> str:
    """``compare.md``: perplexity per budget and method, then the seen / OOD means, the seen-vs-unseen
    gap, the hypervolume and the training seconds of each method."""
    methods = sorted({p.method for p in res.points}, key=["coalora", "qlora", "lqlora", "shared", "none"].index)
    budgets = sorted({p.budget for p in res.points if p.budget is not None})
    lines = ["| budget | bits | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for b in budgets:
        row = [f"{b}"]
        pts = {p.method: p for p in res.points if p.budget == b}
        row.append(f"{next(iter(pts.values())).avg_bits:.3f}")
        row += [f"{pts[m].ppl:.2f}" if m in pts else "" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    for kind in ("seen", "ood"):
        row = [f"mean {kind}", ""]
        for m in methods:
            v = [p.ppl for p in res.points if p.method == m and p.kind == kind]
            row.append(f"{float(np.exp(np.mean(np.log(v)))):.2f}" if v else "")
        lines.append("| " + " | ".join(row) + " |")
    gaps = {m: seen_gap(res.points, m)["mean"] for m in methods}
    lines.append("| seen vs unseen gap, same bits | | "
                 + " | ".join(f"{100 * gaps[m]:+.2f}%" if gaps[m] is not None else "" for m in methods) + " |")
    lines.append("| hypervolume | | " + " | ".join(f"{res.hypervolume.get(m, float('nan')):.4f}" for m in methods) + " |")
    lines.append("| train seconds | | " + " | ".join(f"{res.train_seconds.get(m, 0.0):.0f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"
