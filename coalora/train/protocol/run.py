"""Running the protocol unit by unit (method.md 6); a finished unit is one JSON file under ``<out>/units/``.

A unit trains its run(s) in ``$COALORA_HOME/protocol/<hash>/runs/<unit>`` (resumable from their
checkpoints; the step log is kept under ``<out>/logs/``, :mod:`.step_logs`) and records, per run,
its compute (token-passes, probe tokens, seconds) and the hashes of the configurations its steps
took gradients on, which label every scored point.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coalora.errors import CoaloraError
from coalora.train.protocol import step_logs
from coalora.train.protocol.arms import load_arms
from coalora.train.protocol.config import PER_CONFIG, ProtocolConfig
from coalora.train.protocol.prepare import Context, prepare
from coalora.train.protocol.schedule import schedule
from coalora.train.protocol.scoring import score_none, score_point, validation_nll
from coalora.train.protocol.units import TRAINED_KINDS, Unit, fmt, train_config

if TYPE_CHECKING:
    from coalora.train.config import TrainConfig
    from coalora.train.state import TrainState
    from coalora.train.trainer import Trainer


def load_units(out: Path) -> dict[str, dict]:
    """Finished units by name (``<out>/units/*.json``)."""
    done = {}
    for p in sorted((out / "units").glob("*.json")):
        try:
            body = json.loads(p.read_text())
        except (OSError, ValueError):
            raise CoaloraError(f"{p} is not a readable unit result; delete it to rerun that unit") from None
        done[body["unit"]["name"]] = body
    return done


def run(cfg: ProtocolConfig, out: str | os.PathLike, *, max_units: int | None = None, only: str | None = None,
        log: Callable[[str], None] = print, progress: bool = True) -> dict[str, dict]:
    """Run pending units in order (at most ``max_units``; ``only`` a unit kind); returns all finished units."""
    from coalora.files import write_json_atomic

    out = Path(out)
    ctx = prepare(cfg, out, log, progress)
    ran = 0
    while max_units is None or ran < max_units:
        done = load_units(out)
        ctx.arms = {a.method: a for a in load_arms(out)}
        pending = [u for u in schedule(cfg, done, list(ctx.arms.values()))
                   if u.name not in done and (only is None or u.kind == only)]
        if not pending:
            break
        unit = pending[0]
        log(f"unit {unit.name} ({len(done)} done, {len(pending)} pending now)")
        result = run_unit(ctx, unit)
        write_json_atomic(out / "units" / f"{unit.name}.json", result)
        if unit.kind in TRAINED_KINDS:
            step_logs.keep(out, ctx.work / "runs" / unit.name, unit.name)
        ran += 1
    return load_units(out)


def run_unit(ctx: Context, unit: Unit) -> dict[str, Any]:
    """Train one unit's run(s) and score them; the unit's JSON body."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    body: dict[str, Any] = {"unit": asdict(unit), "protocol": cfg.hash, "env": ctx.env,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if unit.method in ctx.arms:
        body["arm"] = asdict(ctx.arms[unit.method])
    if unit.kind == "none":
        body.update(runs=[], points=score_none(ctx))
    elif unit.kind in ("grid", "theta-grid"):
        body.update(_grid_unit(ctx, unit))
    elif unit.method in PER_CONFIG:
        run_row, points = _per_config_run(ctx, unit, unit.budget)
        body.update(runs=[run_row], points=points)
    else:
        run_row, points = _shared_run(ctx, unit)
        body.update(runs=[run_row], points=points)
    body["unit_seconds"] = time.perf_counter() - t0
    return body


def _trainer(ctx: Context, tc: TrainConfig, tag: str) -> Trainer:
    from coalora.train.trainer import Trainer

    return Trainer(tc, ctx.work / "runs" / tag, log=ctx.log, progress=ctx.progress)


def _run_row(unit: Unit, tc: TrainConfig, state: TrainState, setup_seconds: float, budget: float | None,
             lq_seconds: float = 0.0) -> dict[str, Any]:
    """One run's row of the unit's ``runs``: its recipe, compute and trained configuration hashes."""
    return {"method": unit.method, "seed": unit.seed, "budget": budget, "lr": tc.lr,
            "theta_lr_scale": tc.theta_lr_scale if tc.use_theta else None, "scale": unit.scale,
            "steps": tc.steps, "token_passes": state.tokens, "probe_tokens": state.probe_tokens,
            "train_seconds": state.seconds, "search_seconds": state.search_seconds, "setup_seconds": setup_seconds,
            "lq_seconds": lq_seconds, "train_config_hashes": list(state.trained_on)}


def _timed_run(tr: Trainer) -> tuple[TrainState, float]:
    """Run a trainer; returns (state, seconds outside its loop: loading, tables, LQ decompositions)."""
    t0 = time.perf_counter()
    state = tr.run()
    return state, max(0.0, time.perf_counter() - t0 - state.seconds)


def _train_per_config(ctx: Context, unit: Unit, budget: float, grid: bool) -> tuple[dict[str, Any], Trainer,
                                                                                     dict[str, Any]]:
    """Train a per-configuration run at ``budget``; (its run row, the trainer, the budget's eval entry).

    Refuses a run whose configuration is not the protocol's at that budget."""
    tc = train_config(ctx.cfg, unit, budget, grid)
    tr = _trainer(ctx, tc, unit.name if not grid else f"{unit.name}-{fmt(budget)}")
    state, setup = _timed_run(tr)
    (own,) = tr.training_configs()
    entry = next((e for e in ctx.eval_configs if e["role"] == "budget" and e["budget"] == budget), None)
    if entry is None or entry["hash"] != own.hash:
        raise CoaloraError(f"{unit.name}: its configuration at {budget} bits is not the protocol's "
                           "(another error table or allocator?); rerun the protocol in a fresh --out")
    return _run_row(unit, tc, state, setup, budget, tr.lq_seconds), tr, entry


def _per_config_run(ctx: Context, unit: Unit, budget: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A headline per-configuration unit: its run, scored at its own configuration (``own``)."""
    row, tr, entry = _train_per_config(ctx, unit, budget, grid=False)
    points = [score_point(ctx, unit, tr.coa, tr.config(entry["ids"]), entry, set(row["train_config_hashes"]),
                          per_config=True)]
    return row, points


def _shared_run(ctx: Context, unit: Unit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A shared-adapter unit (headline, arm or compute curve): its run, scored at every evaluation configuration."""
    tc = train_config(ctx.cfg, unit, arm=ctx.arms.get(unit.method))
    tr = _trainer(ctx, tc, unit.name)
    state, setup = _timed_run(tr)
    row = _run_row(unit, tc, state, setup, None)
    trained = set(row["train_config_hashes"])
    points = [score_point(ctx, unit, tr.coa, tr.config(e["ids"]), e, trained, theta=tc.use_theta)
              for e in ctx.eval_configs]
    return row, points


def _grid_unit(ctx: Context, unit: Unit) -> dict[str, Any]:
    """A short run at one rate, scored on the validation split (never on held-out text)."""
    cfg = ctx.cfg
    runs, scores = [], []
    if unit.method in PER_CONFIG:
        for b in cfg.grid_budgets:
            row, tr, entry = _train_per_config(ctx, unit, b, grid=True)
            runs.append(row)
            (own,) = tr.training_configs()
            scores.append(validation_nll(tr.coa, tr.validation, [own], theta=False))
            del tr
    else:
        tc = train_config(cfg, unit, grid=True)
        tr = _trainer(ctx, tc, unit.name)
        state, setup = _timed_run(tr)
        runs.append(_run_row(unit, tc, state, setup, None))
        configs = [tr.config(e["ids"]) for e in ctx.eval_configs if e["role"] == "budget"]
        scores.append(validation_nll(tr.coa, tr.validation, configs, theta=tc.use_theta))
    nll = float(np.mean(scores))
    ctx.log(f"grid {unit.name}: validation nll {nll:.4f} (ppl {math.exp(nll):.3f})")
    return {"runs": runs, "points": [], "validation_nll": nll, "lr": unit.lr, "theta_lr_scale": unit.theta_lr_scale,
            "validation_scores": scores}
