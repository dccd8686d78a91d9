"""The protocol's files: ``points.parquet``, ``runs.parquet``, ``summary.md``, ``front.png`` (method.md 6).

Written from the finished units by :func:`write` (``coalora compare`` after every run, and
``--report-only``); the numbers come from :mod:`coalora.train.protocol_analysis`, their 95%
intervals from the paired bootstrap of :mod:`coalora.train.protocol_intervals`. :func:`load` reads
the committed comparison for the app.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from coalora.paths import PROTOCOL_DIR
from coalora.train.protocol_analysis import COMMAND, ORDER, analyse, frames, label_check, methods_of, unseen_rows
from coalora.train.protocol_intervals import RESAMPLES, Bootstrap, ci, interval

__all__ = ["COMMAND", "ORDER", "RESAMPLES", "SHIPPED", "Bootstrap", "analyse", "figure", "load", "markdown", "write"]

SHIPPED = PROTOCOL_DIR
"""Where the committed protocol comparison lives (data/results/README.md)."""


def markdown(pts, runs, grid, meta: dict[str, Any]) -> str:
    """``summary.md``: every table of the comparison, from the points, runs and grid rows of :func:`frames`."""
    cfg = meta["config"]
    res = analyse(pts, runs, cfg)
    lines = _header(meta)
    lines += _budget_tables(res)
    lines += _arm_table(res, meta.get("arms", {}))
    lines += _theta_table(res, meta.get("arms", {}))
    lines += _summary_table(res)
    if res["left_out"]:
        lines += ["", "Left out of the unseen rows because the run trained on them: "
                  + ", ".join(f"{k} ({v} seed(s))" for k, v in res["left_out"].items()) + "."]
    bad = label_check(pts, runs)
    lines += ["", f"Label check: {len(bad)} `unseen` points are in their run's training hashes"
              + (f" ({'; '.join(bad[:5])})" if bad else "") + "."]
    lines += _scale_table(pts, cfg)
    lines += _stability_table(runs)
    lines += _grid_table(grid)
    lines += ["", "Wall seconds depend on the machine's load (2 shared cores); token-passes are the compute measure."]
    return "\n".join(lines) + "\n"


def _header(meta: dict[str, Any]) -> list[str]:
    """The title, how to remake the files, the protocol's compute, eval windows, seeds and versions."""
    cfg = meta["config"]
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
    return lines


