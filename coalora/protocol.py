"""The equal-compute, multi-seed comparison protocol (`coalora compare`; method.md 6).

Every method gets the same training compute, counted in **token-passes** (forward + backward over
training tokens, summed over configurations: ``steps * batch * seqlen * configurations per step``):
the six per-configuration runs of QLoRA / LQ-LoRA together, CoA-LoRA's one run, its theta-off
ablation's one run and Shared-LoRA's one run all spend ``C = len(budgets) * per_config_steps *
batch * seqlen``. CoA-LoRA and Shared-LoRA are also run at ``compute_scales`` times C.

Methods (the names every file uses):

* ``coalora``: theta + shared LoRA, K configurations per step, Pareto search every ``search_every``;
* ``coalora-theta-off``: the same run with U = I (same data, sampling, search and compute);
* ``shared``: one plain LoRA over CoA-LoRA's initial training set (the allocator's solutions at
  ``initial_budgets`` budgets), one configuration per step, no search;
* ``qlora`` / ``lqlora``: one adapter per evaluation budget on that budget's configuration;
* ``none``: the quantized model alone.

Evaluation configurations are fixed for the whole protocol (``eval_configs.json``): the allocator's
solution at each budget, members of the initial training set nearest to each budget, and random
configurations far from it. Each scored point is labelled against **its own run's** training set
(the hashes its steps took gradients on): ``own`` (a per-configuration run on its configuration),
``seen``, ``unseen``, ``ood``. Points are scored by perplexity and KL to the unquantized model
under one eval spec, with per-window sums kept for the intervals (:mod:`coalora.protocol_report`).

Learning rates come from a grid of short runs scored on a validation split carved from the
training plays (``TrainConfig.validation_windows``), never on the held-out plays.

Work is split into **units** (one training run and its scoring, minutes each); a finished unit is a
small JSON file under ``<out>/units/``, so the protocol resumes unit by unit across sessions, and
an interrupted unit resumes from its checkpoint under ``$COALORA_HOME/protocol``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from coalora.errors import CoaloraError

METHODS = ("coalora", "coalora-theta-off", "shared", "qlora", "lqlora", "none")
SHARED_ADAPTER = ("coalora", "coalora-theta-off", "shared")
PER_CONFIG = ("qlora", "lqlora")


@dataclass(frozen=True)
class ProtocolConfig:
    """What the protocol trains and scores; its hash keys every unit, so units of different
    protocols never mix."""

    model: str = "smollm2-135m"
    """Model to quantize (an offline name from `coalora models`)."""
    corpus: str = "shakespeare"
    """Training corpus (its train split; the validation split is carved from its end)."""
    eval_corpus: str = "shakespeare"
    """Evaluation corpus (its eval split: the four held-out plays for Shakespeare)."""
    budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
    """Evaluation budgets (average bits): one per-configuration run each, one unseen point each."""
    per_config_steps: int = 50
    """Steps of each per-configuration run; sets the headline compute C (six runs' token-passes)."""
    rank: int = 8
    """LoRA rank of every method."""
    seqlen: int = 128
    """Training window length in tokens."""
    batch_size: int = 4
    """Training windows per step."""
    configs_per_step: int = 2
    """K, configurations per CoA-LoRA step (its steps are C / (batch * seqlen * K))."""
    search_every: int = 50
    """CoA-LoRA's steps between search rounds (both coalora arms)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every method at the headline compute."""
    compute_scales: tuple[float, ...] = (0.5, 2.0)
    """Other multiples of C for the compute curve (coalora and shared)."""
    scale_seeds: tuple[int, ...] = (0,)
    """Seeds of the compute-curve runs."""
    lr_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    """Learning rates tried for every method's A, B on the validation split."""
    theta_grid: tuple[float, ...] = (3.0, 10.0, 30.0)
    """theta's rate multiples tried for coalora at its best rate (the first lr grid uses 10)."""
    grid_budgets: tuple[float, ...] = (2.5, 4.0)
    """Budgets of the per-configuration grid runs; a shared-adapter grid run spends the same
    compute (len(grid_budgets) * per_config_steps steps' worth), a third of C by default."""
    validation_windows: int = 32
    """Training windows (of `seqlen`) held out as the validation split, in every run."""
    eval_spec: str = "strided-v1"
    """Eval spec of every scored point (coalora.evalspec)."""
    eval_windows: int = 16
    """Held-out windows per scored point (spread evenly over the held-out plays)."""
    eval_seqlen: int = 256
    """Held-out window length in tokens."""
    seen: int = 6
    """Initial-training-set configurations scored (nearest to each budget)."""
    ood: int = 10
    """Random configurations far from the initial training set."""
    hv_bits_ref: float = 7.25
    """Hypervolume reference point's bits."""
    hv_ppl_ref: float = 1000.0
    """Hypervolume reference point's perplexity (worse points add nothing)."""

    def __post_init__(self) -> None:
        for name in ("per_config_steps", "rank", "seqlen", "batch_size", "configs_per_step", "search_every",
                     "eval_windows", "eval_seqlen", "seen"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CoaloraError(f"{name} must be a positive integer, got {v!r}")
        if not self.seeds or not self.lr_grid or not self.budgets:
            raise CoaloraError("seeds, lr_grid and budgets must not be empty")
        if sorted(set(self.budgets)) != list(self.budgets):
            raise CoaloraError("budgets must be increasing and distinct")
        if self.ood < 0 or self.validation_windows < 1:
            raise CoaloraError("ood must be >= 0 and validation_windows >= 1")
        for s in self.compute_scales:
            steps = self.per_config_steps * len(self.budgets) * s / self.configs_per_step
            if not (s > 0 and abs(steps - round(steps)) < 1e-9):
                raise CoaloraError(f"compute scale {s} does not give a whole number of CoA-LoRA steps")

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProtocolConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seqlen

    @property
    def headline_compute(self) -> int:
        """C: the per-configuration runs' token-passes summed over the budgets."""
        return len(self.budgets) * self.per_config_steps * self.tokens_per_step

    def steps_for(self, method: str, scale: float = 1.0, grid: bool = False) -> int:
        """Training steps of one run of ``method`` (per budget for the per-configuration methods)."""
        if method in PER_CONFIG:
            return self.per_config_steps
        k = self.configs_per_step if method.startswith("coalora") else 1
        runs = len(self.grid_budgets) if grid else len(self.budgets) * scale
        return int(round(runs * self.per_config_steps / k))


@dataclass(frozen=True)
class Unit:
    """One training run and its scoring."""

    name: str
    kind: str
    """``grid`` (validation split only), ``theta-grid``, ``headline``, ``arm``, ``scale`` or ``none``."""
    method: str
    seed: int = 0
    lr: float = 0.0
    theta_lr_scale: float = 10.0
    scale: float = 1.0
    budget: float | None = None
    """Per-configuration headline units: the budget; grid units: None (all grid budgets)."""


# --------------------------------------------------------------------------------------------
# the schedule of units


def _fmt(x: float) -> str:
    return f"{x:g}"


MAX_EXTENSIONS = 2
"""How many steps a grid may grow past its edge when its best value lies on that edge."""


def extended(values: tuple[float, ...], score: Callable[[float], float | None]) -> list[float]:
    """A grid grown past its edge while the best finished value lies on it.

    ``values`` is the configured grid; ``score`` gives a value's validation NLL (None: not
    finished). While every value of the current grid is finished and the best is the largest
    (smallest), the next half-decade value up (down) is added (1 and 3 times a power of ten: 3e-3 ->
    1e-2, 3e-4 -> 1e-4), at most :data:`MAX_EXTENSIONS` times: a rate chosen on the grid's edge is
    not tuned.
    """
    grid = sorted(values)
    if len(grid) < 2:
        return grid
    for _ in range(MAX_EXTENSIONS):
        rows = [score(v) for v in grid]
        if any(r is None for r in rows):
            break
        best = grid[int(np.argmin(rows))]
        if best == grid[-1]:
            grid.append(half_decade(grid[-1], up=True))
        elif best == grid[0]:
            grid.insert(0, half_decade(grid[0], up=False))
        else:
            break
    return grid


def half_decade(v: float, up: bool) -> float:
    """The next value above (below) ``v`` among 1 x 10^k and 3 x 10^k."""
    k = math.floor(math.log10(v) + 1e-9)
    ladder = [c * 10.0 ** e for e in (k - 1, k, k + 1) for c in (1, 3)]
    pick = min(x for x in ladder if x > v * (1 + 1e-9)) if up else max(x for x in ladder if x < v * (1 - 1e-9))
    return float(f"{pick:.3g}")


def _lr_name(m: str, lr: float) -> str:
    return f"grid-{m}-lr{_fmt(lr)}"


def _theta_name(lr: float, s: float) -> str:
    return f"grid-coalora-lr{_fmt(lr)}" if s == 10.0 else f"grid-coalora-lr{_fmt(lr)}-theta{_fmt(s)}"


def _grid_score(done: dict[str, dict], name: str) -> float | None:
    row = done.get(name)
    return None if row is None else row["validation_nll"]


def grid_units(cfg: ProtocolConfig, done: dict[str, dict] | None = None) -> list[Unit]:
    """The learning-rate grid of every trained method (theta at 10x), grown past an edge that wins."""
    done = done or {}
    units = []
    for m in METHODS:
        if m == "none":
            continue
        lrs = extended(cfg.lr_grid, lambda lr, m=m: _grid_score(done, _lr_name(m, lr)))
        units += [Unit(_lr_name(m, lr), "grid", m, 0, lr) for lr in lrs]
    return units


def theta_units(cfg: ProtocolConfig, lr: float, done: dict[str, dict] | None = None) -> list[Unit]:
    """theta's rate grid for coalora at its chosen lr (the 10x point is the lr grid's run), grown past a winning edge."""
    done = done or {}
    scales = extended(tuple(sorted(set(cfg.theta_grid) | {10.0})), lambda s: _grid_score(done, _theta_name(lr, s)))
    return [Unit(_theta_name(lr, s), "theta-grid", "coalora", 0, lr, s) for s in scales if s != 10.0]


def _best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["validation_nll"])


def chosen_rates(cfg: ProtocolConfig, done: dict[str, dict]) -> dict[str, tuple[float, float]] | None:
    """Each method's (lr, theta scale) from the finished grid, or None while the grid is incomplete."""
    rates: dict[str, tuple[float, float]] = {}
    grid = grid_units(cfg, done)
    for m in METHODS:
        if m == "none":
            continue
        rows = [done.get(u.name) for u in grid if u.method == m]
        if any(r is None for r in rows):
            return None
        rates[m] = (_best(rows)["lr"], 10.0)
    lr = rates["coalora"][0]
    th = [done.get(u.name) for u in theta_units(cfg, lr, done)]
    if any(r is None for r in th):
        return None
    rates["coalora"] = (lr, _best([done[_theta_name(lr, 10.0)], *th])["theta_lr_scale"])
    return rates


@dataclass(frozen=True)
class Arm:
    """A CoA-LoRA variant measured under the protocol (an ablation row): coalora's recipe and rates
    with some :class:`~coalora.train.TrainConfig` options changed, at the same compute and seeds."""

    name: str
    options: dict[str, Any]
    why: str = ""
    seeds: tuple[int, ...] = ()
    """The headline seeds it runs at; empty: all of them. A screening arm runs at one seed and is
    repeated at the others only if it earns a place in the recipe."""

    @property
    def method(self) -> str:
        return f"coalora+{self.name}"


FIXED_BY_PROTOCOL = ("model", "method", "corpus", "seqlen", "batch_size", "steps", "seed", "validation_windows",
                     "lr", "checkpoint_every", "budgets")
"""Options an arm may not change. ``theta`` is not among them: an arm's recipe with ``theta: false`` is
that recipe's own theta-off ablation (issue 16 asks theta to beat it)."""


def check_arm(arm: Arm) -> Arm:
    """Refuse arms that would leave the protocol (another compute, data or seed) or name unknown options."""
    from coalora.train import TrainConfig

    if not arm.name or not all(ch.isalnum() or ch in "-_." for ch in arm.name) or len(arm.name) > 40:
        raise CoaloraError(f"arm name {arm.name[:40]!r} must be 1-40 letters, digits, '-', '_' or '.'")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in arm.seeds):
        raise CoaloraError(f"arm {arm.name}: seeds must be non-negative integers, got {list(arm.seeds)[:8]}")
    known = {f.name for f in fields(TrainConfig)}
    for k in arm.options:
        if k not in known:
            raise CoaloraError(f"arm {arm.name}: unknown training option {k!r}")
        if k in FIXED_BY_PROTOCOL:
            raise CoaloraError(f"arm {arm.name}: {k} is fixed by the protocol (equal compute, same data and seeds)")
    TrainConfig(**{**arm.options, "model": "tiny-llama"})  # validates the values
    return arm


