"""Every number of the protocol's summary, from its finished units (method.md 6).

:func:`frames` turns the unit files into tables of points and runs; :func:`analyse` computes each
estimate with its 95% interval (:mod:`coalora.train.protocol_intervals`): perplexity and KL per
(method, budget), the ratio to QLoRA, the hypervolume, the OOD geometric mean, the seen-vs-unseen
gap at matching bits, and each method's compute. Ratios, hypervolumes and geometric means are
computed inside each resample.

"Unseen" rows use only points labelled ``unseen`` for the shared-adapter methods and ``own`` for
the per-configuration ones (their training configuration is the budget's); a shared-adapter point
that its run trained on is left out of those rows and counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError
from coalora.train.protocol_intervals import Bootstrap

ORDER = ("coalora", "coalora-theta-off", "shared", "qlora", "lqlora", "none")
"""The methods' order in every table and figure."""
COMMAND = "coalora compare --out data/results/protocol"
"""The command that makes the committed comparison."""
HV_BITS_LO = 2.25
"""Lowest bits of the hypervolume's box."""


def frames(out: Path):
    """(points, runs, grid rows, protocol.json body) from the finished units."""
    import pandas as pd

    from coalora.train.protocol import load_units, step_logs
    from coalora.train.protocol.units import TRAINED_KINDS

    units = load_units(out)
    if not units:
        raise CoaloraError(f"{out} has no finished units; run `{COMMAND}` first")
    meta = json.loads((out / "protocol.json").read_text())
    points, runs, grid = [], [], []
    for name, u in units.items():
        unit = u["unit"]
        steady = step_logs.of_unit(out, name) if unit["kind"] in TRAINED_KINDS else {}
        theta = _arm_theta_scale(u)
        for r in u["runs"]:
            runs.append({**r, **steady, **theta, "unit": name, "kind": unit["kind"]})
        if unit["kind"] in ("grid", "theta-grid"):
            grid.append({"method": unit["method"], "lr": u["lr"], "theta_lr_scale": u["theta_lr_scale"],
                         "validation_nll": u["validation_nll"], "unit": name})
        for p in u["points"]:
            points.append({**p, "unit": name, "unit_kind": unit["kind"]})
        if "arm" in u:
            meta.setdefault("arms", {})[unit["method"]] = u["arm"]["options"]
    first = next(iter(units.values()))
    meta["env"] = first.get("env", {})
    meta["commits"] = sorted({u.get("env", {}).get("git", "unknown") for u in units.values()})
    runs_df = pd.DataFrame(runs)
    pts = pd.DataFrame(points)
    if len(pts):
        # A point's token_passes: its method's whole training compute at that seed and scale
        # (for QLoRA / LQ-LoRA, the sum of their per-budget runs).
        tp = runs_df[runs_df["kind"].isin(TRAINED_KINDS)].groupby(["method", "seed", "scale"])["token_passes"].sum()
        pts["token_passes"] = [int(tp.get((m, s, sc), 0)) for m, s, sc in zip(pts["method"], pts["seed"], pts["scale"])]
    return pts, runs_df, pd.DataFrame(grid), meta


def _arm_theta_scale(body: dict[str, Any]) -> dict[str, float]:
    """An arm run's theta rate scale, which protocol-v1's units recorded as None: the arm's
    ``theta_lr_scale`` option, else the unit's (coalora's); nothing for a theta-off arm or another unit."""
    arm = body.get("arm")
    if arm is None or arm["options"].get("theta") is False:
        return {}
    return {"theta_lr_scale": float(arm["options"].get("theta_lr_scale", body["unit"]["theta_lr_scale"]))}


def methods_of(pts) -> list[str]:
    """Methods present, in the files' order, with ablation arms (``coalora+<name>``) after coalora."""
    present = set(pts["method"])
    arms = sorted(m for m in present if m.startswith("coalora+"))
    return [m for m in ORDER[:1] if m in present] + arms + [m for m in ORDER[1:] if m in present]


def unseen_rows(pts, budget: float, method: str):
    """The headline points of ``method`` at ``budget``'s configuration that count as unseen (or own)."""
    sel = pts[(pts["method"] == method) & (pts["role"] == "budget") & (pts["budget"] == budget) & (pts["scale"] == 1.0)]
    keep = "own" if method in ("qlora", "lqlora") else "unseen"
    if method == "none":
        return sel
    return sel[sel["kind"] == keep]


