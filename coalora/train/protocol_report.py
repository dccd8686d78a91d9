"""The protocol's files and intervals: ``points.parquet``, ``runs.parquet``, ``summary.md``, ``front.png``.

Intervals are 95% percentile intervals of a bootstrap over seeds and windows: each resample draws
the held-out windows with replacement once (shared by every method, budget and configuration, so
method-vs-method ratios are paired on the same text) and, per method, its seeds with replacement.
A cell's perplexity is ``exp(sum of resampled window NLLs / their tokens)``; its KL the same mean
of window KLs. Ratios, hypervolumes and geometric means are computed inside each resample.

"Unseen" rows use only points labelled ``unseen`` for the shared-adapter methods and ``own`` for
the per-configuration ones (their training configuration is the budget's); a shared-adapter point
that its run trained on is left out of those rows and counted.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError
from coalora.paths import PROTOCOL_DIR

SHIPPED = PROTOCOL_DIR
"""Where the committed protocol comparison lives (data/results/README.md)."""
ORDER = ("coalora", "coalora-theta-off", "shared", "qlora", "lqlora", "none")
RESAMPLES = 2000
COMMAND = "coalora compare --out data/results/protocol"


def _frames(out: Path):
    """(points, runs, grid rows, protocol.json body) from the finished units."""
    import pandas as pd

    from coalora.train.protocol import load_units

    units = load_units(out)
    if not units:
        raise CoaloraError(f"{out} has no finished units; run `{COMMAND}` first")
    meta = json.loads((out / "protocol.json").read_text())
    points, runs, grid = [], [], []
    for name, u in units.items():
        unit = u["unit"]
        for r in u["runs"]:
            runs.append({**r, "unit": name, "kind": unit["kind"]})
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
        tp = runs_df[runs_df["kind"].isin(["headline", "arm", "scale"])].groupby(["method", "seed", "scale"])["token_passes"].sum()
        pts["token_passes"] = [int(tp.get((m, s, sc), 0)) for m, s, sc in zip(pts["method"], pts["seed"], pts["scale"])]
    return pts, runs_df, pd.DataFrame(grid), meta


def _methods(pts) -> list[str]:
    """Methods present, in the files' order, with ablation arms (``coalora+<name>``) after coalora."""
    present = set(pts["method"])
    arms = sorted(m for m in present if m.startswith("coalora+"))
    return [m for m in ORDER[:1] if m in present] + arms + [m for m in ORDER[1:] if m in present]


def _unseen_rows(pts, budget: float, method: str):
    sel = pts[(pts["method"] == method) & (pts["role"] == "budget") & (pts["budget"] == budget) & (pts["scale"] == 1.0)]
    keep = "own" if method in ("qlora", "lqlora") else "unseen"
    if method == "none":
        return sel
    return sel[sel["kind"] == keep]


class Bootstrap:
    """Paired resamples of windows (shared) and seeds (per method)."""

    def __init__(self, n_windows: int, seeds: dict[str, list[int]], resamples: int = RESAMPLES, rng_seed: int = 0):
        rng = np.random.default_rng(rng_seed)
        self.windows = rng.integers(0, n_windows, size=(resamples, n_windows))
        self.seeds = {m: np.asarray(s)[rng.integers(0, len(s), size=(resamples, len(s)))] for m, s in seeds.items()}
        self.n = resamples

    def cell(self, rows, column: str = "window_nll") -> tuple[float, np.ndarray] | None:
        """(point estimate, resampled values ``[R]``) of exp(mean NLL) (or mean KL for window_kld)."""
        if len(rows) == 0:
            return None
        by_seed = {int(s): np.asarray(v, dtype=np.float64) for s, v in zip(rows["seed"], rows[column])}
        tokens = int(rows["tokens"].iloc[0]) / int(rows["windows"].iloc[0])
        x = np.stack(list(by_seed.values()))  # [S, W]
        est = x.mean() / tokens
        method = rows["method"].iloc[0]
        seeds = self.seeds.get(method)
        idx = {s: i for i, s in enumerate(by_seed)}
        if seeds is None or len(by_seed) == 1:
            draws = np.zeros((self.n, 1), dtype=int)
        else:
            draws = np.vectorize(lambda s: idx.get(int(s), 0))(seeds)
        # mean over drawn seeds and drawn windows: x[draws][:, :, windows]
        per = x[draws]  # [R, S', W]
        vals = np.take_along_axis(per, self.windows[:, None, :].repeat(per.shape[1], 1), axis=2).mean(axis=(1, 2)) / tokens
        if column == "window_nll":
            return math.exp(est), np.exp(vals)
        return est, vals


