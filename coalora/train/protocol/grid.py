"""The learning-rate and theta-rate grids, tuned on the validation split (method.md 6).

Every trained method runs short grid units at each rate of ``lr_grid`` (theta at 10x); coalora then
runs ``theta_grid`` at its best rate. A grid whose best finished value lies on its edge grows past
that edge (:func:`extended`), since a rate chosen on the edge is not tuned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from coalora.train.protocol.config import METHODS, ProtocolConfig
from coalora.train.protocol.units import Unit, fmt

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


THETA_DEFAULT = 10.0
"""theta's rate multiple in the lr grid (the theta grid's run at this multiple is the lr grid's)."""


def lr_name(m: str, lr: float) -> str:
    """The lr-grid unit name of method ``m`` at ``lr``."""
    return f"grid-{m}-lr{fmt(lr)}"


def theta_name(lr: float, s: float) -> str:
    """The theta-grid unit name of coalora at ``lr`` and theta multiple ``s`` (10x: the lr grid's unit)."""
    return f"grid-coalora-lr{fmt(lr)}" if s == THETA_DEFAULT else f"grid-coalora-lr{fmt(lr)}-theta{fmt(s)}"


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
        lrs = extended(cfg.lr_grid, lambda lr, m=m: _grid_score(done, lr_name(m, lr)))
        units += [Unit(lr_name(m, lr), "grid", m, 0, lr) for lr in lrs]
    return units


def theta_units(cfg: ProtocolConfig, lr: float, done: dict[str, dict] | None = None) -> list[Unit]:
    """theta's rate grid for coalora at its chosen lr (the 10x point is the lr grid's run), grown past a winning edge."""
    done = done or {}
    scales = extended(tuple(sorted(set(cfg.theta_grid) | {THETA_DEFAULT})), lambda s: _grid_score(done, theta_name(lr, s)))
    return [Unit(theta_name(lr, s), "theta-grid", "coalora", 0, lr, s) for s in scales if s != THETA_DEFAULT]


def best_row(rows: list[dict]) -> dict:
    """The finished grid unit with the lowest validation NLL."""
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
        rates[m] = (best_row(rows)["lr"], THETA_DEFAULT)
    lr = rates["coalora"][0]
    th = [done.get(u.name) for u in theta_units(cfg, lr, done)]
    if any(r is None for r in th):
        return None
    rates["coalora"] = (lr, best_row([done[theta_name(lr, THETA_DEFAULT)], *th])["theta_lr_scale"])
    return rates