def analyse(pts, runs, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every number of the summary (estimates and 95% intervals), as plain data."""
    budgets = list(cfg["budgets"])
    head = pts[pts["scale"] == 1.0]
    methods = methods_of(head)
    seeds = {m: sorted(set(head[head["method"] == m]["seed"])) for m in methods}
    n_windows = int(pts["windows"].iloc[0])
    bs = Bootstrap(n_windows, seeds)
    res: dict[str, Any] = {"methods": methods, "budgets": budgets, "seeds": seeds, "cells": {}, "kld": {},
                           "ratio": {}, "hv": {}, "ood": {}, "gap": {}, "bits": {}, "left_out": {}}
    curves = _cells(res, pts, bs)
    _ratios(res, "qlora")
    _hypervolumes(res, curves, cfg, bs)
    _ood(res, head, bs)
    _gaps(res, head, curves, bs)
    res["compute"] = _compute(runs, methods)
    return res


def _cells(res: dict[str, Any], pts, bs: Bootstrap) -> dict[str, dict[float, tuple[float, np.ndarray]]]:
    """Perplexity and KL cells per (method, budget) into ``res``; returns each method's unseen curve."""
    curves: dict[str, dict[float, tuple[float, np.ndarray]]] = {}
    for m in res["methods"]:
        curves[m] = {}
        for b in res["budgets"]:
            rows = unseen_rows(pts, b, m)
            allrows = pts[(pts["method"] == m) & (pts["role"] == "budget") & (pts["budget"] == b) & (pts["scale"] == 1.0)]
            if len(allrows) > len(rows):
                res["left_out"][f"{m}@{b}"] = int(len(allrows) - len(rows))
            c = bs.cell(rows)
            if c is None:
                continue
            curves[m][b] = c
            res["cells"][(m, b)] = c
            res["bits"][b] = float(rows["avg_bits"].iloc[0])
            res["kld"][(m, b)] = bs.cell(rows, "window_kld")
    return curves


def _ratios(res: dict[str, Any], ref: str) -> None:
    """Each cell's perplexity over ``ref``'s at the same budget, paired resample by resample."""
    for m in res["methods"]:
        for b in res["budgets"]:
            if (m, b) in res["cells"] and (ref, b) in res["cells"]:
                e1, v1 = res["cells"][(m, b)]
                e0, v0 = res["cells"][(ref, b)]
                res["ratio"][(m, b)] = (e1 / e0, v1 / v0)


def _hypervolumes(res: dict[str, Any], curves, cfg: dict[str, Any], bs: Bootstrap) -> None:
    """Normalised hypervolume of each method with a cell at every budget, per resample."""
    from coalora.train.compare import hypervolume_normalised

    ppl_best = min(e for e, _ in res["cells"].values()) if res["cells"] else 1.0
    for m in res["methods"]:
        bl = [b for b in res["budgets"] if b in curves[m]]
        if len(bl) < len(res["budgets"]):
            continue
        bits = [res["bits"][b] for b in bl]

        def hv(ppls, bits=bits) -> float:
            return hypervolume_normalised(list(zip(bits, ppls)), HV_BITS_LO, cfg["hv_bits_ref"], cfg["hv_ppl_ref"],
                                          ppl_best)

        est = hv([curves[m][b][0] for b in bl])
        vals = np.array([hv([curves[m][b][1][r] for b in bl]) for r in range(bs.n)])
        res["hv"][m] = (est, vals)


def _ood(res: dict[str, Any], head, bs: Bootstrap) -> None:
    """Geometric-mean perplexity of each method over the OOD configurations, per resample."""
    for m in res["methods"]:
        ood = head[(head["method"] == m) & (head["role"] == "ood")]
        cells = [bs.cell(ood[ood["config_hash"] == h]) for h in sorted(set(ood["config_hash"]))]
        cells = [c for c in cells if c is not None]
        if cells:
            est = math.exp(np.mean([math.log(e) for e, _ in cells]))
            vals = np.exp(np.mean([np.log(v) for _, v in cells], axis=0))
            res["ood"][m] = (est, vals, len(cells))


def _gaps(res: dict[str, Any], head, curves, bs: Bootstrap) -> None:
    """Seen vs unseen at matching bits: each seen point over the method's unseen curve (log-linear in
    bits) at its own bits, minus 1; seen points outside the curve's bit range are skipped."""
    for m in [m for m in res["methods"] if m not in ("qlora", "lqlora", "none")]:
        if len(curves[m]) < 2:
            continue
        seen = head[(head["method"] == m) & (head["kind"] == "seen") & (head["role"] == "seen")]
        bl = sorted(curves[m])
        xs = [res["bits"][b] for b in bl]
        gaps_est, gaps_vals = [], []
        for h in sorted(set(seen["config_hash"])):
            rows = seen[seen["config_hash"] == h]
            bits = float(rows["avg_bits"].iloc[0])
            if not xs[0] <= bits <= xs[-1]:
                continue
            e, v = bs.cell(rows)
            curve_e = math.exp(np.interp(bits, xs, [math.log(curves[m][b][0]) for b in bl]))
            curve_v = np.exp(np.array([np.interp(bits, xs, [math.log(curves[m][b][1][r]) for b in bl])
                                       for r in range(bs.n)]))
            gaps_est.append(e / curve_e - 1)
            gaps_vals.append(v / curve_v - 1)
        if gaps_est:
            res["gap"][m] = (float(np.mean(gaps_est)), np.mean(gaps_vals, axis=0), len(gaps_est))


def _compute(runs, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Each method's compute per seed at the headline (and arm) units: token-passes, seconds, probe tokens."""
    out: dict[str, dict[str, Any]] = {}
    hr = runs[runs["kind"].isin(["headline", "arm"])] if len(runs) else runs
    for m in methods:
        r = hr[hr["method"] == m] if len(hr) else hr
        if not len(r):
            continue
        per_seed = r.groupby("seed").agg(token_passes=("token_passes", "sum"), train=("train_seconds", "sum"),
                                         setup=("setup_seconds", "sum"), probe=("probe_tokens", "sum"),
                                         lq=("lq_seconds", "sum"))
        out[m] = {"token_passes": sorted(set(int(x) for x in per_seed["token_passes"])),
                  "train_seconds": float(per_seed["train"].mean()),
                  "setup_seconds": float(per_seed["setup"].mean()),
                  "lq_seconds": float(per_seed["lq"].mean()),
                  "probe_tokens": int(per_seed["probe"].mean()), "seeds": len(per_seed)}
    return out


def label_check(pts, runs) -> list[str]:
    """Violations of the labelling rule: an ``unseen`` point whose hash its own run trained on."""
    bad = []
    trained = {}
    for _, r in runs.iterrows():
        trained.setdefault((r["method"], int(r["seed"]), float(r["scale"])), set()).update(r["train_config_hashes"])
    for _, p in pts[pts["kind"] == "unseen"].iterrows():
        if p["config_hash"] in trained.get((p["method"], int(p["seed"]), float(p["scale"])), set()):
            bad.append(f"{p['method']} seed {p['seed']} {p['config_hash']}")
    return bad