def load_arms(out: Path) -> list[Arm]:
    """The arms registered in ``<out>/arms.json`` (none if absent)."""
    p = Path(out) / "arms.json"
    if not p.is_file():
        return []
    try:
        rows = json.loads(p.read_text())["arms"]
        return [check_arm(Arm(r["name"], dict(r["options"]), r.get("why", ""), tuple(r.get("seeds", ()))))
                for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CoaloraError(f"{p} is not a list of protocol arms ({type(e).__name__}); fix or delete it") from None


def add_arm(out: str | os.PathLike, arm: Arm) -> list[Arm]:
    """Register ``arm`` in ``<out>/arms.json`` (replacing one of the same name with no finished units)."""
    from coalora.files import write_json_atomic

    out = Path(out)
    check_arm(arm)
    arms = [a for a in load_arms(out) if a.name != arm.name]
    old = next((a for a in load_arms(out) if a.name == arm.name), None)
    if old is not None and old.options != arm.options and any((out / "units").glob(f"arm-{arm.name}-s*.json")):
        raise CoaloraError(f"arm {arm.name} already has results with other options; choose another name")
    arms.append(arm)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "arms.json", {"arms": [asdict(a) for a in arms]})
    return arms


def schedule(cfg: ProtocolConfig, done: dict[str, dict], arms: list[Arm] | None = None) -> list[Unit]:
    """Every unit the protocol needs that is known now, in the order they should run: the lr grid,
    the theta grid at coalora's best rate, the headline seed by seed (each seed followed by the
    registered arms at that seed), then the compute curve."""
    units = grid_units(cfg, done)
    lr_rows = [done.get(u.name) for u in units if u.method == "coalora"]
    if all(r is not None for r in lr_rows):
        units += theta_units(cfg, _best(lr_rows)["lr"], done)
    rates = chosen_rates(cfg, done)
    if rates is None:
        return units
    units.append(Unit("none", "none", "none"))
    for seed in cfg.seeds:
        for m in ("coalora", "coalora-theta-off", "shared"):
            lr, th = rates[m]
            units.append(Unit(f"{m}-s{seed}", "headline", m, seed, lr, th))
        for m in PER_CONFIG:
            for b in cfg.budgets:
                units.append(Unit(f"{m}-{_fmt(b)}-s{seed}", "headline", m, seed, rates[m][0], 10.0, 1.0, b))
        lr, th = rates["coalora"]
        for arm in arms or []:
            if arm.seeds and seed not in arm.seeds:
                continue
            units.append(Unit(f"arm-{arm.name}-s{seed}", "arm", arm.method, seed, lr, th))
    for scale in cfg.compute_scales:
        for seed in cfg.scale_seeds:
            for m in ("coalora", "shared"):
                lr, th = rates[m]
                units.append(Unit(f"{m}-x{_fmt(scale)}-s{seed}", "scale", m, seed, lr, th, scale))
    return units