def _ci(vals: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _fmt(est: float, vals: np.ndarray, digits: int = 2) -> str:
    lo, hi = _ci(vals)
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def analyse(pts, runs, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every number of the summary (estimates and 95% intervals), as plain data."""
    from coalora.train.compare import hypervolume_normalised

    budgets = list(cfg["budgets"])
    head = pts[pts["scale"] == 1.0]
    methods = _methods(head)
    seeds = {m: sorted(set(head[head["method"] == m]["seed"])) for m in methods}
    n_windows = int(pts["windows"].iloc[0])
    bs = Bootstrap(n_windows, seeds)
    res: dict[str, Any] = {"methods": methods, "budgets": budgets, "seeds": seeds, "cells": {}, "kld": {},
                           "ratio": {}, "hv": {}, "ood": {}, "gap": {}, "bits": {}, "left_out": {}}
    curves: dict[str, dict[float, tuple[float, np.ndarray]]] = {}
    for m in methods:
        curves[m] = {}
        for b in budgets:
            rows = _unseen_rows(pts, b, m)
            allrows = pts[(pts["method"] == m) & (pts["role"] == "budget") & (pts["budget"] == b) & (pts["scale"] == 1.0)]
            if len(allrows) > len(rows):
                res["left_out"][f"{m}@{b}"] = int(len(allrows) - len(rows))
            c = bs.cell(rows)
            if c is None:
                continue
            curves[m][b] = c
            res["cells"][(m, b)] = c
            res["bits"][b] = float(rows["avg_bits"].iloc[0])
            k = bs.cell(rows, "window_kld")
            res["kld"][(m, b)] = k
    ref = "qlora"
    for m in methods:
        for b in budgets:
            if (m, b) in res["cells"] and (ref, b) in res["cells"]:
                e1, v1 = res["cells"][(m, b)]
                e0, v0 = res["cells"][(ref, b)]
                res["ratio"][(m, b)] = (e1 / e0, v1 / v0)
    ppl_best = min(e for e, _ in res["cells"].values()) if res["cells"] else 1.0
    for m in methods:
        bl = [b for b in budgets if b in curves[m]]
        if len(bl) < len(budgets):
            continue
        bits = [res["bits"][b] for b in bl]

        def hv(ppls, bits=bits) -> float:
            return hypervolume_normalised(list(zip(bits, ppls)), 2.25, cfg["hv_bits_ref"], cfg["hv_ppl_ref"], ppl_best)

        est = hv([curves[m][b][0] for b in bl])
        vals = np.array([hv([curves[m][b][1][r] for b in bl]) for r in range(bs.n)])
        res["hv"][m] = (est, vals)
    for m in methods:
        ood = head[(head["method"] == m) & (head["role"] == "ood")]
        cells = [bs.cell(ood[ood["config_hash"] == h]) for h in sorted(set(ood["config_hash"]))]
        cells = [c for c in cells if c is not None]
        if cells:
            est = math.exp(np.mean([math.log(e) for e, _ in cells]))
            vals = np.exp(np.mean([np.log(v) for _, v in cells], axis=0))
            res["ood"][m] = (est, vals, len(cells))
    for m in [m for m in methods if m not in ("qlora", "lqlora", "none")]:
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
    res["compute"] = {}
    hr = runs[runs["kind"].isin(["headline", "arm"])] if len(runs) else runs
    for m in methods:
        r = hr[hr["method"] == m] if len(hr) else hr
        if not len(r):
            continue
        per_seed = r.groupby("seed").agg(token_passes=("token_passes", "sum"), train=("train_seconds", "sum"),
                                         setup=("setup_seconds", "sum"), probe=("probe_tokens", "sum"),
                                         lq=("lq_seconds", "sum"))
        res["compute"][m] = {"token_passes": sorted(set(int(x) for x in per_seed["token_passes"])),
                             "train_seconds": float(per_seed["train"].mean()),
                             "setup_seconds": float(per_seed["setup"].mean()),
                             "lq_seconds": float(per_seed["lq"].mean()),
                             "probe_tokens": int(per_seed["probe"].mean()), "seeds": len(per_seed)}
    return res


def _label_check(pts, runs) -> list[str]:
    """Violations of the labelling rule: an ``unseen`` point whose hash its own run trained on."""
    bad = []
    trained = {}
    for _, r in runs.iterrows():
        trained.setdefault((r["method"], int(r["seed"]), float(r["scale"])), set()).update(r["train_config_hashes"])
    for _, p in pts[pts["kind"] == "unseen"].iterrows():
        if p["config_hash"] in trained.get((p["method"], int(p["seed"]), float(p["scale"])), set()):
            bad.append(f"{p['method']} seed {p['seed']} {p['config_hash']}")
    return bad


def markdown(pts, runs, grid, meta: dict[str, Any]) -> str:
    cfg = meta["config"]
    res = analyse(pts, runs, cfg)
    methods, budgets = res["methods"], res["budgets"]
    ew = meta["eval_windows"]
    docs = sorted({p[0] for p in ew["positions"]})
    env = meta.get("env", {})
    lines = [
        "# The equal-compute comparison (protocol)",
        "",
        f"Remake: `{COMMAND}` (resumable units; `--report-only` rewrites these files from `units/`). "
        f"Protocol {meta['hash']}: every method trains {meta['headline_compute']:,} token-passes at the headline "
        f"compute; eval spec `{ew['spec']}`, {len(ew['positions'])} windows x {cfg['eval_seqlen']} tokens from "
        f"{', '.join(docs)} ({ew['dataset']}); seeds {', '.join(map(str, cfg['seeds']))}; 95% intervals from "
        f"{RESAMPLES} paired bootstrap resamples over seeds and windows.",
        "",
    ]
    if env:
        lines += [f"Versions: {', '.join(f'{k} {v}' for k, v in env.items() if k != 'git')}; code at commit(s) "
                  f"{', '.join(meta.get('commits', []))}.", ""]
    lines += ["## Held-out perplexity at each budget (unseen configurations; own for per-configuration methods)", "",
              "| budget | bits | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for b in budgets:
        row = [f"{b:g}", f"{res['bits'].get(b, float('nan')):.3f}"]
        row += [_fmt(*res["cells"][(m, b)]) if (m, b) in res["cells"] else "" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## KL divergence to the unquantized model (nats/token), same points", "",
              "| budget | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for b in budgets:
        row = [f"{b:g}"] + [_fmt(*res["kld"][(m, b)], digits=4) if res["kld"].get((m, b)) else "" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Perplexity ratio to QLoRA (paired); an interval that holds 1.00 is a tie", "",
              "| budget | " + " | ".join(m for m in methods if m != "qlora") + " |",
              "|---|" + "---|" * (len(methods) - 1)]
    for b in budgets:
        row = [f"{b:g}"] + [_fmt(*res["ratio"][(m, b)], digits=3) if (m, b) in res["ratio"] else ""
                            for m in methods if m != "qlora"]
        lines.append("| " + " | ".join(row) + " |")
    arms = [m for m in methods if m.startswith("coalora+")]
    if arms and "coalora" in methods:
        lines += ["", "## Ablation arms: perplexity ratio to coalora (paired; below 1.00 the arm is better)", "",
                  "| arm | options | " + " | ".join(f"{b:g} bits" for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        opts = meta.get("arms", {})
        for m in arms:
            row = [m, f"`{json.dumps(opts.get(m, {}), sort_keys=True)}`"]
            for b in budgets:
                if (m, b) in res["cells"] and ("coalora", b) in res["cells"]:
                    (e1, v1), (e0, v0) = res["cells"][(m, b)], res["cells"][("coalora", b)]
                    row.append(_fmt(e1 / e0, v1 / v0, digits=3))
                else:
                    row.append("")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Summary per method", "",
              "| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines.append("| hypervolume (unseen / own points) | " + " | ".join(
        _fmt(*res["hv"][m], digits=4) if m in res["hv"] else "" for m in methods) + " |")
    lines.append("| OOD geometric-mean ppl | " + " | ".join(
        f"{_fmt(*res['ood'][m][:2])} (n={res['ood'][m][2]})" if m in res["ood"] else "" for m in methods) + " |")
    lines.append("| seen vs unseen gap, same bits | " + " | ".join(
        f"{100 * res['gap'][m][0]:+.2f}% [{100 * _ci(res['gap'][m][1])[0]:+.2f}, {100 * _ci(res['gap'][m][1])[1]:+.2f}]"
        f" (n={res['gap'][m][2]})" if m in res["gap"] else "" for m in methods) + " |")
    comp = res["compute"]
    lines.append("| training token-passes per seed | " + " | ".join(
        ", ".join(f"{t:,}" for t in comp[m]["token_passes"]) if m in comp else "0" for m in methods) + " |")
    lines.append("| search probe tokens (forward only) | " + " | ".join(
        f"{comp[m]['probe_tokens']:,}" if m in comp else "" for m in methods) + " |")
    lines.append("| wall seconds per seed: training loop incl. search | " + " | ".join(
        f"{comp[m]['train_seconds']:.0f}" if m in comp else "" for m in methods) + " |")
    lines.append("| + per-configuration LQ splits (seconds, charged to every run) | " + " | ".join(
        f"{comp[m]['lq_seconds']:.0f}" if m in comp and comp[m]["lq_seconds"] else "" for m in methods) + " |")
    lines.append("| seeds | " + " | ".join(str(len(res["seeds"].get(m, []))) for m in methods) + " |")
    if res["left_out"]:
        lines += ["", "Left out of the unseen rows because the run trained on them: "
                  + ", ".join(f"{k} ({v} seed(s))" for k, v in res["left_out"].items()) + "."]
    bad = _label_check(pts, runs)
    lines += ["", f"Label check: {len(bad)} `unseen` points are in their run's training hashes"
              + (f" ({'; '.join(bad[:5])})" if bad else "") + "."]
    lines += _scale_table(pts, cfg)
    lines += _grid_table(grid)
    lines += ["", "Wall seconds depend on the machine's load (2 shared cores); token-passes are the compute measure."]
    return "\n".join(lines) + "\n"


def _scale_table(pts, cfg) -> list[str]:
    scales = sorted(set(pts["scale"])) if len(pts) else []
    if len(scales) < 2:
        return []
    seeds = list(cfg["scale_seeds"])
    out = ["", f"## Quality against compute (seeds {', '.join(map(str, seeds))}; x C token-passes)", "",
           "| method | scale | " + " | ".join(f"{b:g} bits" for b in cfg["budgets"]) + " |",
           "|---|---|" + "---|" * len(cfg["budgets"])]
    sub = pts[pts["seed"].isin(seeds)]
    bs = Bootstrap(int(pts["windows"].iloc[0]), {m: seeds for m in ORDER})
    for m in ("coalora", "shared"):
        for s in scales:
            cells = []
            for b in cfg["budgets"]:
                rows = sub[(sub["method"] == m) & (sub["scale"] == s) & (sub["role"] == "budget") & (sub["budget"] == b)
                           & (sub["kind"] == "unseen")]
                c = bs.cell(rows)
                cells.append(_fmt(*c) if c else "")
            if any(cells):
                out.append(f"| {m} | {s:g} | " + " | ".join(cells) + " |")
    return out


def _grid_table(grid, final: bool = True) -> list[str]:
    """The lr / theta grid's validation perplexities; ``final=False`` while the grid still runs
    (the marked rate is then only the best so far)."""
    if not len(grid):
        return []
    mark = "chosen" if final else "best so far"
    out = ["", "## Learning rates (short runs, validation split of the training plays)", "",
           f"| method | lr | theta scale | validation ppl | {mark} |", "|---|---|---|---|---|"]
    for m in ORDER:
        g = grid[grid["method"] == m].sort_values(["lr", "theta_lr_scale"])
        if not len(g):
            continue
        best = g["validation_nll"].idxmin()
        for i, r in g.iterrows():
            th = f"{r['theta_lr_scale']:g}" if m == "coalora" else ""
            out.append(f"| {m} | {r['lr']:g} | {th} | {math.exp(r['validation_nll']):.3f} | {'yes' if i == best else ''} |")
    return out


def figure(pts, meta: dict[str, Any], path: Path) -> None:
    """Average bits vs perplexity per method at the headline compute: seed-and-window intervals, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coalora.files import atomic_file

    cfg = meta["config"]
    head = pts[pts["scale"] == 1.0]
    methods = _methods(head)
    seeds = {m: sorted(set(head[head["method"] == m]["seed"])) for m in methods}
    bs = Bootstrap(int(pts["windows"].iloc[0]), seeds)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for b in cfg["budgets"]:
            rows = _unseen_rows(pts, b, m)
            c = bs.cell(rows)
            if c is None:
                continue
            e, v = c
            a, z = _ci(v)
            xs.append(float(rows["avg_bits"].iloc[0]) + (j - len(methods) / 2) * 0.012)
            ys.append(e)
            lo.append(e - a)
            hi.append(z - e)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="os^Dvx*P"[j % 8], capsize=3, label=m, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight (incl. scales)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title(f"Equal compute ({meta['headline_compute']:,} token-passes), {meta['eval_windows']['spec']}, 95% CI")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write(out: str | os.PathLike) -> str:
    """Write points.parquet, runs.parquet, summary.md and front.png from the finished units; returns the summary."""
    from coalora.files import write_text_atomic

    out = Path(out)
    pts, runs, grid, meta = _frames(out)
    for name, df in (("points", pts), ("runs", runs)):
        if len(df.columns):  # only the grid so far: no scored points yet
            _parquet(df, out / f"{name}.parquet")
    text = markdown(pts, runs, grid, meta) if len(pts) else _grid_only(grid, meta)
    write_text_atomic(out / "summary.md", text)
    if len(pts):
        figure(pts, meta, out / "front.png")
    return text


def _parquet(df, path: Path) -> None:
    """A DataFrame as Parquet through DuckDB (list columns stay lists), written atomically."""
    import duckdb

    from coalora.files import atomic_file

    con = duckdb.connect()
    try:
        con.register("frame", df)
        with atomic_file(path) as tmp:
            con.execute(f"COPY frame TO '{tmp}' (FORMAT PARQUET)")
    finally:
        con.close()


def _grid_only(grid, meta) -> str:
    return "\n".join(["# The equal-compute comparison (protocol)", "",
                      f"Only part of the learning-rate grid has finished so far (protocol {meta['hash']}); "
                      "no method has been trained at the headline compute yet.",
                      *_grid_table(grid, final=False)]) + "\n"


def load(directory: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The committed comparison for the app: ``{"markdown", "front_png"}``, or None if absent."""
    d = Path(directory) if directory is not None else SHIPPED
    md = d / "summary.md"
    if not md.is_file():
        return None
    png = d / "front.png"
    return {"markdown": md.read_text(), "front_png": png if png.is_file() else None}