def _budget_tables(res: dict[str, Any]) -> list[str]:
    """Per budget: held-out perplexity, KL to the unquantized model, and the perplexity ratio to QLoRA."""
    methods, budgets = res["methods"], res["budgets"]
    lines = ["## Held-out perplexity at each budget (unseen configurations; own for per-configuration methods)", "",
             "| budget | bits | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for b in budgets:
        row = [f"{b:g}", f"{res['bits'].get(b, float('nan')):.3f}"]
        row += [interval(*res["cells"][(m, b)]) if (m, b) in res["cells"] else "" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## KL divergence to the unquantized model (nats/token), same points", "",
              "| budget | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for b in budgets:
        row = [f"{b:g}"] + [interval(*res["kld"][(m, b)], digits=4) if res["kld"].get((m, b)) else "" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    others = [m for m in methods if m != "qlora"]
    lines += ["", "## Perplexity ratio to QLoRA (paired); an interval that holds 1.00 is a tie", ""]
    if "qlora" not in methods:
        return lines + ["No QLoRA unit has finished yet."]
    lines += ["| budget | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for b in budgets:
        row = [f"{b:g}"] + [interval(*res["ratio"][(m, b)], digits=3) if (m, b) in res["ratio"] else ""
                            for m in others]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _arm_table(res: dict[str, Any], options: dict[str, dict]) -> list[str]:
    """Each ablation arm's perplexity ratio to coalora per budget (none without arms)."""
    methods, budgets = res["methods"], res["budgets"]
    arms = [m for m in methods if m.startswith("coalora+")]
    if not (arms and "coalora" in methods):
        return []
    lines = ["", "## Ablation arms: perplexity ratio to coalora (paired; below 1.00 the arm is better)", "",
             "| arm | options | " + " | ".join(f"{b:g} bits" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for m in arms:
        row = [m, f"`{json.dumps(options.get(m, {}), sort_keys=True)}`", *_ratio_cells(res, m, "coalora")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _ratio_cells(res: dict[str, Any], num: str, den: str) -> list[str]:
    """``num``'s perplexity over ``den``'s at each budget, paired resample by resample ('' where either is missing)."""
    cells = res["cells"]
    out = []
    for b in res["budgets"]:
        if (num, b) in cells and (den, b) in cells:
            (e1, v1), (e0, v0) = cells[(num, b)], cells[(den, b)]
            out.append(interval(e1 / e0, v1 / v0, digits=3))
        else:
            out.append("")
    return out


def theta_pairs(methods: list[str], options: dict[str, dict]) -> list[tuple[str, str]]:
    """(recipe with theta, the same recipe with theta off) for the headline and every arm that has its
    theta-off arm: the same options plus ``theta: false``, up to options that only theta reads
    (:data:`~coalora.train.protocol.arms.THETA_ONLY`), so one theta-off arm may serve several recipes."""
    from coalora.train.protocol.arms import THETA_ONLY

    def without(o: dict) -> dict:
        return {k: v for k, v in o.items() if k != "theta" and k not in THETA_ONLY}

    pairs = [("coalora", "coalora-theta-off")] if {"coalora", "coalora-theta-off"} <= set(methods) else []
    for off in methods:
        o = options.get(off, {})
        if off.startswith("coalora+") and o.get("theta") is False:
            pairs += [(on, off) for on in methods if on.startswith("coalora+") and on != off
                      and options.get(on, {}).get("theta", True) is not False and without(options.get(on, {})) == without(o)]
    return pairs


def _theta_table(res: dict[str, Any], options: dict[str, dict]) -> list[str]:
    """Each recipe's perplexity ratio to its own theta-off ablation per budget (issue 16: theta earns
    its place if this is at most 0.95 at 2.5 and 3 bits with the interval below 1.00)."""
    budgets = res["budgets"]
    pairs = theta_pairs(res["methods"], options)
    if not pairs:
        return []
    lines = ["", "## Theta against theta off: perplexity ratio of each recipe to its own U = I ablation (paired)", "",
             "| recipe | theta off | " + " | ".join(f"{b:g} bits" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for on, off in pairs:
        lines.append("| " + " | ".join([on, off, *_ratio_cells(res, on, off)]) + " |")
    return lines


def _summary_table(res: dict[str, Any]) -> list[str]:
    """Per method: hypervolume, OOD geometric mean, seen-vs-unseen gap, compute and seeds."""
    methods = res["methods"]
    lines = ["", "## Summary per method", "",
             "| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines.append("| hypervolume (unseen / own points) | " + " | ".join(
        interval(*res["hv"][m], digits=4) if m in res["hv"] else "" for m in methods) + " |")
    for base, label in (("qlora", "QLoRA"), ("lqlora", "LQ-LoRA")):
        if base not in res["hv"]:
            continue
        b_est, b_vals = res["hv"][base]  # resamples share their windows, so differences are paired
        lines.append(f"| hypervolume minus {label}'s (paired; an interval holding 0 is a tie) | " + " | ".join(
            interval(res["hv"][m][0] - b_est, res["hv"][m][1] - b_vals, digits=4)
            if m in res["hv"] and m != base else "" for m in methods) + " |")
    lines.append("| OOD geometric-mean ppl | " + " | ".join(
        f"{interval(*res['ood'][m][:2])} (n={res['ood'][m][2]})" if m in res["ood"] else "" for m in methods) + " |")
    lines.append("| seen vs unseen gap, same bits | " + " | ".join(
        f"{100 * res['gap'][m][0]:+.2f}% [{100 * ci(res['gap'][m][1])[0]:+.2f}, {100 * ci(res['gap'][m][1])[1]:+.2f}]"
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
    return lines


def _stability_table(runs) -> list[str]:
    """Per method, seed and scale with kept step logs (:mod:`coalora.train.protocol.step_logs`):
    clipped steps, the largest gradient norms and the worst rise of a configuration's loss.

    A per-configuration method's six runs are pooled: clipped steps summed, maxima over runs."""
    if "log_steps" not in runs or not runs["log_steps"].notna().any():
        return []
    lines = ["", "## Training stability (from the kept step logs, `logs/`)", "",
             "Gradient norms are before clipping; a loss rise is a configuration's step loss over its loss "
             "the previous time it was drawn (on another batch).", "",
             "| method | seed | scale | clipped steps | max grad norm (step) | max theta grad norm | "
             "worst loss rise (step) |", "|---|---|---|---|---|---|---|"]
    kept = runs[runs["log_steps"].notna()]
    order = {m: i for i, m in enumerate(methods_of(kept))}
    for (m, seed, scale), g in sorted(kept.groupby(["method", "seed", "scale"]),
                                      key=lambda kv: (order.get(kv[0][0], 99), kv[0][2], kv[0][1])):
        top = g.loc[g["max_grad_norm"].idxmax()]
        rise = g.loc[g["worst_loss_rise"].idxmax()] if g["worst_loss_rise"].notna().any() else None
        theta = g["max_grad_norm_theta"].max()
        lines.append(f"| {m} | {seed} | {scale:g} | {int(g['clipped_steps'].sum())} of {int(g['log_steps'].sum())} | "
                     f"{top['max_grad_norm']:.2f} ({int(top['max_grad_norm_step'])}) | "
                     + (f"{theta:.2f}" if math.isfinite(theta) else "") + " | "
                     + (f"{rise['worst_loss_rise']:.2f} ({int(rise['worst_loss_rise_step'])})" if rise is not None else "")
                     + " |")
    return lines


def _scale_table(pts, cfg) -> list[str]:
    """Quality against compute: coalora and shared at each compute scale (none with one scale)."""
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
                cells.append(interval(*c) if c else "")
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
    methods = methods_of(head)
    seeds = {m: sorted(set(head[head["method"] == m]["seed"])) for m in methods}
    bs = Bootstrap(int(pts["windows"].iloc[0]), seeds)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for b in cfg["budgets"]:
            rows = unseen_rows(pts, b, m)
            c = bs.cell(rows)
            if c is None:
                continue
            e, v = c
            a, z = ci(v)
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
    pts, runs, grid, meta = frames(out)
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
    """The summary while only part of the grid has finished."""
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