# --------------------------------------------------------------------------------------------
# running


@dataclass
class Context:
    """What every unit shares: evaluation configurations, windows and the KL reference's key."""

    cfg: ProtocolConfig
    out: Path
    work: Path
    eval_configs: list[dict[str, Any]]
    """``{"role": "budget"|"seen"|"ood", "budget": b | None, "hash", "avg_bits", "ids"}``."""
    reference_key: str
    windows: Any
    """The :class:`~coalora.evalspec.EvalWindows` every point is scored on."""
    reference: Any
    """The cached :class:`~coalora.reference.Reference` of those windows (opened once, read by every unit)."""
    log: Callable[[str], None] = print
    progress: bool = True
    env: dict[str, Any] = field(default_factory=dict)
    arms: dict[str, Arm] = field(default_factory=dict)
    """Registered arms by method name."""


def versions() -> dict[str, str]:
    """Versions a result depends on (recorded in every unit)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "botorch", "gpytorch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    from coalora import __version__

    out["coalora"] = __version__
    try:
        here = Path(__file__).resolve().parent.parent
        out["git"] = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git"] = "unknown"
    return out


def train_config(cfg: ProtocolConfig, unit: Unit, budget: float | None = None, grid: bool = False,
                 arm: Arm | None = None):
    """The :class:`~coalora.train.TrainConfig` of one run of ``unit`` (an arm's: coalora's with its options)."""
    from coalora.train import TrainConfig

    if arm is not None:
        base = train_config(cfg, Unit(unit.name, unit.kind, "coalora", unit.seed, unit.lr, unit.theta_lr_scale,
                                      unit.scale), grid=grid)
        tc = TrainConfig.from_dict({**base.to_dict(), **arm.options})
        # Equal compute: K may change, so the steps follow it.
        steps = int(round(base.token_passes / (tc.batch_size * tc.seqlen * tc.configs_each_step)))
        return TrainConfig.from_dict({**tc.to_dict(), "steps": steps})

    common = dict(model=cfg.model, corpus=cfg.corpus, rank=cfg.rank, seqlen=cfg.seqlen, batch_size=cfg.batch_size,
                  lr=unit.lr, seed=unit.seed, validation_windows=cfg.validation_windows, init="peft",
                  checkpoint_every=25)
    steps = cfg.steps_for(unit.method, unit.scale, grid)
    if unit.method in ("coalora", "coalora-theta-off"):
        return TrainConfig(method="coalora", theta=unit.method == "coalora", steps=steps,
                           configs_per_step=cfg.configs_per_step, theta_lr_scale=unit.theta_lr_scale,
                           search_every=cfg.search_every, **common)
    if unit.method == "shared":
        return TrainConfig(method="shared", steps=steps, **common)
    if unit.method == "qlora":
        return TrainConfig(method="qlora", budgets=(budget,), steps=steps, **common)
    if unit.method == "lqlora":
        return TrainConfig(method="lqlora", budgets=(budget,), steps=steps, **{**common, "init": "lq"})
    raise CoaloraError(f"no training for method {unit.method!r}")


def prepare(cfg: ProtocolConfig, out: Path, log: Callable[[str], None] = print, progress: bool = True) -> Context:
    """Fix the evaluation configurations (``<out>/eval_configs.json``, made once) and build the
    KL reference of the unquantized model on the eval windows (cached)."""
    from coalora import assets, reference
    from coalora.allocate import allocate_many
    from coalora.compare import far_random_configs
    from coalora.config import ALL_CONFIGS, ModelQuantConfig
    from coalora.evaluate import eval_windows
    from coalora.files import write_json_atomic
    from coalora.models import find_targets, load_model
    from coalora.sensitivity import model_error_table, weights_fingerprint
    from coalora.train import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    (out / "units").mkdir(exist_ok=True)
    saved = out / "protocol.json"
    if saved.is_file():
        old = ProtocolConfig.from_dict(json.loads(saved.read_text())["config"])
        if old.hash != cfg.hash:
            diff = [k for k, v in cfg.to_dict().items() if old.to_dict().get(k) != v]
            raise CoaloraError(f"{out} holds protocol {old.hash}, not {cfg.hash} (differs in {', '.join(diff)}); "
                               "use another --out or the same options")
    model, tok = load_model(cfg.model)
    targets = find_targets(model)
    wh = weights_fingerprint(model, targets)
    ew = eval_windows(tok, corpus=cfg.eval_corpus, seqlen=cfg.eval_seqlen, windows=cfg.eval_windows, spec=cfg.eval_spec)
    ref_key = reference.key(cfg.model, wh, ew.key)
    ref = reference.build(model, ew.windows, ref_key, progress=progress)
    if not ref.cached:
        raise CoaloraError("the protocol's KL reference is too large to cache; lower eval_windows")
    cpath = out / "eval_configs.json"
    if cpath.is_file():
        configs = json.loads(cpath.read_text())["configs"]
    else:
        tc = TrainConfig(model=cfg.model)
        table = model_error_table(model, cfg.model, targets, tc.weighting, tokenizer=tok, progress=progress).numpy()
        numels, bits = [t.numel for t in targets], [c.bits for c in ALL_CONFIGS]
        initial_budgets = np.linspace(tc.budget_lo, tc.budget_hi, tc.initial_budgets).tolist()
        initial = [ModelQuantConfig.from_ids(cfg.model, targets, list(a.choice))
                   for a in allocate_many(table, numels, bits, initial_budgets, method="fast")]
        at_budget = [ModelQuantConfig.from_ids(cfg.model, targets, list(a.choice))
                     for a in allocate_many(table, numels, bits, list(cfg.budgets), method="fast")]
        configs = [{"role": "budget", "budget": b, "config": c} for b, c in zip(cfg.budgets, at_budget)]
        taken = {c.hash for c in at_budget}
        for b in cfg.budgets[: cfg.seen]:
            best = min((c for c in initial if c.hash not in taken), key=lambda c: abs(c.avg_bits - b))
            taken.add(best.hash)
            configs.append({"role": "seen", "budget": None, "config": best})
        train_ids = np.array([list(c.ids) for c in initial])
        for ids in far_random_configs(numels, train_ids, cfg.ood, seed=0):
            configs.append({"role": "ood", "budget": None, "config": ModelQuantConfig.from_ids(cfg.model, targets, ids)})
        configs = [{"role": e["role"], "budget": e["budget"], "hash": e["config"].hash,
                    "avg_bits": e["config"].avg_bits, "ids": list(e["config"].ids)} for e in configs]
        write_json_atomic(cpath, {"protocol": cfg.hash, "initial_set": [c.hash for c in initial], "configs": configs})
    write_json_atomic(saved, {"config": cfg.to_dict(), "hash": cfg.hash, "headline_compute": cfg.headline_compute,
                              "eval_windows": {"spec": ew.spec, "dataset": ew.dataset, "key": ew.key,
                                               "positions": [list(p) for p in ew.positions]}})
    work = assets.home() / "protocol" / cfg.hash
    return Context(cfg, out, work, configs, ref_key, ew, ref, log, progress, versions())


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
        from coalora.files import write_json_atomic

        write_json_atomic(out / "units" / f"{unit.name}.json", result)
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
        body.update(runs=[], points=_score_none(ctx))
    elif unit.kind in ("grid", "theta-grid"):
        body.update(_grid_unit(ctx, unit))
    elif unit.method in PER_CONFIG:
        run_row, points = _per_config_run(ctx, unit, unit.budget, grid=False)
        body.update(runs=[run_row], points=points)
    else:
        run_row, points = _shared_run(ctx, unit)
        body.update(runs=[run_row], points=points)
    body["unit_seconds"] = time.perf_counter() - t0
    return body


def _trainer(ctx: Context, unit: Unit, tc, tag: str):
    from coalora.train import Trainer

    return Trainer(tc, ctx.work / "runs" / tag, log=ctx.log, progress=ctx.progress)


def _run_row(unit: Unit, tc, state, setup_seconds: float, budget: float | None, lq_seconds: float = 0.0) -> dict[str, Any]:
    return {"method": unit.method, "seed": unit.seed, "budget": budget, "lr": tc.lr,
            "theta_lr_scale": tc.theta_lr_scale if unit.method == "coalora" else None, "scale": unit.scale,
            "steps": tc.steps, "token_passes": state.tokens, "probe_tokens": state.probe_tokens,
            "train_seconds": state.seconds, "search_seconds": state.search_seconds, "setup_seconds": setup_seconds,
            "lq_seconds": lq_seconds, "train_config_hashes": list(state.trained_on)}


def _timed_run(tr):
    """Run a trainer; returns (state, seconds outside its loop: loading, tables, LQ decompositions)."""
    t0 = time.perf_counter()
    state = tr.run()
    return state, max(0.0, time.perf_counter() - t0 - state.seconds)


def _per_config_run(ctx: Context, unit: Unit, budget: float, grid: bool):
    from coalora.config import ModelQuantConfig

    tc = train_config(ctx.cfg, unit, budget, grid)
    tr = _trainer(ctx, unit, tc, f"{unit.name}" if not grid else f"{unit.name}-{_fmt(budget)}")
    state, setup = _timed_run(tr)
    own = ModelQuantConfig.from_ids(ctx.cfg.model, tr.targets, tr.state.train_set[0])
    entry = next((e for e in ctx.eval_configs if e["role"] == "budget" and e["budget"] == budget), None)
    if entry is None or entry["hash"] != own.hash:
        raise CoaloraError(f"{unit.name}: its configuration at {budget} bits is not the protocol's "
                           "(another error table or allocator?); rerun the protocol in a fresh --out")
    row = _run_row(unit, tc, state, setup, budget, tr.lq_seconds)
    if grid:
        return row, tr, own
    points = [_score(ctx, unit, tr, ModelQuantConfig.from_ids(ctx.cfg.model, tr.targets, entry["ids"]), entry,
                     set(row["train_config_hashes"]), per_config=True)]
    return row, points


def _shared_run(ctx: Context, unit: Unit):
    from coalora.config import ModelQuantConfig

    tc = train_config(ctx.cfg, unit, arm=ctx.arms.get(unit.method))
    tr = _trainer(ctx, unit, tc, unit.name)
    state, setup = _timed_run(tr)
    row = _run_row(unit, tc, state, setup, None)
    trained = set(row["train_config_hashes"])
    points = [_score(ctx, unit, tr, ModelQuantConfig.from_ids(ctx.cfg.model, tr.targets, e["ids"]), e, trained,
                     theta=tc.use_theta) for e in ctx.eval_configs]
    return row, points


def _apply(tr, method: str, qc) -> None:
    import torch

    tr.coa.eval()
    tr.coa.set_merge(True)
    with torch.no_grad():
        if method == "coalora":
            tr.coa.set_config(qc)
        else:
            tr.coa.applier.apply(qc)
            for layer in tr.coa.layers.values():
                layer.U = None


def kind_of(entry: dict[str, Any], trained: set[str], per_config: bool = False) -> str:
    """A point's label against its run's training set: ``own``, ``seen``, ``ood`` or ``unseen``."""
    if per_config:
        return "own"
    if entry["hash"] in trained:
        return "seen"
    return "ood" if entry["role"] == "ood" else "unseen"


def _score(ctx: Context, unit: Unit, tr, qc, entry: dict[str, Any], trained: set[str],
           per_config: bool = False, theta: bool = False) -> dict[str, Any]:
    from coalora.evaluate import perplexity

    ew, ref = ctx.windows, ctx.reference
    _apply(tr, "coalora" if theta else "plain", qc)
    r = perplexity(tr.coa.model, ew.windows, batch_size=4, progress=False, reference=ref, spec=ew.spec,
                   dataset=ew.dataset)
    kind = kind_of(entry, trained, per_config)
    ctx.log(f"{unit.method:17s} s{unit.seed} {kind:6s} {qc.avg_bits:.3f} bits: ppl {r.ppl:.3f} kld {r.kld:.4f}")
    return {"method": unit.method, "seed": unit.seed, "kind": kind, "role": entry["role"], "budget": entry["budget"],
            "avg_bits": qc.avg_bits, "config_hash": qc.hash, "ppl": r.ppl, "nll": r.nll, "kld": r.kld,
            "tokens": r.tokens, "windows": r.windows, "eval_spec": r.spec, "dataset": r.dataset,
            "window_nll": list(r.window_nll), "window_kld": list(r.window_kld), "scale": unit.scale}


def _score_none(ctx: Context) -> list[dict[str, Any]]:
    """The quantized model alone on every evaluation configuration (deterministic: one seed)."""
    from coalora.adapter import AdapterConfig, CoALoRAModel
    from coalora.config import ModelQuantConfig
    from coalora.models import find_targets, load_model

    model, tok = load_model(ctx.cfg.model)
    targets = find_targets(model)
    coa = CoALoRAModel(model, ctx.cfg.model, targets, AdapterConfig(rank=ctx.cfg.rank, init="peft"))

    class _Bare:  # the scoring path's view of a trainer
        pass

    tr = _Bare()
    tr.coa, tr.tok, tr.targets = coa, tok, targets
    unit = Unit("none", "none", "none")
    points = []
    with coa.disabled():
        for e in ctx.eval_configs:
            qc = ModelQuantConfig.from_ids(ctx.cfg.model, targets, e["ids"])
            points.append(_score(ctx, unit, tr, qc, e, set()))
    return points


def _validation_nll(tr, method: str, configs) -> float:
    """Mean token NLL over the run's validation split, averaged over ``configs``."""
    from coalora.evaluate import perplexity

    vals = []
    for qc in configs:
        _apply(tr, method, qc)
        vals.append(perplexity(tr.coa.model, tr.validation, batch_size=4, progress=False).nll)
    tr.coa.set_merge(False)
    return float(np.mean(vals))


