"""The order of the protocol's units (method.md 6): grids, headline seeds with their arms, compute curve."""

from __future__ import annotations

from coalora.train.protocol.arms import Arm
from coalora.train.protocol.config import PER_CONFIG, ProtocolConfig
from coalora.train.protocol.grid import THETA_DEFAULT, best_row, chosen_rates, grid_units, theta_units
from coalora.train.protocol.units import Unit, fmt


def schedule(cfg: ProtocolConfig, done: dict[str, dict], arms: list[Arm] | None = None) -> list[Unit]:
    """Every unit the protocol needs that is known now, in the order they should run: the lr grid,
    the theta grid at coalora's best rate, the headline seed by seed (each seed followed by the
    registered arms at that seed), then the compute curve."""
    units = grid_units(cfg, done)
    lr_rows = [done.get(u.name) for u in units if u.method == "coalora"]
    if all(r is not None for r in lr_rows):
        units += theta_units(cfg, best_row(lr_rows)["lr"], done)
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
                units.append(Unit(f"{m}-{fmt(b)}-s{seed}", "headline", m, seed, rates[m][0], THETA_DEFAULT, 1.0, b))
        lr, th = rates["coalora"]
        for arm in arms or []:
            if arm.seeds and seed not in arm.seeds:
                continue
            units.append(Unit(f"arm-{arm.name}-s{seed}", "arm", arm.method, seed, lr, th))
    for scale in cfg.compute_scales:
        for seed in cfg.scale_seeds:
            for m in ("coalora", "shared"):
                lr, th = rates[m]
                units.append(Unit(f"{m}-x{fmt(scale)}-s{seed}", "scale", m, seed, lr, th, scale))
    return units