def _grid_unit(ctx: Context, unit: Unit) -> dict[str, Any]:
    """A short run at one rate, scored on the validation split (never on held-out text)."""
    from coalora.config import ModelQuantConfig

    cfg = ctx.cfg
    runs, scores = [], []
    if unit.method in PER_CONFIG:
        for b in cfg.grid_budgets:
            row, tr, own = _per_config_run(ctx, unit, b, grid=True)
            runs.append(row)
            scores.append(_validation_nll(tr, unit.method, [own]))
            del tr
    else:
        tc = train_config(cfg, unit, grid=True)
        tr = _trainer(ctx, unit, tc, unit.name)
        state, setup = _timed_run(tr)
        runs.append(_run_row(unit, tc, state, setup, None))
        configs = [ModelQuantConfig.from_ids(cfg.model, tr.targets, e["ids"])
                   for e in ctx.eval_configs if e["role"] == "budget"]
        scores.append(_validation_nll(tr, "coalora" if tc.use_theta else "plain", configs))
    nll = float(np.mean(scores))
    ctx.log(f"grid {unit.name}: validation nll {nll:.4f} (ppl {math.exp(nll):.3f})")
    return {"runs": runs, "points": [], "validation_nll": nll, "lr": unit.lr, "theta_lr_scale": unit.theta_lr_scale,
            "validation_scores": scores}
